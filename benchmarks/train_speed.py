"""PGD-AT (10 steps) training throughput: classrobust's loop against a hand-written PyTorch loop.

Both train smallcnn (dropout 0) on the same class-stratified Fashion-MNIST training images for
one epoch, same batch size, SGD, eps 0.1, alpha 2.5 * eps / 10, random start, attack in eval mode,
in this process. Ours is timed by its own per-epoch `seconds` (the training pass; validation
excluded), the reference by wall time of its loop. ratio = ours / reference (<= 1.0 is the target).

    python benchmarks/train_speed.py [--images 10000] [--compile]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pandas as pd
import torch
import torch.nn.functional as F

from classrobust.data import get_dataset, stratified_subset, train_val_split
from classrobust.models import create_model
from classrobust.runtime import Runtime
from classrobust.training import TrainConfig, train


def reference_epoch(images: torch.Tensor, labels: torch.Tensor, batch: int, precision: str, steps: int = 10,
                    eps: float = 0.1) -> float:
    """A plain PGD-AT epoch written the usual way, on the same data; returns seconds."""
    torch.manual_seed(0)
    model = create_model("smallcnn", "fashion-mnist", dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    alpha = 2.5 * eps / steps
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else torch.enable_grad
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    for start in range(0, len(images) - batch + 1, batch):
        idx = order[start:start + batch]
        x, y = images[idx].float().div_(255), labels[idx]
        model.eval()
        delta = (torch.rand_like(x) * 2 - 1) * eps
        for _ in range(steps):
            delta.requires_grad_(True)
            with ctx():
                loss = F.cross_entropy(model((x + delta).clamp(0, 1)).float(), y)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        x_adv = (x + delta).clamp(0, 1)
        model.train()
        with ctx():
            loss = F.cross_entropy(model(x_adv).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def ours_epoch(n: int, batch: int, precision: str, compile_: bool) -> float:
    config = TrainConfig(epochs=1, attack_steps=10, batch_size=batch, train_subset=n, val_size=100,
                         val_attack_steps=1, model_kwargs={"dropout": 0.0}, precision=precision,
                         compile=compile_)
    with tempfile.TemporaryDirectory() as tmp:
        train(config, f"{tmp}/run", runtime=Runtime(progress=False, log=lambda s: None))
        return float(pd.read_csv(f"{tmp}/run/train_log.csv")["seconds"].iloc[0])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--compile", action="store_true", help="also time --compile (torch.compile)")
    args = p.parse_args()
    train_set, _ = train_val_split(get_dataset("fashion-mnist", "train"), 0.1, seed=0)
    sub = stratified_subset(train_set, args.images, seed=0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(sub)} images, "
          f"batch {args.batch_size}, PGD-AT 10 steps")
    print("| precision | ours (s) | reference (s) | ratio | ours img/s |")
    print("|---|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        ref = reference_epoch(sub.images, sub.targets, args.batch_size, precision)
        ours = ours_epoch(args.images, args.batch_size, precision, False)
        print(f"| {precision} | {ours:.1f} | {ref:.1f} | {ours / ref:.2f} | {len(sub) / ours:.0f} |", flush=True)
        if args.compile:
            comp = ours_epoch(args.images, args.batch_size, precision, True)
            print(f"| {precision} + compile | {comp:.1f} | {ref:.1f} | {comp / ref:.2f} | {len(sub) / comp:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
