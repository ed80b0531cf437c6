"""``classrobust`` command line: parse, build from registries, call the layers, print.

Errors the user can fix are printed as one line ``classrobust: error: ...``
with exit code 2 for usage errors (as argparse does) and 1 for the rest.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from classrobust import __version__
from classrobust.errors import ClassrobustError, UsageError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _common_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data directory (default ~/.cache/classrobust/data or $CLASSROBUST_DATA_DIR)")
    p.add_argument("--download", action="store_true", help="allow downloading missing data")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _common_attack(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eps", type=_non_negative_float, default=None,
                   help="perturbation budget (default: the checkpoint's training eps)")
    p.add_argument("--steps", type=_positive_int, default=None, help="steps for every iterative attack")
    p.add_argument("--alpha", type=_non_negative_float, default=None,
                   help="step size for every iterative attack (default 2.5 * eps / steps)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="attack arithmetic (predictions are always checked in fp32)")
    p.add_argument("--mode", choices=["best", "last"], default="best",
                   help="best: stop attacking a sample at its first fooling iterate (evaluation mode); "
                        "last: run every iteration and return the attack's final output")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="evaluate a class-stratified subset of N test images")
    p.add_argument("--subset-seed", type=int, default=0,
                   help="seed of the --limit subset (kept apart from --seed so that evaluations of "
                        "different models pair up for `compare`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="classrobust", description="Class-wise robustness in adversarial training.")
    parser.add_argument("--version", action="version", version=f"classrobust {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list datasets, models, attacks and training methods")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("train", help="adversarially train a model and save a checkpoint")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--method", default="pgd-at")
    p.add_argument("--eps", type=_non_negative_float, default=None, help="default: the dataset's")
    p.add_argument("--alpha", type=_non_negative_float, default=None, help="inner attack step size")
    p.add_argument("--attack-steps", type=_positive_int, default=5, help="inner PGD steps")
    p.add_argument("--eps-warmup-epochs", type=_non_negative_float, default=1.0,
                   help="ramp eps linearly from 0 over this many epochs")
    p.add_argument("--epochs", type=_positive_int, default=10)
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", default="piecewise", choices=["piecewise", "cosine", "cyclic", "constant"],
                   help="learning-rate schedule (cyclic: the one-cycle schedule of fast AT)")
    p.add_argument("--lr-warmup-epochs", type=_non_negative_float, default=0.25,
                   help="ramp the learning rate linearly from 0 over this many epochs")
    p.add_argument("--beta", type=_non_negative_float, default=6.0, help="TRADES / MART trade-off")
    p.add_argument("--select", choices=["last", "avg", "worst-class"], default="last",
                   help="keep the last epoch, or the one with the best average or best worst-class "
                        "validation PGD accuracy")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (first steps are slow)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last completed epoch")
    p.add_argument("--val-size", type=_positive_int, default=1000,
                   help="validation images evaluated per epoch (from the held-out split)")
    p.add_argument("--train-subset", type=_positive_int, default=None,
                   help="train on a class-stratified subset of N images")
    p.add_argument("--classwise", default="", metavar="LEVER[:k=v,...][,LEVER...]",
                   help="class-wise levers with pgd-at or trades: reweight, class-eps, frl, fawa "
                        "(e.g. 'reweight:strength=2,fawa'); see docs/defenses.md")
    p.add_argument("--drop-classes", default="", metavar="NAME[,NAME]",
                   help="leave these classes out of training and validation (the model keeps all outputs)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="default: bf16 autocast where supported, else fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="run directory (replaced only on success)")
    _common_data(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="class-wise evaluation of a model under attacks (test split)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a classrobust checkpoint (.safetensors + .json)")
    source.add_argument("--model", help="or any model: a registry name or python:package.module:factory, "
                                        "with --dataset (and --weights)")
    p.add_argument("--dataset", default=None, help="with --model: the dataset (its threat model is the default)")
    p.add_argument("--weights", type=Path, default=None,
                   help="with --model: .safetensors or a state dict (loaded with weights_only=True)")
    p.add_argument("--normalize", action="store_true",
                   help="with a python: model: wrap it with the dataset's mean/std (it then takes [0, 1] images)")
    p.add_argument("--attacks", default="fgsm,pgd,temp-pgd",
                   help="comma-separated, with per-attack parameters: fgsm,pgd:steps=50,alpha=0.005")
    p.add_argument("--out", type=Path, default=None, help="default: eval/ beside the checkpoint")
    p.add_argument("--sanity", action="store_true",
                   help="also run the evaluation sanity checks (more steps, large eps, black-box, "
                        "randomness, zero gradients); results in summary.json")
    p.add_argument("--sanity-queries", type=_positive_int, default=1000,
                   help="Square queries for the black-box sanity check")
    p.add_argument("--no-report", action="store_true", help="skip building report.html")
    _common_attack(p)
    _common_data(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="build report.html from saved evaluation results (runs no model)")
    p.add_argument("run_dir", type=Path, help="an evaluation directory, or a run directory holding eval/")
    p.add_argument("--train-log", type=Path, default=None, help="default: train_log.csv beside the evaluation")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="per-class differences of two evaluations on the same test samples")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: compare/ beside run B's evaluation")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (Holm-adjusted)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("calibrate", help="fit per-class logit offsets on the validation split to raise the "
                                         "worst class's robust accuracy; writes a new checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True, help="a classrobust checkpoint (never modified)")
    p.add_argument("--out", type=Path, required=True, help="the new checkpoint (.safetensors; must not exist)")
    p.add_argument("--max-avg-drop", type=_non_negative_float, default=1.0,
                   help="largest allowed loss of average validation robust accuracy, in points (default 1)")
    p.add_argument("--temperature", action="store_true", help="also fit a per-class temperature")
    p.add_argument("--val-size", type=_positive_int, default=2000, help="validation images used for the fit")
    p.add_argument("--steps", type=_positive_int, default=10, help="PGD steps of the fit's attack")
    p.add_argument("--rounds", type=_positive_int, default=3, help="attack-and-refit rounds")
    p.add_argument("--eps", type=_non_negative_float, default=None, help="default: the checkpoint's eps")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--seed", type=int, default=0, help="attack seed")
    _common_data(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("experiment", help="run a grid of datasets x methods x seeds from a YAML file, "
                                          "with one combined report")
    p.add_argument("file", type=Path, help="experiment file (see experiments/)")
    p.add_argument("--check", action="store_true",
                   help="validate the file and show the plan (and what is already done); reads no data")
    p.add_argument("--out", type=Path, default=None, help="default: the file's out, else runs/experiments/NAME")
    p.add_argument("--report-only", action="store_true", help="rebuild the combined report from saved results")
    _common_data(p)
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("demo", help="train (or reuse) a PGD-AT smallcnn on Fashion-MNIST and evaluate it")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--retrain", action="store_true", help="train even if a matching model exists")
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument("--train-subset", type=_positive_int, default=None)
    p.add_argument("--limit", type=_positive_int, default=2000, help="test images to evaluate")
    p.add_argument("--seed", type=int, default=0)
    _common_data(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
        print("classrobust: interrupted", file=sys.stderr)
        return 130
    finally:
        from classrobust.distributed import shutdown

        shutdown()


# -- commands -------------------------------------------------------------------
def cmd_list(args) -> int:
    from classrobust.attacks import ATTACKS
    from classrobust.data import DATASETS
    from classrobust.models import MODELS
    from classrobust.training import METHODS

    from classrobust.training.classwise import LEVERS

    for title, registry in (("datasets", DATASETS), ("models", MODELS), ("attacks", ATTACKS),
                            ("training methods", METHODS), ("class-wise levers (train --classwise)", LEVERS)):
        print(f"{title}:")
        for entry in registry:
            print(f"  {entry.name:<16}{entry.summary}")
        if registry is DATASETS:
            print(f"  {'folder:PATH':<16}any ImageFolder tree: PATH/<class>/ or PATH/{{train,test}}/<class>/")
    return 0


def cmd_train(args) -> int:
    from classrobust.cli.commands import run_train

    run_train(args)
    return 0


def cmd_eval(args) -> int:
    from classrobust.cli.commands import run_eval

    run_eval(args)
    return 0


def cmd_report(args) -> int:
    from classrobust.report import build_report

    print(f"report: {build_report(args.run_dir, train_log=args.train_log)}")
    return 0


def cmd_compare(args) -> int:
    from classrobust.cli.commands import run_compare

    run_compare(args)
    return 0


def cmd_calibrate(args) -> int:
    from classrobust.cli.commands import run_calibrate

    run_calibrate(args)
    return 0


def cmd_experiment(args) -> int:
    from classrobust.cli.experiment import check_experiment, run_experiment
    from classrobust.experiment import load_spec

    spec = load_spec(args.file, out=args.out)
    if args.check:
        print("\n".join(check_experiment(spec)))
        return 0
    if args.report_only:
        from classrobust.report.experiment import build_experiment_report

        print(f"report: {build_experiment_report(spec.out)}")
        return 0
    t0 = time.perf_counter()
    report = run_experiment(spec, device=args.device, data_dir=args.data_dir, download=args.download,
                            progress=not args.no_progress)
    print(f"report: {report} (+ report.md and CSV tables beside it); {time.perf_counter() - t0:.0f}s")
    return 0


def cmd_demo(args) -> int:
    from classrobust.cli.commands import run_demo

    run_demo(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
