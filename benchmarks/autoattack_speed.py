"""Standard AutoAttack, ours against torchattacks' and the reference implementation's, on the same
model and images; plus the minimal-norm curves' cost.

Every implementation evaluates the same class-stratified test images of one checkpoint, batch by
batch in turn (so the shared machine's slow and fast stretches fall on each alike), fp32. A point is
robust if it is classified correctly clean and attacked (each side's own output, judged by one
fp32 forward pass here). Writes per-class robust counts, times and our members' marginal flips
(which member broke each point first) to ``--out`` as JSON, and prints a Markdown table.

    python benchmarks/autoattack_speed.py --limit 1000 --seeds 0,1 --sides ours,torchattacks
    python benchmarks/autoattack_speed.py --limit 500 --sides ours,reference  # pip install pyautoattack --no-deps

``--out`` is rewritten after every batch: run the same command again after a kill and it resumes.

``reference`` is ``pyautoattack`` (PyPI), a packaging of fra31/auto-attack whose attack files differ
from the repository's only in import lines (checked by diff on 2026-11-27).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from classrobust.attacks import FMN, AutoAttack, MinDist
from classrobust.checkpoint import load_checkpoint
from classrobust.data import get_dataset, make_loader, stratified_subset
from classrobust.evaluate.tally import add_per_class as add
from classrobust.evaluate.tally import still_correct


#: how our FAB-T decided "past the boundary" in its search: records made before issue #32's fix
#: (which carry no ``fab_search``) used the verdict's 1e-4 margin there
FAB_BEFORE = "the verdict margin (before #32)"
FAB_NOW = "the prediction, as the reference"

#: the minimal-norm searches of the "curves" side, each read at eps
CURVES = {"FMN": FMN, "MinDist": MinDist}


def render(records: list[dict]) -> str:
    """The Markdown table of one or more records (torch-free): per seed, each side's time and robust
    accuracy, and our speed-up against each other side."""
    lines = ["| images | seed | our FAB-T searched on | side | seconds | robust accuracy | ours is faster by |",
             "|---|---|---|---|---|---|---|"]
    for record in records:
        n = sum(record["n_per_class"])
        fab = record.get("fab_search", FAB_BEFORE)
        for run in record["runs"]:
            ours = run["seconds"].get("ours")
            for side, counts in run["robust_per_class"].items():
                secs = run["seconds"][side]
                ratio = "" if side == "ours" or not ours else f"{secs / ours:.2f}x"
                lines.append(f"| {n} | {run['seed']} | {fab} | {side} | {secs:.0f} | {100 * sum(counts) / n:.1f}% | "
                             f"{ratio} |")
            for name, secs in run.get("curves_seconds", {}).items():
                robust = sum(run["curves_robust_at_eps"][name.removesuffix("_seconds")])
                lines.append(f"| {n} | {run['seed']} | {fab} | curves: {name.removesuffix('_seconds')} (minimal norm, "
                             f"read at eps) | {secs:.0f} | {100 * robust / n:.1f}% | |")
    return "\n".join(lines)


def render_members(records: list[dict]) -> str:
    """Where our cascade spends its time (torch-free): per seed and member, the points it attacked,
    its seconds, and the seconds per point and model pass against the model's own cost per image
    (``unit_cost_us``: one forward, one forward + input gradient, fp32, measured in the same run).
    A member's passes per point: APGD-CE steps; APGD-T and FAB-T targets x steps (FAB-T two
    forwards and one gradient per step); Square queries (forwards). These are upper bounds: a
    member stops early on a point it breaks."""
    lines = ["| images | seed | our FAB-T searched on | member | points attacked | seconds | ms per point | model "
             "passes per point (at most) | those passes at the model's own cost (ms) |", "|---|---|---|---|---|---|---|---|---|"]
    for record in records:
        if "unit_cost_us" not in record:
            continue
        fwd, grad = record["unit_cost_us"]["forward"], record["unit_cost_us"]["forward_gradient"]
        per_point = {"apgd-ce": (100, 100 * grad), "apgd-t": (900, 900 * grad),
                     "fab-t": (900, 900 * (grad + fwd)), "square": (5000, 5000 * fwd)}
        for run in record["runs"]:
            for member, secs in run.get("member_seconds", {}).items():
                points = run["member_points"][member]
                passes, floor_us = per_point[member]
                ms = f"{1000 * secs / points:.0f}" if points else ""
                lines.append(f"| {sum(record['n_per_class'])} | {run['seed']} | {record.get('fab_search', FAB_BEFORE)} | "
                             f"{member} | {points} | {secs:.0f} | "
                             f"{ms} | {passes} | {floor_us / 1000:.0f} |")
    return "\n".join(lines)


def unit_costs(model, data, batch_size: int) -> dict[str, float]:
    """The model's cost per image in microseconds at ``batch_size``, fp32: one forward (no graph)
    and one forward plus the gradient of the loss with respect to the input (median of 5)."""
    x, y = next(iter(make_loader(data, batch_size)))
    times: dict[str, list[float]] = {"forward": [], "forward_gradient": []}
    for _ in range(6):
        t0 = time.perf_counter()
        with torch.no_grad():
            model(x)
        t1 = time.perf_counter()
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(xr), y), xr)
        t2 = time.perf_counter()
        times["forward"].append(t1 - t0)
        times["forward_gradient"].append(t2 - t1)
    return {k: round(1e6 * float(np.median(v[1:])) / len(x), 1) for k, v in times.items()}  # first: warm-up


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="runs/demo/model.safetensors")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seeds", default="0")
    p.add_argument("--sides", default="ours,torchattacks", help="comma-separated: ours, torchattacks, reference, curves")
    p.add_argument("--out", default="benchmarks/results/autoattack_speed.json")
    p.add_argument("--render", nargs="+", metavar="JSON", help="print the Markdown table of finished records and exit")
    args = p.parse_args()
    if args.render:
        records = [json.loads(Path(f).read_text()) for f in args.render]
        print(render(records))
        if any("unit_cost_us" in r for r in records):
            print("\n" + render_members(records))
        return
    measure(args)


def measure(args) -> None:
    """Run the sides seed by seed, batch by batch; ``--out`` is rewritten after every batch, so a
    killed run resumes from its finished batches (with the same settings) and never mixes settings."""
    model, meta = load_checkpoint(args.checkpoint)
    model.eval()
    eps = float(meta.get("eps", 0.1))
    test = stratified_subset(get_dataset(meta["dataset"], "test"), args.limit, seed=0)
    classes = list(test.classes)
    sides = args.sides.split(",")
    k = len(classes)
    settings = {"checkpoint": args.checkpoint, "eps": eps, "limit": args.limit, "batch_size": args.batch_size,
                "sides": sides}
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.is_file() else None
    if record is not None and {key: record.get(key) for key in settings} != settings:
        raise SystemExit(f"{out} holds a run with other settings; choose another --out")
    if record is None:
        record = {**settings, "unit_cost_us": unit_costs(model, test, min(args.batch_size, args.limit)),
                  "classes": classes, "n_per_class": np.bincount(test.targets.numpy(), minlength=k).tolist(),
                  "precision": "fp32", "fab_search": FAB_NOW,
                  "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                  "torch": torch.__version__, "runs": []}
    members = list(AutoAttack(model, eps=eps).attacks)
    for seed in (int(s) for s in args.seeds.split(",")):
        run = next((r for r in record["runs"] if r["seed"] == seed), None)
        if run is None:
            run = {"seed": seed, "batches_done": 0, "robust_per_class": {s: [0] * k for s in sides if s != "curves"},
                   "seconds": dict.fromkeys(sides, 0.0)}
            if "ours" in sides:
                run.update(member_flips_per_class={m: [0] * k for m in members},
                           member_seconds=dict.fromkeys(members, 0.0), member_points=dict.fromkeys(members, 0))
            if "curves" in sides:
                run.update(curves_robust_at_eps={name: [0] * k for name in CURVES},
                           curves_seconds={f"{name}_seconds": 0.0 for name in CURVES})
            record["runs"].append(run)
        ours = AutoAttack(model, eps=eps, seed=seed)
        for b, (x, y) in enumerate(make_loader(test, args.batch_size)):
            if b < run["batches_done"]:
                continue
            run_batch(run, model, ours, x, y, eps, seed, sides, k)
            run["batches_done"] = b + 1
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial")  # a kill while writing leaves the last record whole
            partial.write_text(json.dumps(record, indent=1))
            partial.replace(out)
            print(f"seed {seed}, batch {b + 1}: " + ", ".join(f"{s} {run['seconds'][s]:.0f} s" for s in sides), flush=True)
    print(f"wrote {out}")


def run_batch(run: dict, model, ours: AutoAttack, x, y, eps: float, seed: int, sides: list[str], k: int) -> None:
    """Every side on one batch, in turn; adds its counts and seconds to ``run``."""
    clean_ok = still_correct(model, x, y)
    for side in sides:
        t0 = time.perf_counter()
        if side == "ours":
            x_adv = x.clone()
            record = ours.cascade(x[clean_ok], y[clean_ok])
            x_adv[clean_ok] = record.x_adv
            for i, name in enumerate(ours.attacks):
                add(run["member_flips_per_class"][name], y[clean_ok][record.breaker == i])
                run["member_seconds"][name] = round(run["member_seconds"][name] + record.seconds[name], 1)
                run["member_points"][name] += record.points[name]
        elif side == "torchattacks":
            import torchattacks

            x_adv = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=k, seed=seed)(x, y)
        elif side == "reference":
            import logging

            from pyautoattack import AutoAttack as Reference

            logging.getLogger("auto-attack").setLevel(logging.WARNING)
            ref = Reference(model, device="cpu", eps=eps, norm="Linf", seed=seed, version="standard")
            x_adv, _ = ref.run_standard_evaluation(x, y, batch_size=len(x))  # (x_adv, y_adv)
        elif side == "curves":  # untargeted FAB needs one gradient per class per step: too slow here
            for name, attack in CURVES.items():
                t1 = time.perf_counter()
                dist = attack(model, eps=eps, seed=seed).minimal(x[clean_ok], y[clean_ok])[1]
                add(run["curves_robust_at_eps"][name], y[clean_ok][dist > eps])
                run["curves_seconds"][f"{name}_seconds"] = round(run["curves_seconds"][f"{name}_seconds"]
                                                                 + time.perf_counter() - t1, 1)
        run["seconds"][side] = round(run["seconds"][side] + time.perf_counter() - t0, 1)
        if side != "curves":
            robust = clean_ok & still_correct(model, x_adv, y)
            add(run["robust_per_class"][side], y[robust])


if __name__ == "__main__":
    main()
