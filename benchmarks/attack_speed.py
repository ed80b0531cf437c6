"""PGD-10 throughput on smallcnn at batch 256, fp32 and bf16, against the floor of 10 forward+backward passes.

The floor is measured in the same process with a plain PyTorch loop (one forward and
one backward w.r.t. the input, times 10), so the ratio is robust to machine noise;
ratio = PGD time / floor time (1.0 = no overhead beyond the gradient computations).
PGD runs in last-iterate mode (every sample, every step: evaluation mode would retire
most of these random-label samples at once). The floor runs twice: with the model's
convolutions in the layout our attacks use on the CPU (channels-last, the overhead
ratio) and in the model's own layout (what a plain loop gets).

    python benchmarks/attack_speed.py [--checkpoint runs/demo/model.safetensors] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from classrobust.attacks import PGD
from classrobust.attacks.base import fast_weights
from classrobust.models import create_model


def timed(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN picks kernels on first call)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def floor_pass(model, x, y, precision: str, passes: int):
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    for _ in range(passes):
        xg = x.detach().requires_grad_(True)
        with ctx:
            logits = model(xg)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        torch.autograd.grad(loss, xg)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.checkpoint:
        from classrobust.checkpoint import load_checkpoint

        model, _ = load_checkpoint(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = create_model("smallcnn", "fashion-mnist")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, batch {args.batch_size}, PGD-{args.steps}")
    print(f"{'precision':<10}{'PGD img/s':>12}{'floor img/s':>14}{'ratio':>8}{'floor, own layout':>20}")
    for precision in ("fp32", "bf16"):
        attack = PGD(model, eps=0.1, steps=args.steps, precision=precision, mode="last")
        t_pgd = timed(lambda: attack(x, y), args.repeats)
        with fast_weights(model):
            t_floor = timed(lambda: floor_pass(model, x, y, precision, args.steps), args.repeats)
        t_plain = timed(lambda: floor_pass(model, x, y, precision, args.steps), args.repeats)
        print(f"{precision:<10}{args.batch_size / t_pgd:>12.0f}{args.batch_size / t_floor:>14.0f}"
              f"{t_pgd / t_floor:>8.2f}{args.batch_size / t_plain:>20.0f}")


if __name__ == "__main__":
    main()
