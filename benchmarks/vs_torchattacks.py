"""Evaluation speed against torchattacks: PGD-20 and APGD-CE (100 steps) on a PGD-AT smallcnn.

Both sides evaluate the same class-stratified Fashion-MNIST test images with the same model,
batch size, steps and eps, in this process. Ours runs in evaluation mode (attacks only the
correctly classified points, drops a point at its first fooling iterate), fp32 and bf16;
torchattacks attacks every point for every step (its design), fp32. Robust accuracy counts a
point robust only if it is classified correctly both clean and attacked, for both.

    python benchmarks/vs_torchattacks.py --checkpoint runs/demo/model.safetensors --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import time

import torch

from classrobust.attacks import APGD, PGD
from classrobust.attacks.base import fast_weights
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
    p.add_argument("--limit", type=int, default=0, help="class-stratified test images (0: the whole test set)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seeds", default="0", help="comma-separated; each seeds both sides' random starts")
    p.add_argument("--attacks", default="pgd,apgd", help="comma-separated subset of pgd,apgd")
    p.add_argument("--peer-layout", action="store_true",
                   help="also time torchattacks with the convolutions in channels-last, as our attacks run "
                        "them, to separate the layout's gain from evaluation mode's")
    args = p.parse_args()
    model, meta = load_checkpoint(args.checkpoint)
    eps = meta["eps"]
    data = get_dataset(meta["dataset"], "test")
    if args.limit:
        data = stratified_subset(data, args.limit, seed=0)
    n = len(data)
    print(f"torch {torch.__version__}, torchattacks {torchattacks.__version__}, {torch.get_num_threads()} threads, "
          f"{n} test images, batch {args.batch_size}, eps {eps}")
    peer_head = (" | torchattacks fp32, channels-last convs (s) (robust points) | speed-up fp32 vs it"
                 if args.peer_layout else "")
    print("| attack | seed | ours fp32 (s) | ours bf16 (s) | torchattacks fp32 (s) "
          f"| robust points ours fp32 / bf16 / theirs | speed-up fp32 | speed-up bf16{peer_head} |")
    print("|---|---|---|---|---|---|---|---|" + ("---|---|" if args.peer_layout else ""))
    cases = {
        "pgd": ("PGD-20", lambda prec, seed: PGD(model, eps=eps, alpha=eps / 4, steps=20, precision=prec, seed=seed),
                lambda seed: torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=20, random_start=True)),
        "apgd": ("APGD-CE-100", lambda prec, seed: APGD(model, eps=eps, steps=100, loss="ce", precision=prec,
                                                        seed=seed),
                 lambda seed: torchattacks.APGD(model, eps=eps, steps=100, n_restarts=1, loss="ce", seed=seed)),
    }
    for key in args.attacks.split(","):
        name, ours, theirs = cases[key]
        for seed in (int(s) for s in args.seeds.split(",")):
            torch.manual_seed(seed)  # torchattacks' PGD draws its random start from the global RNG
            acc_t, t_t = run_theirs(model, data, theirs(seed), args.batch_size)
            acc_32, t_32 = run_ours(model, data, ours("fp32", seed), args.batch_size)
            acc_16, t_16 = run_ours(model, data, ours("bf16", seed), args.batch_size)
            counts = " / ".join(str(round(a * n)) for a in (acc_32, acc_16, acc_t))
            peer = ""
            if args.peer_layout:
                torch.manual_seed(seed)
                with fast_weights(model):
                    acc_l, t_l = run_theirs(model, data, theirs(seed), args.batch_size)
                peer = f" | {t_l:.1f} ({round(acc_l * n)}) | {t_l / t_32:.2f}x"
            print(f"| {name} | {seed} | {t_32:.1f} | {t_16:.1f} | {t_t:.1f} | {counts} "
                  f"| {t_t / t_32:.2f}x | {t_t / t_16:.2f}x{peer} |", flush=True)


if __name__ == "__main__":
    main()
