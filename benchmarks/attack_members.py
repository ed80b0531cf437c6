"""Per class on the demo model, on the images of benchmarks/autoattack_speed.py: PGD-20, APGD-CE,
Square alone with the reference's p schedule and with the old rescaled one, and FMN's curve read at
eps; rendered together with that benchmark's AutoAttack numbers (each member's marginal flips, the
reference implementation's and torchattacks' robust accuracy).

Writes ``--out`` (JSON, rewritten after every batch, so a killed run keeps its finished batches and
resumes from them) and, with ``--render``, prints the Markdown that docs/attacks.md holds between
``<!-- attack-members-1000 -->`` (1,000 images, with the reference implementation) and
``<!-- attack-members -->`` (2,000 images) markers; tests/test_docs.py checks that they match the
JSON files.

    python benchmarks/attack_members.py --limit 2000 --square-limit 2000 \
        --out benchmarks/results/attack_members_2000.json
    python benchmarks/attack_members.py --render benchmarks/results/attack_members_2000.json \
        --autoattack benchmarks/results/autoattack_2000_seed0.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

COLUMNS = ["pgd-20", "apgd-ce", "fmn"]
SQUARES = ["square", "square-old-schedule"]
MEMBERS = ["apgd-ce", "apgd-t", "fab-t", "square"]


def render(record: dict, aa: dict | None) -> str:
    """The Markdown of a record and the AutoAttack benchmark's record on the same images (torch-free;
    ``aa`` None: the record alone)."""
    if aa is not None and (aa["limit"], aa["checkpoint"], aa["eps"]) != (record["limit"], record["checkpoint"],
                                                                        record["eps"]):
        raise ValueError("the two records are not on the same images, model and eps")
    classes, n = record["classes"], record["n_per_class"]
    run = aa["runs"][0] if aa is not None else {"seed": "-", "robust_per_class": {}, "member_flips_per_class": {},
                                                 "seconds": {}}
    counts = {**record["robust_per_class"], **{f"AutoAttack ({side})": v for side, v in run["robust_per_class"].items()}}
    pct = lambda c, k: f"{100 * c / k:.1f}" if k else "-"  # noqa: E731  (a class with no image in a small run)
    sel = lambda v, k: v[k] if k < len(classes) else sum(v)  # noqa: E731
    head = (f"{sum(n)} class-stratified test images (subset seed 0) of `{record['checkpoint']}`, eps "
            f"{record['eps']:g} (L-inf), fp32, attack seed {record['seed']} (AutoAttack seed {run['seed']}); "
            f"robust accuracy in %; {record['machine']}, torch {record['torch']}.\n\n")
    cols = ["clean", "pgd-20", "apgd-ce", "AutoAttack (ours)", "AutoAttack (reference)", "AutoAttack (torchattacks)",
            "fmn"]
    cols = [c for c in cols if c in counts]
    t1 = ["| class | n | " + " | ".join(cols) + " | FMN median distance |", "|---" * (len(cols) + 3) + "|"]
    for k, name in enumerate(classes + ["all"]):
        nk = sel(n, k)
        med = record["fmn_median"][k] if k < len(classes) else record["fmn_median_all"]
        t1.append(f"| {name} | {nk} | " + " | ".join(pct(sel(counts[c], k), nk) for c in cols)
                  + (" | - |" if med is None else f" | {med:.3f} |"))
    flips = run["member_flips_per_class"]
    t2 = ["| class | " + " | ".join(MEMBERS) + " |", "|---" * (len(MEMBERS) + 1) + "|"]
    for k, name in enumerate(classes + ["all"] if flips else []):
        t2.append(f"| {name} | " + " | ".join(str(sel(flips[m], k)) for m in MEMBERS) + " |")
    members = ("\n\nPoints each member of our AutoAttack broke first (a member sees only what the earlier ones "
               "left robust):\n\n" + "\n".join(t2)) if flips else ""
    tail = f"\n\nSeconds ({record['machine']}): " + ", ".join(f"{k} {v:.0f}" for k, v in record["seconds"].items())
    if aa is not None:  # the AutoAttack benchmark is its own run, perhaps with other threads
        tail += f"; AutoAttack ({aa['machine']}): " + ", ".join(
            f"{s} {v:.0f}" for s, v in run["seconds"].items() if s != "curves")
    tail += "."
    sq = record["square_subset"]
    t3 = ["| class | n | clean | " + " | ".join(SQUARES) + " |", "|---" * (len(SQUARES) + 3) + "|"]
    for k, name in enumerate(classes + ["all"]):
        nk = sel(sq["n_per_class"], k)
        t3.append(f"| {name} | {nk} | " + " | ".join(pct(sel(sq["robust_per_class"][c], k), nk)
                                                     for c in ["clean"] + SQUARES) + " |")
    on = "all of these" if sum(sq["n_per_class"]) == sum(n) else f"the first {sum(sq['n_per_class'])} of these"
    return head + "\n".join(t1) + members + "\n\nSquare alone (5,000 queries), the " \
        f"reference's p schedule against the old rescaled one, on {on} images (robust accuracy in %):\n\n" \
        + "\n".join(t3) + tail


def measure(args) -> None:
    import numpy as np
    import torch

    from classrobust.attacks import APGD, FMN, PGD, Square
    from classrobust.checkpoint import load_checkpoint
    from classrobust.data import get_dataset, make_loader, stratified_subset
    from classrobust.evaluate.tally import add_per_class as add
    from classrobust.evaluate.tally import still_correct, timed

    model, meta = load_checkpoint(args.checkpoint)
    eps = float(meta.get("eps", 0.1))
    test = stratified_subset(get_dataset(meta["dataset"], "test"), args.limit, seed=0)
    classes = list(test.classes)
    out = Path(args.out)
    if out.is_file():
        record = json.loads(out.read_text())
    else:
        k = len(classes)
        record = {"checkpoint": args.checkpoint, "eps": eps, "limit": args.limit, "seed": args.seed,
                  "batch_size": args.batch_size, "classes": classes, "batches_done": 0,
                  "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                  "torch": torch.__version__, "n_per_class": [0] * k,
                  "robust_per_class": {c: [0] * k for c in ["clean"] + COLUMNS},
                  "fmn_distances": [[] for _ in range(k)], "seconds": {},
                  "square_subset": {"n_per_class": [0] * k, "robust_per_class": {c: [0] * k for c in ["clean"] + SQUARES}}}
    attacks = {"pgd-20": PGD(model, eps=eps, steps=20, seed=args.seed), "apgd-ce": APGD(model, eps=eps, seed=args.seed),
               }
    squares = {"square": Square(model, eps=eps, seed=args.seed),
               "square-old-schedule": Square(model, eps=eps, seed=args.seed, rescale_schedule=True)}
    fmn = FMN(model, eps=eps)

    for b, (x, y) in enumerate(make_loader(test, args.batch_size)):
        if b < record["batches_done"]:
            continue
        ok = still_correct(model, x, y)
        robust = record["robust_per_class"]
        add(record["n_per_class"], y)
        add(robust["clean"], y[ok])
        xc, yc = x[ok], y[ok]
        for name, attack in attacks.items():
            with timed(record["seconds"], name):
                x_adv = attack(xc, yc)
            add(robust[name], yc[still_correct(model, x_adv, yc)])
        if b * args.batch_size < args.square_limit:  # Square's two schedules on the first images only (its cost)
            part = slice(0, args.square_limit - b * args.batch_size)
            xs, ys, oks = x[part], y[part], ok[part]
            sub = record["square_subset"]
            add(sub["n_per_class"], ys)
            add(sub["robust_per_class"]["clean"], ys[oks])
            for name, attack in squares.items():
                with timed(record["seconds"], name):
                    x_adv = attack(xs[oks], ys[oks])
                add(sub["robust_per_class"][name], ys[oks][still_correct(model, x_adv, ys[oks])])
        with timed(record["seconds"], "fmn"):
            _, dist = fmn.minimal(xc, yc)
        add(robust["fmn"], yc[dist > eps])
        for c, d in zip(yc.tolist(), dist.tolist()):
            record["fmn_distances"][c].append(d)
        record["batches_done"] = b + 1
        n = record["n_per_class"]
        # clean errors are at distance 0
        record["fmn_median"] = [float(np.median(d + [0.0] * (n[c] - len(d)))) if n[c] else None
                                for c, d in enumerate(record["fmn_distances"])]
        every = [d for ds in record["fmn_distances"] for d in ds] + [0.0] * (sum(n) - sum(map(len, record["fmn_distances"])))
        record["fmn_median_all"] = float(np.median(every))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1))
        print(f"batch {b + 1}: {sum(n)} images, " + ", ".join(f"{k} {v:.0f} s" for k, v in record["seconds"].items()),
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="runs/demo/model.safetensors")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--square-limit", type=int, default=250, help="Square's two schedules on the first N images")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="runs/autoattack/attack_members.json")
    p.add_argument("--render", metavar="JSON", help="print the Markdown tables of a finished record and exit")
    p.add_argument("--autoattack", default="benchmarks/results/autoattack_2000_seed0.json",
                   help="benchmarks/autoattack_speed.py's record on the same images (for --render)")
    args = p.parse_args()
    if args.render:
        aa = Path(args.autoattack)
        print(render(json.loads(Path(args.render).read_text()), json.loads(aa.read_text()) if aa.is_file() else None))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    measure(args)


if __name__ == "__main__":
    main()
