"""``classrobust`` command line: parse (parsers built from the config dataclasses), call one
workflow or library function, print.

Errors the user can fix are printed as one line ``classrobust: error: ...``
with exit code 2 for usage errors (as argparse does) and 1 for the rest.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from classrobust import __version__
from classrobust.cli.parsers import add_config_options as _add_config_options
from classrobust.cli.parsers import add_data_options, config_from_args, positive_int
from classrobust.errors import ClassrobustError, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block), pointing to --help."""

    def error(self, message: str):
        self.exit(2, f"classrobust: error: {message} (see `{self.prog} --help`)\n")


#: where each command's option dataclass lives (imported only for the command being parsed: they load torch)
_CONFIGS = {"train": ("classrobust.training.config", "TrainConfig"),
            "eval": ("classrobust.workflows.evaluate", "EvalConfig"),
            "calibrate": ("classrobust.defenses.calibrate", "CalibrateConfig"),
            "frontier": ("classrobust.workflows.frontier", "FrontierConfig")}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser (``command`` None), or one whose only fully built subcommand is ``command``:
    the others keep their names and help, so ``--version``, ``--help`` and a mistyped command answer
    without importing torch (6-13 s on a loaded 2-core machine)."""
    import importlib

    def add_config_options(p, name: str) -> None:  # noqa: F811 - the lazy form of parsers.add_config_options
        if command is None or command == name:
            module, cls = _CONFIGS[name]
            _add_config_options(p, getattr(importlib.import_module(module), cls))

    parser = _Parser(
        prog="classrobust", description="Class-wise robustness in adversarial training.")
    parser.add_argument("--version", action="version", version=f"classrobust {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list datasets, models, attacks, training methods and levers")
    p.add_argument("--attack", default=None, metavar="NAME", help="show one attack's parameters")
    p.add_argument("--lever", default=None, metavar="NAME", help="show one class-wise lever's parameters")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("train", help="adversarially train a model and save a checkpoint")
    add_config_options(p, "train")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last completed epoch")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing run in --out (or discard an interrupted one)")
    p.add_argument("--out", type=Path, required=True, help="run directory (replaced only on success)")
    p.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                   help="TensorBoard event files: per-class validation curves and lever terms per epoch (needs the integrations extra)")
    add_data_options(p, device=False)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="class-wise evaluation of a model under attacks (test split)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a classrobust checkpoint (.safetensors + .json)")
    source.add_argument("--model", help="or any model: a registry name, timm:ARCH or python:package.module:factory, "
                                        "with --dataset (and --weights)")
    p.add_argument("--dataset", default=None, help="with --model: the dataset (its threat model is the default)")
    p.add_argument("--weights", type=Path, default=None,
                   help="with --model: .safetensors or a state dict (loaded with weights_only=True)")
    p.add_argument("--normalize", action="store_true",
                   help="with a python: model: wrap it with the dataset's mean/std (it then takes [0, 1] images)")
    p.add_argument("--out", type=Path, default=None, help="default: eval/ beside the checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an evaluation in --out made with other settings (default: refused)")
    add_config_options(p, "eval")
    add_data_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="build report.html from saved evaluation results (runs no model)")
    p.add_argument("run_dir", type=Path, help="an evaluation directory, or a run directory holding eval/")
    p.add_argument("--train-log", type=Path, default=None, help="default: train_log.csv beside the evaluation")
    p.add_argument("--superclasses", type=Path, default=None, metavar="CSV",
                   help="group the classes (columns class,superclass); default: the evaluation's grouping, "
                        "else CIFAR-100's coarse classes where they fit")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="per-class differences of two evaluations on the same test samples")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--out", type=Path, default=None,
                   help="default: compare/ beside run B's evaluation folder (never inside it)")
    # --significance, not --alpha: in eval --alpha is a step size (--alpha still works here, as before)
    p.add_argument("--significance", "--alpha", dest="significance", type=float, default=0.05,
                   help="significance level of the tests (Holm-adjusted; default: 0.05)")
    p.add_argument("--allow-different-settings", action="store_true",
                   help="compare attacks whose recorded settings (eps, steps, mode, ...) differ between the runs")
    p.set_defaults(func=cmd_compare)

    about = ("fit per-class logit offsets on the validation split to raise the worst class's PGD accuracy; "
             "writes a new checkpoint. This shifts the decision thresholds between classes: the raised classes "
             "gain, clean and under attack, at their neighbours' expense; the network itself is no more robust "
             "(measured: docs/defenses.md)")
    p = sub.add_parser("calibrate", help=about, description=about)
    p.add_argument("--checkpoint", type=Path, required=True, help="a classrobust checkpoint (never modified)")
    p.add_argument("--out", type=Path, required=True, help="the new checkpoint (.safetensors; must not exist)")
    add_config_options(p, "calibrate")
    add_data_options(p)
    p.set_defaults(func=cmd_calibrate)

    about = ("the calibration frontier: per-class logit offsets fitted on each checkpoint's validation split at "
             "a series of average-cost allowances, every calibrated model judged on the same test images (default: "
             "standard AutoAttack); the control every class-wise training lever is compared with (docs/defenses.md)")
    p = sub.add_parser("frontier", help=about, description=about)
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True,
                   help="one or more classrobust checkpoints (several: seeds of one recipe; never modified)")
    p.add_argument("--out", type=Path, default=None, help="default: frontier/ beside the first checkpoint")
    add_config_options(p, "frontier")
    add_data_options(p)
    p.set_defaults(func=cmd_frontier)

    p = sub.add_parser("experiment", help="run a grid of datasets x methods x seeds from a YAML file, "
                                          "with one combined report")
    p.add_argument("file", type=Path, help="experiment file (see experiments/)")
    p.add_argument("--check", action="store_true",
                   help="validate the file and show the plan (and what is already done); reads no data")
    p.add_argument("--out", type=Path, default=None, help="default: the file's out, else runs/experiments/NAME")
    p.add_argument("--report-only", action="store_true", help="rebuild the combined report from saved results")
    p.add_argument("--export", type=Path, metavar="DIR",
                   help="copy the finished experiment's per-sample records, sidecars and logs (no weights) into DIR "
                        "and build the report there: what others need to check every number. Of an unfinished "
                        "experiment: its finished runs (and the weights later steps still need), from which "
                        "`--out DIR` continues it on another machine")
    p.add_argument("--tensorboard", type=Path, default=None, metavar="DIR",
                   help="TensorBoard event files, one folder per trained run (DIR/RUN); see train --help")
    g = p.add_argument_group("several runs at once (docs/experiments.md, \"Grids on several GPUs and on Slurm\")")
    g.add_argument("--jobs", type=positive_int, default=1,
                   help="run up to N runs at once, each its own process (default: 1, in this process)")
    g.add_argument("--devices", default=None, help="GPUs for --jobs, one per job slot: 0,1,2,3 (default: none)")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads per run with --jobs (default: the cores divided by --jobs)")
    g.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local",
                   help="slurm: submit the unfinished runs as a job array through submitit and return; rerun "
                        "the command after the jobs end to collect them (submitit-local: the same on this machine)")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--gpus-per-run", type=int, default=1, help="Slurm GPUs per run")
    g.add_argument("--cpus-per-run", type=positive_int, default=8, help="Slurm CPUs per run")
    g.add_argument("--time", type=positive_int, default=240, help="Slurm time limit per run, minutes")
    g.add_argument("--slurm-extra", nargs="*", default=[], metavar="NAME=VALUE",
                   help="more sbatch options, e.g. qos=high account=lab")
    g.add_argument("--status", action="store_true", help="each run's state (finished, diverged, running, queued, "
                                                          "failed, not started) and its log's last line")
    g.add_argument("--run", default=None, metavar="KEY", help="only this run (what each --jobs process does)")
    g.add_argument("--declare-failed", nargs=2, default=None, metavar=("KEY", "REASON"),
                   help="record a run that keeps failing as a final failure, listed in the report as a diverged "
                        "run is, so that the grid can finish")
    add_data_options(p)
    p.set_defaults(func=cmd_experiment)

    about = ("Temperature-PGD's T chosen on the checkpoint's validation images (the lowest robust accuracy among "
             "--values), recorded, then PGD and Temperature-PGD at that T on the same test images (docs/temperature.md)")
    p = sub.add_parser("temperature", help=about, description=about)
    p.add_argument("--checkpoint", type=Path, required=True, help="a classrobust checkpoint (its run's validation split)")
    p.add_argument("--values", default="0.05,0.1,0.25,0.5,1,2,4", help="candidate temperatures")
    p.add_argument("--steps", type=positive_int, default=20, help="steps of PGD and Temperature-PGD")
    p.add_argument("--val-limit", type=positive_int, default=1000, help="validation images of the sweep")
    p.add_argument("--limit", type=positive_int, default=None, help="test images (class-stratified; default all)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of the --limit subset")
    p.add_argument("--seed", type=int, default=0, help="attack seed")
    p.add_argument("--out", type=Path, default=None, help="default: temperature/ beside the checkpoint")
    add_data_options(p)
    p.set_defaults(func=cmd_temperature)

    about = ("the defense protocol: screen levers on validation, freeze the choice, confirm it on fresh seeds, "
             "judge it against a declared target and the calibration frontier (docs/defenses.md)")
    p = sub.add_parser("protocol", help=about, description=about)
    steps = p.add_subparsers(dest="step", metavar="STEP", required=True)
    for step, text in (("screen", "run a screen file's grid on validation images and show the selection"),
                       ("select", "write the confirmation file for a finished screen (frozen from then on)"),
                       ("confirm", "run a frozen confirmation file, its calibration frontiers, and the verdict"),
                       ("verdict", "the finished confirmation's verdict again, from its records")):
        q = steps.add_parser(step, help=text, description=text)
        q.add_argument("file", type=Path, help=("screen file" if step in ("screen", "select") else "confirmation file"))
        if step == "select":
            q.add_argument("--out", type=Path, required=True, help="the confirmation file to write")
        if step in ("screen", "confirm"):
            add_data_options(q)
        q.set_defaults(func=cmd_protocol)

    p = sub.add_parser("demo", help="train (or reuse) a PGD-AT smallcnn on Fashion-MNIST and evaluate it")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="the demo's folder (default: runs/demo)")
    p.add_argument("--retrain", action="store_true",
                   help="train on this machine instead of using the shipped model (or one trained before)")
    p.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: 6; any other "
                                                                     "value trains)")
    p.add_argument("--train-subset", type=positive_int, default=None,
                   help="train on a class-stratified subset of N images (default: all 60,000 minus validation)")
    p.add_argument("--limit", type=positive_int, default=2000, help="test images to evaluate (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0; another trains)")
    add_data_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


class _ClosedPipeSafe:
    """stdout that, once its reader has gone (``classrobust train ... | head``), drops further output
    instead of failing: a closed pipe ends the output, not the work."""

    def __init__(self, stream):
        self._stream = stream
        self._closed = False

    def write(self, text: str) -> int:
        if not self._closed:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._closed = True
        return len(text)

    def flush(self) -> None:
        if not self._closed:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._closed = True

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    stdout = sys.stdout
    sys.stdout = _ClosedPipeSafe(stdout)
    try:
        return _main(argv)
    finally:
        sys.stdout = stdout
        try:
            stdout.flush()
        except BrokenPipeError:  # the reader left with output still buffered: drop it quietly at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    known = {"train", "eval", "calibrate", "frontier"}
    # only the command being run gets its full options: the others' option classes import torch
    parser = build_parser(argv[0] if argv and argv[0] in known else "")
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except ClassrobustError as exc:
        print(f"classrobust: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"classrobust: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        command = getattr(args, "command", None)
        hint = ("; the last completed epoch is kept: rerun with --resume to continue" if command == "train" else
                "; what finished is kept (epochs, attacked batches, runs): rerun the same command to continue"
                if command in ("eval", "experiment", "demo", "frontier", "protocol", "temperature") else "")
        print(f"classrobust: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        from classrobust.runtime import shutdown

        shutdown()


# -- commands: parse -> one library call -> print ---------------------------------
def cmd_list(args) -> int:
    from classrobust.attacks import ATTACKS
    from classrobust.data import DATASETS
    from classrobust.defenses import LEVERS
    from classrobust.models import MODELS
    from classrobust.training import METHODS

    for registry, name in ((ATTACKS, args.attack), (LEVERS, args.lever)):
        if name is not None:
            print(f"{registry.kind} {name}: {registry.get(name).summary}")
            for param, annotation, default in registry.parameters(name):
                shown = ("the dataset's eps (L2 attacks: its L2 radius), or --eps" if param == "eps" and default is None
                         else repr(default))
                print(f"  {param:<14}{annotation:<22}default {shown}")
            return 0

    for title, registry in (("datasets", DATASETS), ("models", MODELS), ("attacks", ATTACKS),
                            ("training methods", METHODS), ("class-wise levers (train --classwise)", LEVERS)):
        print(f"{title}:")
        for entry in registry:
            print(f"  {entry.name:<16}{entry.summary}")
        if registry is DATASETS:
            print(f"  {'folder:PATH':<16}any ImageFolder tree: PATH/<class>/ or PATH/{{train,test}}/<class>/")
        if registry is MODELS:
            print(f"  {'timm:ARCH':<16}any timm architecture, untrained, for the dataset's channels, size and classes")
            print(f"  {'python:MOD:FN':<16}your own factory: package.module:function returning an nn.Module")
    return 0


def runtime_from(args):
    """The :class:`~classrobust.runtime.Runtime` of a command's --device, --data-dir, --download and
    --no-progress (those it has)."""
    from classrobust.runtime import Runtime

    return Runtime(device=getattr(args, "device", None), data_dir=getattr(args, "data_dir", None),
                   download=getattr(args, "download", False), progress=not getattr(args, "no_progress", False))


def cmd_train(args) -> int:
    from classrobust.runtime import is_main
    from classrobust.training import TrainConfig, train

    config = config_from_args(TrainConfig, args)
    path = train(config, args.out, runtime=runtime_from(args), resume=args.resume, overwrite=args.overwrite,
                 tensorboard=args.tensorboard)
    if is_main():
        print(f"checkpoint: {path}")
        print(f"training log: {Path(args.out) / 'train_log.csv'}")
    return 0


def cmd_eval(args) -> int:
    from classrobust.runtime import is_main
    from classrobust.workflows.evaluate import EvalConfig, evaluate_checkpoint

    if args.checkpoint is not None and (args.dataset or args.weights or args.normalize):
        raise UsageError("--dataset, --weights and --normalize go with --model, not --checkpoint")
    result, out = evaluate_checkpoint(
        args.checkpoint, args.out, config=config_from_args(EvalConfig, args), model=args.model,
        dataset=args.dataset, weights=args.weights, normalize=args.normalize, runtime=runtime_from(args),
        overwrite=args.overwrite)
    if is_main():
        print_result(result, out)
    return 0


def print_result(result, out: Path) -> None:
    from classrobust.report import format_classwise_table, format_warnings
    from classrobust.results import describe_attack

    split = "validation" if result.meta.get("split") == "val" else "test"
    print(f"\nclass-wise accuracy (%) on {len(result.labels)} {split} images of {result.meta.get('dataset')}:")
    for res in result.attacks.values():
        if res.config.get("attack") != "clean":
            print(f"  {describe_attack(res.config)}")
    print()
    print(format_classwise_table(result))
    if result.sanity:  # what each check did, passed or not (a warning line below says why one failed)
        checks = result.sanity["checks"]
        print(f"\nsanity checks: {sum(c['passed'] for c in checks)} of {len(checks)} passed")
        for c in checks:
            print(f"  {'passed' if c['passed'] else 'FAILED'}: {c['check']}: {c['detail']}")
    for line in format_warnings(result):
        print(line)
    print(f"\nresults: {out}/ (per_class.csv, confusion_<attack>.csv, samples.csv.gz, summary.json)")
    if (out / "report.html").is_file():
        print(f"report: {out / 'report.html'}")


def cmd_report(args) -> int:
    from classrobust.report import build_report

    print(f"report: {build_report(args.run_dir, train_log=args.train_log, superclasses=args.superclasses)}")
    return 0


def cmd_compare(args) -> int:
    import pandas as pd

    from classrobust.report.compare import write_comparison

    if Path(args.run_a).resolve() == Path(args.run_b).resolve():
        raise UsageError("compare needs two different evaluations; both arguments name the same folder")
    table, out = write_comparison(args.run_a, args.run_b, args.out, alpha=args.significance,
                                  allow_different_settings=args.allow_different_settings)
    print(f"A = {args.run_a}\nB = {args.run_b}\n")
    print(f"{'attack':<12}{'class':<14}{'A':>8}{'B':>8}{'B-A':>8}{'p':>10}{'p_holm':>10}")
    for r in table.itertuples():
        mark = "  *" if r.significant else ""
        print(f"{r.attack:<12}{str(r.class_name)[:13]:<14}{100 * r.accuracy_a:>7.1f}%{100 * r.accuracy_b:>7.1f}%"
              f"{100 * r.difference:>+8.1f}{r.p_value:>10.3g}{r.p_holm:>10.3g}{mark}")
    print(f"\n* significant at {args.significance} (exact McNemar, Holm-adjusted over classes)")
    consistency = pd.read_csv(out / "consistency.csv")
    print("rank consistency of per-class accuracy between A and B: " + ", ".join(
        f"{r.attack} Spearman {r.spearman:.2f} / Kendall {r.kendall:.2f}" if r.spearman == r.spearman else
        f"{r.attack} undefined (every class has the same accuracy in A or in B)" for r in consistency.itertuples()))
    print(f"comparison: {out}/ (compare.csv, compare.md, compare.html)")
    return 0


def cmd_calibrate(args) -> int:
    from classrobust.checkpoint import read_checkpoint_meta
    from classrobust.defenses.calibrate import MEASURE_STEPS, CalibrateConfig
    from classrobust.workflows.calibrate import calibrate_checkpoint

    config = config_from_args(CalibrateConfig, args)
    out, fit = calibrate_checkpoint(args.checkpoint, args.out, config=config, runtime=runtime_from(args))
    b, a = fit.before, fit.after
    classes = read_checkpoint_meta(out)["classes"]
    print(f"{'class':<14}{'offset':>8}{'temp':>7}{'before':>9}{'after':>9}")
    for name, off, t, rb, ra in zip(classes, fit.offsets, fit.temperatures, b["robust_per_class"],
                                    a["robust_per_class"]):
        print(f"{str(name)[:13]:<14}{off:>8.2f}{t:>7.2f}{100 * rb:>8.1f}%{100 * ra:>8.1f}%")
    print(f"{'all':<14}{'':>15}{100 * b['robust_accuracy']:>8.1f}%{100 * a['robust_accuracy']:>8.1f}%")
    print(f"validation worst class: {b['worst_class']} {100 * b['worst_robust_accuracy']:.1f}% -> "
          f"{a['worst_class']} {100 * a['worst_robust_accuracy']:.1f}% (PGD-"
          f"{MEASURE_STEPS if config.fit == 'margins' else config.fit_steps}, measured end to end)")
    if not any(fit.offsets) and all(t == 1 for t in fit.temperatures):
        print("no shift raised the worst class within the allowance: the new checkpoint equals the original")
    print(f"calibrated checkpoint: {out}")
    return 0


def cmd_frontier(args) -> int:
    from classrobust.workflows.frontier import FrontierConfig, run_frontier

    first = args.checkpoint[0]
    out = args.out if args.out is not None else (first if first.is_dir() else first.parent) / "frontier"
    out = run_frontier(args.checkpoint, out, config=config_from_args(FrontierConfig, args),
                       runtime=runtime_from(args))
    print((out / "frontier.md").read_text().split("![frontier]")[0].rstrip())
    print(f"\nfrontier: {out}/ (frontier.csv, frontier.png, frontier.md, frontier.json)")
    return 0


def cmd_experiment(args) -> int:
    from classrobust.workflows.experiment import check_experiment, run_experiment
    from classrobust.workflows.spec import load_spec

    spec = load_spec(args.file, out=args.out)
    if args.check:
        from classrobust.workflows.experiment import missing_data

        print("\n".join(check_experiment(spec)))
        missing = missing_data(spec, args.data_dir)
        for line in missing:
            print(f"data missing: {line}")
        return 1 if missing else 0
    if args.report_only:
        from classrobust.report.experiment import build_experiment_report

        print(f"report: {build_experiment_report(spec.out)}")
        return 0
    if args.export is not None:
        from classrobust.workflows.experiment import export_experiment, export_progress, is_finished

        if is_finished(spec):
            print(f"exported to {args.export}; report: {export_experiment(spec.out, args.export)}")
            return 0
        progress = export_progress(spec, args.export)
        diverged = f", {len(progress['diverged'])} of them diverged" if progress["diverged"] else ""
        print(f"exported {len(progress['done'])} finished runs{diverged} to {args.export} (the experiment is "
              f"unfinished: {len(progress['unfinished'])} runs to go, no report; weights kept for "
              f"{', '.join(progress['with_weights']) or 'none'}); continue with "
              f"`classrobust experiment {args.file} --out {args.export}`")
        return 0
    if args.declare_failed is not None:
        from classrobust.workflows.experiment import declare_failed

        print(f"recorded {declare_failed(spec, *args.declare_failed)}; rerun the command to finish the grid")
        return 0
    if args.status or args.run is not None or args.jobs > 1 or args.launcher != "local":
        from classrobust.workflows.launch import (LocalOptions, SlurmOptions, launch_grid, parse_slurm_extra,
                                                  status_text)

        if args.status:
            print(status_text(spec))
            return 0
        if args.run is not None:
            from classrobust.workflows.experiment import ensure_run

            run = next((r for r in spec.runs if r.key == args.run), None)
            if run is None:
                raise UsageError(f"--run {args.run!r} is not a run of {spec.source}: "
                                 f"{', '.join(r.key for r in spec.runs)}")
            print(f"{run.key}: {ensure_run(spec, run, runtime_from(args))}")
            return 0
        devices = [d.strip() for d in args.devices.split(",")] if args.devices else []
        message, code = launch_grid(
            spec, runtime=runtime_from(args), launcher=args.launcher, local=LocalOptions(args.jobs, devices, args.threads),
            slurm=SlurmOptions(args.partition, args.gpus_per_run, args.cpus_per_run, args.time,
                               parse_slurm_extra(args.slurm_extra)))
        print(message)
        if code is not None:
            return code
    t0 = time.perf_counter()
    report = run_experiment(spec, runtime=runtime_from(args), tensorboard=args.tensorboard)
    print(f"report: {report} (+ report.md and CSV tables beside it); {time.perf_counter() - t0:.0f}s")
    return 0


def cmd_temperature(args) -> int:
    from classrobust.workflows.temperature import temperature_for_checkpoint

    out, text = temperature_for_checkpoint(args.checkpoint, args.out, values=args.values, steps=args.steps,
                                           val_limit=args.val_limit, limit=args.limit, subset_seed=args.subset_seed,
                                           seed=args.seed, runtime=runtime_from(args))
    print(text.rstrip())
    print(f"\ntemperature: {out}/ (temperature.json, temperature.md, validation/, test/)")
    return 0


def cmd_protocol(args) -> int:
    from classrobust.workflows import protocol

    if args.step == "select":
        path, kept = protocol.select(args.file, args.out)
        print(f"froze {', '.join(kept)} into {path}; run `classrobust protocol confirm {path}`")
        return 0
    if args.step == "screen":
        from classrobust.report.protocol import screen_markdown
        from classrobust.workflows.spec import load_spec

        spec = load_spec(args.file)
        table = protocol.screen(args.file, runtime=runtime_from(args))
        print(screen_markdown(table, spec.protocol.attack, spec.protocol.margin, spec.protocol.keep))
        print(f"next: `classrobust protocol select {args.file} --out CONFIRM.yaml`")
        return 0
    if args.step == "confirm":
        protocol.confirm(args.file, runtime=runtime_from(args))
    else:
        protocol.verdict(args.file)
    from classrobust.workflows.spec import load_spec

    out = load_spec(args.file).out
    print((out / f"{protocol.VERDICT}.md").read_text().rstrip())
    print(f"\nverdict: {out}/{protocol.VERDICT}.md (and .csv)")
    return 0


def cmd_demo(args) -> int:
    from classrobust.workflows.demo import run_demo

    demo = run_demo(args.out, retrain=args.retrain, epochs=args.epochs, train_subset=args.train_subset,
                    limit=args.limit, seed=args.seed, runtime=runtime_from(args))
    print_result(demo.result, demo.eval_dir)
    print(f"\nmodel: {demo.checkpoint} (+ model.json, train_log.csv)")
    trained = f"training {demo.train_seconds:.0f}s" if demo.trained else "no training (an existing model)"
    print(f"time: {trained}, evaluation {demo.result.meta['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
