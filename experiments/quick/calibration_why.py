"""Why does calibration's PGD gain vanish under AutoAttack? (issue #15, item 6.)

Calibration adds per-class logit offsets b inside the model (``z + b``). Two things could make
PGD-20 report a gain that AutoAttack takes back:

- **the decision boundary moved**: raising b_c hands class c the points near its boundary, clean
  or adversarial alike. Every attack then sees the same gain, up to how close each gets to the
  boundary. The margin loss (``cw``, ``max_j (z_j + b_j) - (z_y + b_y)``) follows the boundary
  directly; its x-gradient is the plain network's, so its gain measures the boundary shift alone.
- **only the loss surface PGD follows changed**: cross-entropy's x-gradient is
  ``sum_j p_j grad z_j - grad z_y`` with ``p = softmax(z + b)``; offsets change the weights p_j
  (and saturate them), so PGD-on-CE walks other paths without the boundary being farther away.
  Attacks on other losses (APGD-T on the targeted DLR margin, FAB-T, Square) are not misled.

So, on the same test images, for the base and the calibrated checkpoint, per class: clean,
PGD-20 on CE, PGD-20 on the margin (``cw``), APGD-CE, APGD-T alone, and standard AutoAttack with
each member's marginal flips (which member takes the gain back). And a transfer check: the base
model's AutoAttack examples evaluated on the calibrated model (does the shifted boundary alone
put them back on the right side?).

  classrobust calibrate --checkpoint runs/demo/model.safetensors --out runs/demo/calibrated.safetensors
  python experiments/quick/calibration_why.py --base runs/demo/model.safetensors \\
      --calibrated runs/demo/calibrated.safetensors --limit 1000 --out runs/calibration-why.json
  python experiments/quick/calibration_why.py --render runs/calibration-why.json

Test split only for the measurement; the calibration itself was fitted on validation. ``--out``
is rewritten after every batch and a rerun resumes after the last finished batch.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ATTACKS = ["pgd-20", "cw-20", "apgd-ce", "apgd-t"]
MODELS = ["base", "calibrated"]


def measure(args) -> None:
    import torch

    from classrobust.attacks import APGD, APGDT, CW, PGD, AutoAttack
    from classrobust.checkpoint import load_checkpoint
    from classrobust.data import get_dataset, make_loader, stratified_subset
    from classrobust.evaluate.tally import add_per_class as add
    from classrobust.evaluate.tally import still_correct as robust
    from classrobust.evaluate.tally import timed

    models, metas = {}, {}
    for name, path in (("base", args.base), ("calibrated", args.calibrated)):
        models[name], metas[name] = load_checkpoint(path)
        models[name].eval()
    if metas["base"]["dataset"] != metas["calibrated"]["dataset"]:
        raise SystemExit("calibration_why: the two checkpoints are on different datasets")
    eps = float(metas["base"].get("eps", 0.1))
    test = stratified_subset(get_dataset(metas["base"]["dataset"], "test"), args.limit, seed=0)
    k = len(test.classes)
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.is_file() else None
    settings = {"base": str(args.base), "calibrated": str(args.calibrated), "limit": args.limit, "eps": eps,
                "seed": args.seed}
    if record is not None and record["settings"] != settings:
        raise SystemExit(f"calibration_why: {out} holds another run's results ({record['settings']}); "
                         "choose another --out")
    if record is None:
        offsets = getattr(models["calibrated"], "offsets", None)
        record = {"settings": settings, "classes": list(test.classes), "batches_done": 0,
                  "offsets": offsets.tolist() if offsets is not None else None,
                  "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                  "torch": torch.__version__, "n_per_class": [0] * k, "seconds": {},
                  "robust_per_class": {m: {a: [0] * k for a in ["clean", *ATTACKS, "autoattack"]} for m in MODELS},
                  "member_flips_per_class": {m: {} for m in MODELS},
                  "base_autoattack_on_calibrated": [0] * k}

    for b, (x, y) in enumerate(make_loader(test, args.batch_size)):
        if b < record["batches_done"]:
            continue
        add(record["n_per_class"], y)
        base_adv = None
        for name in MODELS:
            model, counts = models[name], record["robust_per_class"][name]
            ok = robust(model, x, y)
            add(counts["clean"], y[ok])
            xc, yc = x[ok], y[ok]
            attacks = {"pgd-20": PGD(model, eps=eps, steps=20, seed=args.seed),
                       "cw-20": CW(model, eps=eps, steps=20, seed=args.seed),
                       "apgd-ce": APGD(model, eps=eps, seed=args.seed),
                       "apgd-t": APGDT(model, eps=eps, n_targets=min(9, k - 1), seed=args.seed)}
            for attack_name, attack in attacks.items():
                with timed(record["seconds"], f"{name} {attack_name}"):
                    x_adv = attack(xc, yc)
                add(counts[attack_name], yc[robust(model, x_adv, yc)])
            aa = AutoAttack(model, eps=eps, seed=args.seed)
            with timed(record["seconds"], f"{name} autoattack"):
                cascade = aa.cascade(xc, yc)
            x_adv, breaker = cascade.x_adv, cascade.breaker
            add(counts["autoattack"], yc[breaker < 0])
            flips = record["member_flips_per_class"][name]
            for i, member in enumerate(aa.attacks):
                add(flips.setdefault(member, [0] * k), yc[breaker == i])
            if name == "base":  # every image: clean errors stay as they are, broken points as attacked
                base_adv = x.clone()
                base_adv[ok] = x_adv
        # the base model's AutoAttack points, judged by the calibrated model
        add(record["base_autoattack_on_calibrated"], y[robust(models["calibrated"], base_adv, y)])
        record["batches_done"] = b + 1
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1))
        print(f"batch {b + 1}: {sum(record['n_per_class'])} images", flush=True)


def render(record: dict) -> str:
    """The Markdown tables of a finished record (torch-free)."""
    classes, n = record["classes"], record["n_per_class"]
    s = record["settings"]
    pct = lambda c, m: f"{100 * c / m:.1f}" if m else "-"  # noqa: E731
    sel = lambda v, i: v[i] if i < len(classes) else sum(v)  # noqa: E731
    cols = ["clean", *ATTACKS, "autoattack"]
    head = (f"{sum(n)} class-stratified test images (subset seed 0), eps {s['eps']:g} (L-inf), fp32, attack seed "
            f"{s['seed']}; base `{s['base']}`, calibrated `{s['calibrated']}`; robust accuracy in % (calibrated "
            f"minus base in points); {record['machine']}, torch {record['torch']}.\n\n")
    lines = ["| class | n | " + " | ".join(cols) + " | base AA points on calibrated |",
             "|---" * (len(cols) + 3) + "|"]
    base, cal = record["robust_per_class"]["base"], record["robust_per_class"]["calibrated"]
    for i, name in enumerate(classes + ["all"]):
        m = sel(n, i)
        cells = [f"{pct(sel(cal[c], i), m)} ({100 * (sel(cal[c], i) - sel(base[c], i)) / m:+.1f})" for c in cols]
        lines.append(f"| {name} | {m} | " + " | ".join(cells) + f" | {pct(sel(record['base_autoattack_on_calibrated'], i), m)} |")
    members = list(record["member_flips_per_class"]["base"])
    flips = ["| class | " + " | ".join(f"{mb} (base / cal.)" for mb in members) + " |", "|---" * (len(members) + 1) + "|"]
    for i, name in enumerate(classes + ["all"]):
        flips.append(f"| {name} | " + " | ".join(
            f"{sel(record['member_flips_per_class']['base'][mb], i)} / "
            f"{sel(record['member_flips_per_class']['calibrated'][mb], i)}" for mb in members) + " |")
    offsets = record.get("offsets")
    tail = ("\n\nOffsets: " + ", ".join(f"{c} {o:+.2f}" for c, o in zip(classes, offsets)) if offsets else "")
    tail += "\n\nSeconds: " + ", ".join(f"{key} {v:.0f}" for key, v in record["seconds"].items()) + "."
    return (head + "\n".join(lines) + "\n\nPoints each AutoAttack member broke first, base / calibrated:\n\n"
            + "\n".join(flips) + tail)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, default=Path("runs/demo/model.safetensors"))
    p.add_argument("--calibrated", type=Path, default=Path("runs/demo/calibrated.safetensors"))
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/calibration-why.json"))
    p.add_argument("--render", type=Path, metavar="JSON", help="print the Markdown of a finished record and exit")
    args = p.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    for path in (args.base, args.calibrated):
        if not path.is_file():
            sys.exit(f"calibration_why: no checkpoint {path}")
    measure(args)


if __name__ == "__main__":
    main()
