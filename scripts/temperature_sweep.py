"""Sweep Temperature-PGD's T on a checkpoint: overall and per-class attack success rate.

    python scripts/temperature_sweep.py runs/demo/model.safetensors --limit 2000

The attack success rate is the share of correctly classified test images that
the attack fools. Prints a Markdown table (used in docs/temperature.md).
"""

from __future__ import annotations

import argparse

import numpy as np

from classrobust.attacks import TemperaturePGD
from classrobust.checkpoint import load_checkpoint
from classrobust.data import get_dataset, make_loader, stratified_subset
from classrobust.evaluate import CLEAN, evaluate_classwise


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--temperatures", default="0.1,0.25,0.5,1,2,4,8,16")
    args = p.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    test = stratified_subset(get_dataset(meta["dataset"], "test"), args.limit, seed=0)
    temps = [float(t) for t in args.temperatures.split(",")]
    attacks = {f"T={t:g}": TemperaturePGD(model, eps=meta["eps"], steps=args.steps, temperature=t)
               for t in temps}
    result = evaluate_classwise(model, make_loader(test, 256), attacks, progress=False)
    clean = result.attacks[CLEAN]
    correct = clean.predictions == clean.labels
    classes = result.classes
    worst = int(np.argmin(clean.accuracy_per_class))
    print(f"Temperature-PGD-{args.steps}, eps {meta['eps']}, {len(test)} test images "
          f"({int(correct.sum())} correctly classified)\n")
    print(f"| T | robust accuracy | attack success rate | success on {classes[worst]} | worst class robust acc |")
    print("|---|---|---|---|---|")
    for name in attacks:
        res = result.attacks[name]
        fooled = correct & (res.predictions != res.labels)
        on_worst = correct & (res.labels == worst)
        print(f"| {name[2:]} | {res.accuracy:.2%} | {fooled.sum() / correct.sum():.2%} "
              f"| {(fooled & on_worst).sum() / max(on_worst.sum(), 1):.2%} "
              f"| {res.accuracy_per_class.min():.2%} ({classes[res.worst_class]}) |")


if __name__ == "__main__":
    main()
