"""Evaluation speed against torchattacks: PGD-20 and APGD-CE (100 steps) on a PGD-AT smallcnn.

Both sides evaluate the same class-stratified Fashion-MNIST test images with the same model,
batch size, steps and eps, in this process, taking turns batch by batch so that the shared
machine's slow and fast stretches fall on every side alike. Ours runs in evaluation mode (attacks only the
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


def ours_on_batch(model, x, y, attack, classes) -> int:
    """Robust points of one batch, evaluated the way `classrobust eval` does."""
    res = evaluate_classwise(model, [(x, y)], {"a": attack}, classes=classes, progress=False)
    return round(res.attacks["a"].accuracy * len(y))


def theirs_on_batch(model, x, y, attack) -> int:
    x_adv = attack(x, y)
    with torch.no_grad():
        return int(((model(x).argmax(1) == y) & (model(x_adv).argmax(1) == y)).sum())


def interleaved(model, dataset, batch_size, runners):
    """Each runner on every batch in turn, so a slower or faster stretch of a shared machine
    falls on all of them alike. runners: name -> fn(x, y) -> robust points.
    Returns name -> (robust points, seconds)."""
    totals = {name: [0, 0.0] for name in runners}
    for x, y in make_loader(dataset, batch_size):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            totals[name][0] += fn(x, y)
            totals[name][1] += time.perf_counter() - t0
    return {name: tuple(v) for name, v in totals.items()}


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
            runners = {
                "theirs": lambda x, y, a=theirs(seed): theirs_on_batch(model, x, y, a),
                "fp32": lambda x, y, a=ours("fp32", seed): ours_on_batch(model, x, y, a, data.classes),
                "bf16": lambda x, y, a=ours("bf16", seed): ours_on_batch(model, x, y, a, data.classes),
            }
            if args.peer_layout:
                def theirs_fast(x, y, a=theirs(seed)):
                    with fast_weights(model):
                        return theirs_on_batch(model, x, y, a)
                runners["theirs_fast"] = theirs_fast
            got = interleaved(model, data, args.batch_size, runners)
            (r_t, t_t), (r_32, t_32), (r_16, t_16) = got["theirs"], got["fp32"], got["bf16"]
            counts = f"{r_32} / {r_16} / {r_t}"
            peer = ""
            if args.peer_layout:
                r_l, t_l = got["theirs_fast"]
                peer = f" | {t_l:.1f} ({r_l}) | {t_l / t_32:.2f}x"
            print(f"| {name} | {seed} | {t_32:.1f} | {t_16:.1f} | {t_t:.1f} | {counts} "
                  f"| {t_t / t_32:.2f}x | {t_t / t_16:.2f}x{peer} |", flush=True)


if __name__ == "__main__":
    main()
