"""Per class on the demo model: PGD-20, APGD-CE, standard AutoAttack with each member's marginal
flips, Square's old (rescaled) p schedule against the reference's, and FMN's curve read at eps.

Writes ``--out`` (JSON, rewritten after every batch, so a killed run keeps its finished batches and
resumes from them) and, with ``--render``, prints the Markdown tables that docs/attacks.md holds
between ``<!-- attack-members -->`` markers (tests/test_docs.py checks that they match the JSON).

    python benchmarks/attack_members.py --limit 2000 --out benchmarks/results/attack_members.json
    python benchmarks/attack_members.py --render benchmarks/results/attack_members.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

COLUMNS = ["pgd-20", "apgd-ce", "autoattack", "fmn"]
MEMBERS = ["apgd-ce", "apgd-t", "fab-t", "square"]


def render(record: dict) -> str:
    """The Markdown tables of a record (torch-free)."""
    classes, n = record["classes"], record["n_per_class"]
    counts, flips = record["robust_per_class"], record["member_flips_per_class"]
    pct = lambda c, k: f"{100 * c / k:.1f}"  # noqa: E731
    head = (f"{sum(n)} class-stratified test images (subset seed 0) of `{record['checkpoint']}`, eps "
            f"{record['eps']:g} (L-inf), fp32, seed {record['seed']}; {record['machine']}, torch {record['torch']}.\n\n")
    t1 = ["| class | n | clean | PGD-20 | APGD-CE | AutoAttack | FMN at eps | FMN median distance |",
          "|---|---|---|---|---|---|---|---|"]
    for k, name in enumerate(classes + ["all"]):
        sel = (lambda v: v[k]) if k < len(classes) else sum
        nk = sel(n)
        med = record["fmn_median"][k] if k < len(classes) else record["fmn_median_all"]
        t1.append(f"| {name} | {nk} | " + " | ".join(pct(sel(counts[c]), nk) for c in ["clean"] + COLUMNS)
                  + f" | {med:.3f} |")
    t2 = ["| class | APGD-CE | APGD-T | FAB-T | Square | Square, old schedule (same points) |",
          "|---|---|---|---|---|---|"]
    for k, name in enumerate(classes + ["all"]):
        sel = (lambda v: v[k]) if k < len(classes) else sum
        t2.append(f"| {name} | " + " | ".join(str(sel(flips[m])) for m in MEMBERS)
                  + f" | {sel(record['square_old_flips'])} |")
    secs = record["seconds"]
    tail = ("\n\nSeconds: " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()) + ".")
    return head + "\n".join(t1) + "\n\nPoints each AutoAttack member broke first (the later ones only see " \
        "what the earlier left robust), and what Square with the old rescaled schedule broke of the same " \
        "points Square saw:\n\n" + "\n".join(t2) + tail


def measure(args) -> None:
    import numpy as np
    import torch

    from classrobust.attacks import APGD, FMN, PGD, AutoAttack, Square
    from classrobust.checkpoint import load_checkpoint
    from classrobust.data import get_dataset, make_loader, stratified_subset

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
                  "member_flips_per_class": {m: [0] * k for m in MEMBERS}, "square_old_flips": [0] * k,
                  "fmn_distances": [[] for _ in range(k)], "seconds": {}}
    attacks = {"pgd-20": PGD(model, eps=eps, steps=20, seed=args.seed), "apgd-ce": APGD(model, eps=eps, seed=args.seed)}
    aa = AutoAttack(model, eps=eps, seed=args.seed)
    old_square = Square(model, eps=eps, seed=args.seed, rescale_schedule=True)
    fmn = FMN(model, eps=eps)
    square_index = list(aa.attacks).index("square")

    def add(key, labels, name=None):
        target = record[key] if name is None else record[key][name]
        for c, v in enumerate(np.bincount(labels.numpy(), minlength=len(classes))):
            target[c] += int(v)

    def timed(name, fn):
        t0 = time.perf_counter()
        value = fn()
        record["seconds"][name] = record["seconds"].get(name, 0.0) + time.perf_counter() - t0
        return value

    for b, (x, y) in enumerate(make_loader(test, args.batch_size)):
        if b < record["batches_done"]:
            continue
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        add("n_per_class", y)
        add("robust_per_class", y[ok], "clean")
        xc, yc = x[ok], y[ok]

        def robust(x_adv):
            with torch.no_grad():
                return model(x_adv).argmax(1) == yc

        for name, attack in attacks.items():
            add("robust_per_class", yc[timed(name, lambda: robust(attack(xc, yc)))], name)
        x_aa, breaker = timed("autoattack", lambda: aa.cascade(xc, yc))
        add("robust_per_class", yc[robust(x_aa) & (breaker < 0)], "autoattack")
        for i, m in enumerate(MEMBERS):
            add("member_flips_per_class", yc[breaker == i], m)
        saw_square = (breaker < 0) | (breaker == square_index)
        if saw_square.any():
            xs, ys = xc[saw_square], yc[saw_square]
            broke = timed("square-old-schedule", lambda: ~robust_at(model, old_square(xs, ys), ys))
            add("square_old_flips", ys[broke])
        _, dist = timed("fmn", lambda: fmn.minimal(xc, yc))
        add("robust_per_class", yc[dist > eps], "fmn")
        for c, d in zip(yc.tolist(), dist.tolist()):
            record["fmn_distances"][c].append(d)
        record["batches_done"] = b + 1
        n = record["n_per_class"]
        record["fmn_median"] = [float(np.median(d + [0.0] * (n[c] - len(d)))) for c, d in enumerate(record["fmn_distances"])]
        every = [d for ds in record["fmn_distances"] for d in ds] + [0.0] * (sum(n) - sum(map(len, record["fmn_distances"])))
        record["fmn_median_all"] = float(np.median(every))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1))
        print(f"batch {b + 1}: {sum(n)} images, " + ", ".join(f"{k} {v:.0f} s" for k, v in record["seconds"].items()),
              flush=True)


def robust_at(model, x_adv, y):
    import torch

    with torch.no_grad():
        return model(x_adv).argmax(1) == y


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="runs/demo/model.safetensors")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default="benchmarks/results/attack_members.json")
    p.add_argument("--render", metavar="JSON", help="print the Markdown tables of a finished record and exit")
    args = p.parse_args()
    if args.render:
        print(render(json.loads(Path(args.render).read_text())))
        return
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    measure(args)


if __name__ == "__main__":
    main()
