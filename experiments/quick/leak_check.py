"""Does a class-wise budget give the label away? (issue #15 screen, validation split only.)

For a model trained with per-class eps (``dafa`` margins, ``class-eps``): how often the
validation images of the *other* classes are predicted as the class with the largest budget
once random-sign noise (every pixel +-a, the shape of a saturated PGD perturbation, clipped to
[0, 1]) is added, at a = that class's budget and at a = the common eps (the control). If noise
of the wide budget's size alone makes images "the wide-budget class" and the same noise at the
common eps does not, the model reads the perturbation's size, not the garment.

  python experiments/quick/leak_check.py runs/screen/dafa-l1-s100
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch


def main(run: Path) -> None:
    from classrobust.checkpoint import load_checkpoint
    from classrobust.data import make_loader, run_splits
    from classrobust.training import TrainConfig

    model, meta = load_checkpoint(run / "model.safetensors")
    model.eval()
    if "classwise" not in meta:
        raise SystemExit(f"{run} was trained without class-wise levers: no class-wise budget to check")
    config = TrainConfig(**{k: v for k, v in meta["config"].items() if k in TrainConfig.__dataclass_fields__})
    _, val = run_splits(config)
    scale = np.asarray(meta["classwise"]["final_terms"]["eps_scale"])
    wide = int(scale.argmax())
    eps_max = float(meta["eps"] * scale[wide])
    g = torch.Generator().manual_seed(0)
    eps = float(meta["eps"])
    clean_pred, noisy_pred, control_pred, labels = [], [], [], []
    with torch.no_grad():
        for x, y in make_loader(val, 500):
            clean_pred.append(model(x).argmax(1))
            sign = torch.randint(0, 2, x.shape, generator=g).float() * 2 - 1
            noisy_pred.append(model((x + sign * eps_max).clamp(0, 1)).argmax(1))
            control_pred.append(model((x + sign * eps).clamp(0, 1)).argmax(1))
            labels.append(y)
    y, c, n, m = torch.cat(labels), torch.cat(clean_pred), torch.cat(noisy_pred), torch.cat(control_pred)
    others = y != wide
    out = {"run": str(run), "widest_budget_class": meta["classes"][wide], "eps_max": eps_max,
           "eps_scale": dict(zip(meta["classes"], scale.round(3).tolist())),
           "clean_accuracy_widest_class": float((c[y == wide] == wide).float().mean()),
           "clean_other_predicted_as_widest": float((c[others] == wide).float().mean()),
           "noise_at_eps_max_other_predicted_as_widest": float((n[others] == wide).float().mean()),
           "noise_at_eps_other_predicted_as_widest": float((m[others] == wide).float().mean()),
           "clean_widest_class_predicted_as": meta["classes"][int(torch.mode(c[y == wide]).values)],
           "validation_images": int(len(y))}
    print(json.dumps(out, indent=2))
    if len(sys.argv) > 2:  # a record to commit
        Path(sys.argv[2]).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
