"""Does a class-wise budget give the label away? (issue #15 screen, validation split only.)

For a model trained with per-class eps (``dafa`` margins, ``class-eps``): the share of each
class's clean validation images predicted as each class, and the share of *other* classes'
validation images predicted as the class with the largest budget once uniform noise of
amplitude eps_max is added (clipped to [0, 1]). If noise alone makes images "the wide-budget
class", the model reads the perturbation's size, not the garment.

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
    config = TrainConfig(**{k: v for k, v in meta["config"].items() if k in TrainConfig.__dataclass_fields__})
    _, val = run_splits(config)
    scale = np.asarray(meta["classwise"]["final_terms"]["eps_scale"])
    wide = int(scale.argmax())
    eps_max = float(meta["eps"] * scale[wide])
    g = torch.Generator().manual_seed(0)
    clean_pred, noisy_pred, labels = [], [], []
    with torch.no_grad():
        for x, y in make_loader(val, 500):
            clean_pred.append(model(x).argmax(1))
            noise = (torch.rand(x.shape, generator=g) * 2 - 1) * eps_max
            noisy_pred.append(model((x + noise).clamp(0, 1)).argmax(1))
            labels.append(y)
    y, c, n = torch.cat(labels), torch.cat(clean_pred), torch.cat(noisy_pred)
    others = y != wide
    out = {"run": str(run), "widest_budget_class": meta["classes"][wide], "eps_max": eps_max,
           "eps_scale": dict(zip(meta["classes"], scale.round(3).tolist())),
           "clean_accuracy_widest_class": float((c[y == wide] == wide).float().mean()),
           "clean_other_predicted_as_widest": float((c[others] == wide).float().mean()),
           "noisy_other_predicted_as_widest": float((n[others] == wide).float().mean()),
           "validation_images": int(len(y))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
