"""How tight are the robustness curves? Each minimal-distance search against the smallest distance
any of them finds, point by point, and their cost against standard AutoAttack's on the same points.

On the clean-correct points of a class-stratified test subset of one checkpoint, in one process,
batch by batch in turn (fp32): FMN (100 and 1,000 steps), FAB-T (9 targets x 100 steps, every
target), a bisection over PGD radii (9 halvings of [0, 4 eps], PGD-50 on the margin loss from a
random start at each radius), our MinDist, and standard AutoAttack at eps (its cost, and its
per-class robust accuracy against the curves read at eps). Writes per-point distances to ``--out``
(rewritten after every batch; rerun the same command to resume) and prints the tables:

    python benchmarks/curve_tightness.py --norm linf --limit 300 --out benchmarks/results/curves_linf_300.json
    python benchmarks/curve_tightness.py --render benchmarks/results/curves_*.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from classrobust.attacks import FAB, FMN, PGD, AutoAttack, MinDist
from classrobust.checkpoint import load_checkpoint
from classrobust.data import get_dataset, make_loader, stratified_subset
from classrobust.evaluate.tally import still_correct

METHODS = ("fmn-100", "fmn-1000", "fab-t", "pgd-bisection", "mindist")
#: a point's distance is "tight" within this factor of the smallest any method found
TIGHT = 1.02


def pgd_bisection(model, x, y, eps: float, norm: str, seed: int, halvings: int = 9, steps: int = 50):
    """Per point, the smallest radius of [0, 4 eps] at which PGD-``steps`` (margin loss, random
    start, last iterate) fooled the model, to ``4 eps / 2**halvings``; inf where 4 eps did not."""
    lo, hi = torch.zeros(len(x)), torch.full((len(x),), 4 * eps)
    found = torch.full((len(x),), float("inf"))
    for radius in [hi] + [None] * halvings:
        # a point not broken at 4 eps has hi = inf: radius 0 for it (no attack), it stays inf
        r = radius if radius is not None else torch.where(torch.isfinite(hi), (lo + hi) / 2, torch.zeros_like(hi))
        attack = PGD(model, eps=r, steps=steps, loss="margin", norm=norm, seed=seed, mode="last")
        x_adv = attack(x, y)
        broke = ~still_correct(model, x_adv, y)
        dist = attack.ball.distance(x_adv, x)
        found = torch.where(broke, torch.minimum(found, dist), found)
        if radius is not None:
            hi = torch.where(broke, hi, torch.full_like(hi, float("inf")))  # not broken at 4 eps: none found
        else:
            hi, lo = torch.where(broke, r, hi), torch.where(broke, lo, r)
    return found


def distances(method: str, model, x, y, eps: float, norm: str, seed: int):
    if method.startswith("fmn"):
        return FMN(model, eps=eps, norm=norm, steps=int(method.split("-")[1]), seed=seed).minimal(x, y)[1], None
    if method == "fab-t":
        return FAB(model, eps=eps, norm=norm, targeted=True, seed=seed).minimal(x, y)[1], None
    if method == "pgd-bisection":
        return pgd_bisection(model, x, y, eps, norm, seed), None
    _, dist, source = MinDist(model, eps=eps, norm=norm, seed=seed).minimal_with_source(x, y)
    return dist, source


def measure(args) -> None:
    model, meta = load_checkpoint(args.checkpoint)
    model.eval()
    eps = float(meta.get("eps", 0.1)) if args.norm == "linf" else float(meta.get("eps_l2", 1.0))
    test = stratified_subset(get_dataset(meta["dataset"], "test"), args.limit, seed=0)
    settings = {"checkpoint": args.checkpoint, "norm": args.norm, "eps": eps, "limit": args.limit,
                "batch_size": args.batch_size, "seed": args.seed}
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.is_file() else None
    if record is not None and {k: record.get(k) for k in settings} != settings:
        raise SystemExit(f"{out} holds a run with other settings; choose another --out")
    if record is None:
        record = {**settings, "classes": list(test.classes), "methods": list(METHODS), "tight": TIGHT,
                  "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                  "torch": torch.__version__, "batches_done": 0, "labels": [],
                  "distances": {m: [] for m in METHODS}, "mindist_source": [], "autoattack_robust": [],
                  "seconds": dict.fromkeys([*METHODS, "autoattack"], 0.0)}
    aa = AutoAttack(model, eps=eps, norm=args.norm, seed=args.seed)
    for b, (x, y) in enumerate(make_loader(test, args.batch_size)):
        if b < record["batches_done"]:
            continue
        keep = still_correct(model, x, y)
        x, y = x[keep], y[keep]
        record["labels"] += y.tolist()
        for method in METHODS:
            t0 = time.perf_counter()
            dist, source = distances(method, model, x, y, eps, args.norm, args.seed)
            record["seconds"][method] = round(record["seconds"][method] + time.perf_counter() - t0, 1)
            record["distances"][method] += [float(d) for d in dist]
            if source is not None:
                record["mindist_source"] += source
        t0 = time.perf_counter()
        robust = still_correct(model, aa(x, y), y)
        record["seconds"]["autoattack"] = round(record["seconds"]["autoattack"] + time.perf_counter() - t0, 1)
        record["autoattack_robust"] += robust.tolist()
        record["batches_done"] = b + 1
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        partial.write_text(json.dumps(record))
        partial.replace(out)
        print(f"batch {b + 1}: " + ", ".join(f"{k} {v:.0f} s" for k, v in record["seconds"].items()), flush=True)
    print(f"wrote {out}")


def summary(record: dict) -> list[dict]:
    """Per method: median ratio to the best distance, the share of points within TIGHT of it, seconds
    and their ratio to standard AutoAttack's (torch-free)."""
    dist = {m: np.array(record["distances"][m], dtype=float) for m in record["methods"]}
    best = np.min(np.stack(list(dist.values())), axis=0)
    finite = np.isfinite(best) & (best > 0)
    rows = []
    for m, d in dist.items():
        ratio = d[finite] / best[finite]
        rows.append({"method": m, "median_ratio": float(np.median(ratio)),
                     "within": float(np.mean(ratio <= record["tight"])), "points": int(finite.sum()),
                     "seconds": record["seconds"][m], "of_autoattack": record["seconds"][m] / record["seconds"]["autoattack"]})
    return rows


def per_class(record: dict, method: str = "mindist") -> list[dict]:
    """Per class: robust accuracy at eps of the clean-correct points by ``method``'s curve and by
    standard AutoAttack, and the curve's median ratio to the best distance (torch-free)."""
    labels = np.array(record["labels"])
    dist = {m: np.array(record["distances"][m], dtype=float) for m in record["methods"]}
    best = np.min(np.stack(list(dist.values())), axis=0)
    aa = np.array(record["autoattack_robust"], dtype=bool)
    rows = []
    for k, name in enumerate(record["classes"]):
        mask = labels == k
        ok = mask & np.isfinite(best) & (best > 0)
        rows.append({"class": name, "points": int(mask.sum()),
                     "curve_at_eps": int((dist[method][mask] > record["eps"]).sum()),
                     "autoattack": int(aa[mask].sum()),
                     "median_ratio": float(np.median(dist[method][ok] / best[ok])) if ok.any() else float("nan")})
    return rows


def render(records: list[dict]) -> str:
    lines = []
    for r in records:
        done = min(r["limit"], r["batches_done"] * r["batch_size"])
        of = f"{r['limit']}" if done == r["limit"] else f"the first {done} (of {r['limit']} planned)"
        lines += [f"{r['norm']}, eps {r['eps']:g}, {len(r['labels'])} clean-correct points of {of} class-stratified "
                  f"test images (subset seed 0), {r['checkpoint']}, attack seed {r['seed']}, fp32, {r['machine']}, "
                  f"torch {r['torch']}", "",
                  f"| method | median distance / best | points within {100 * (r['tight'] - 1):.0f}% of best | "
                  "seconds | of standard AutoAttack's |", "|---|---|---|---|---|"]
        lines += [f"| {s['method']} | {s['median_ratio']:.3f} | {100 * s['within']:.1f}% | {s['seconds']:.0f} | "
                  f"{s['of_autoattack']:.2f}x |" for s in summary(r)]
        lines += [f"| autoattack (standard, at eps) | | | {r['seconds']['autoattack']:.0f} | 1.00x |", ""]
        lines += ["| class | points | robust at eps: mindist curve | robust at eps: standard AutoAttack | "
                  "mindist median distance / best |", "|---|---|---|---|---|"]
        lines += [f"| {c['class']} | {c['points']} | {c['curve_at_eps']} | {c['autoattack']} | {c['median_ratio']:.3f} |"
                  for c in per_class(r)]
        sources = {s: r["mindist_source"].count(s) for s in dict.fromkeys(r["mindist_source"])}
        lines += ["", "mindist: where each point's distance came from: "
                  + ", ".join(f"{k} {v}" for k, v in sources.items()), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="runs/demo/model.safetensors")
    p.add_argument("--norm", choices=["linf", "l2"], default="linf")
    p.add_argument("--limit", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/curve_tightness.json")
    p.add_argument("--render", nargs="+", metavar="JSON", help="print the tables of finished records and exit")
    args = p.parse_args()
    if args.render:
        print(render([json.loads(Path(f).read_text()) for f in args.render]))
        return
    measure(args)


if __name__ == "__main__":
    main()
