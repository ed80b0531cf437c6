"""Evaluation speed against torchattacks: PGD-20 and APGD-CE (100 steps) on a PGD-AT smallcnn.

Both sides evaluate the same class-stratified Fashion-MNIST test images with the same model,
batch size, steps and eps, in this process. Ours runs in evaluation mode (attacks only the
correctly classified points, drops a point at its first fooling iterate), fp32 and bf16;
torchattacks attacks every point for every step (its design), fp32. Robust accuracy counts a
point robust only if it is classified correctly both clean and attacked, for both.

    python benchmarks/vs_torchattacks.py --checkpoint runs/demo/model.safetensors --limit 2000
"""

from __future__ import annotations

import argparse
import time

import torch

from classrobust.attacks import APGD, PGD
from classrobust.checkpoint import load_checkpoint
from classrobust.data import get_dataset, make_loader, stratified_subset
from classrobust.evaluate import evaluate_classwise


def run_ours(model, dataset, attack, batch_size):
    t0 = time.perf_counter()
    res = evaluate_classwise(model, make_loader(dataset, batch_size), {"a": attack}, progress=False)
    return res.attacks["a"].accuracy, time.perf_counter() - t0


def run_theirs(model, dataset, attack, batch_size):
    t0 = time.perf_counter()
    robust = 0
    for x, y in make_loader(dataset, batch_size):
        x_adv = attack(x, y)
        with torch.no_grad():
            robust += int(((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)).sum())
    return robust / len(dataset), time.perf_counter() - t0


def main() -> None:
    import torchattacks

    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="runs/demo/model.safetensors")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    eps = meta["eps"]
    data = stratified_subset(get_dataset(meta["dataset"], "test"), args.limit, seed=0)
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, {torch.get_num_threads()} threads, "
          f"{len(data)} test images, batch {args.batch_size}, eps {eps}")
    print(f"| attack | ours fp32 (s) | ours bf16 (s) | torchattacks fp32 (s) | robust acc ours fp32 / bf16 / theirs "
          f"| speed-up fp32 | speed-up bf16 |")
    print("|---|---|---|---|---|---|---|")
    cases = [
        ("PGD-20", lambda prec: PGD(model, eps=eps, alpha=eps / 4, steps=20, precision=prec),
         lambda: torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=20, random_start=True)),
        ("APGD-CE-100", lambda prec: APGD(model, eps=eps, steps=100, loss="ce", precision=prec),
         lambda: torchattacks.APGD(model, eps=eps, steps=100, n_restarts=1, loss="ce", seed=0)),
    ]
    for name, ours, theirs in cases:
        torch.manual_seed(0)
        acc_t, t_t = run_theirs(model, data, theirs(), args.batch_size)
        acc_32, t_32 = run_ours(model, data, ours("fp32"), args.batch_size)
        acc_16, t_16 = run_ours(model, data, ours("bf16"), args.batch_size)
        print(f"| {name} | {t_32:.1f} | {t_16:.1f} | {t_t:.1f} | {acc_32:.2%} / {acc_16:.2%} / {acc_t:.2%} "
              f"| {t_t / t_32:.2f}x | {t_t / t_16:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
