"""Helpers of benchmarks/gpu_check.sh: synthetic data, host-sync counts, PGD-AT throughput.

Needs no internet and no downloaded data. Subcommands:

  data DIR --train N --test N        a 10-class ImageFolder tree of 32x32 RGB PNGs (learnable stripes)
  syncs --device D                   host synchronisations per PGD step, counted two ways
  throughput --device D --images N   PGD-10 adversarial-training epoch on N CIFAR-shaped images,
                                     PreAct ResNet-18, bf16, with and without channels-last
  determinism DATA --device D        README's resume promise: two --deterministic runs, two default
                                     runs, and a --deterministic run killed after epoch 1 and resumed

Everything prints one ``key: value`` line per result, so the shell script's log is the record.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch


def make_data(root: Path, n_train: int, n_test: int, size: int = 32, classes: int = 10, seed: int = 0) -> None:
    """Class k: a bright horizontal stripe at a class-specific height and hue, plus noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for k in range(classes):
            d = root / split / f"class_{k:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 90, size=(size, size, 3))
                row = 2 + (k * (size - 6)) // classes
                img[row:row + 3, 3:size - 3, k % 3] += 150
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i:05d}.png")
    print(f"data: {root} ({classes} classes, {n_train}/{n_test} train/test images per class, {size}x{size} RGB)")


def _model(device, num_classes=10, channels_last=False, name="preact-resnet18"):
    from classrobust.data.base import DatasetInfo, ThreatModel
    from classrobust.models import create_model

    info = DatasetInfo(name="synthetic-cifar", classes=tuple(f"class_{k}" for k in range(num_classes)),
                       input_shape=(3, 32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                       threat_model=ThreatModel(eps=8 / 255, step_size=2 / 255), splits=("train", "test"))
    torch.manual_seed(0)
    model = create_model(name, info).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def count_syncs(device: torch.device, batch: int = 64, steps: int = 10) -> None:
    """Host synchronisations in one PGD call on PreAct ResNet-18 (see runtime.SyncCounter)."""
    from classrobust.attacks import PGD
    from classrobust.runtime import SyncCounter

    model = _model(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    for mode in ("last", "best"):
        attack = PGD(model, eps=8 / 255, steps=steps, seed=0, mode=mode)
        attack(x, y)  # warm-up
        counter = SyncCounter()
        with counter.counting():
            attack(x, y)
        per_step = counter.total / steps
        detail = ", ".join(f"{k} {v}" for k, v in counter.counts.items() if v)
        print(f"syncs PGD-{steps} mode={mode}: {counter.total} in the call ({per_step:.1f} per step; {detail})")
    if device.type == "cuda":  # CUDA's own count of synchronising calls, as a cross-check
        import warnings

        attack = PGD(model, eps=8 / 255, steps=steps, seed=0, mode="last")
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            attack(x, y)
        torch.cuda.set_sync_debug_mode("default")
        n = sum("synchroniz" in str(w.message) for w in caught)
        print(f"syncs PGD-{steps} mode=last, torch.cuda sync debug mode: {n} warnings ({n / steps:.1f} per step)")


def throughput(device: torch.device, n_images: int, batch: int, steps: int, precision: str,
               compiled: bool = False, backend: str = "inductor", model_name: str = "preact-resnet18"
               ) -> dict[str, dict[str, float]]:
    """One PGD-AT epoch (our PGDAT method, SGD step) over ``n_images`` random CIFAR-shaped images
    already on the device: the compute path only, no data loading. Whole batches only, as the
    training loop does (``drop_last``): a last, smaller batch would make a compiled model recompile
    for a new shape inside the timed epoch. ``compiled``: only the channels-last + cudnn.benchmark
    layout, with the model under ``torch.compile(backend=backend)`` (the warm-up absorbs the
    compilation; recompilations during the timed epoch are counted and printed).
    Returns images per second and dynamo frames compiled during the timed epoch, per layout."""
    from classrobust.training.methods import METHODS

    g = torch.Generator().manual_seed(0)
    data_x = torch.rand(n_images, 3, 32, 32, generator=g)
    data_y = torch.randint(0, 10, (n_images,), generator=g)
    layouts = ((True, True),) if compiled else ((False, False), (True, False), (True, True))
    results = {}
    for channels_last, autotune in layouts:
        torch.backends.cudnn.benchmark = autotune
        model = _model(device, channels_last=channels_last, name=model_name).train()
        if compiled:
            model = torch.compile(model, backend=backend)
        method = METHODS.build("pgd-at", attack_steps=steps, alpha=2 / 255, precision=precision)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        xs = data_x.to(device).contiguous(memory_format=fmt)
        ys = data_y.to(device)

        def epoch(limit):
            seen = 0
            for i in range(0, limit - batch + 1, batch):  # whole batches only
                x, y = xs[i:i + batch], ys[i:i + batch]
                loss, _ = method.loss(model, x, y, eps=8 / 255, seed=i)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(y)
            return seen

        epoch(min(n_images, 4 * batch))  # warm-up (cuDNN autotuning, allocator, compilation)
        if device.type == "cuda":
            torch.cuda.synchronize()
        frames_before = _compiled_frames()
        t0 = time.perf_counter()
        seen = epoch(n_images)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        recompiled = _compiled_frames() - frames_before
        layout = (("channels-last" if channels_last else "contiguous") + (", cudnn.benchmark" if autotune else "")
                  + (", torch.compile" if compiled else ""))
        print(f"throughput PGD-{steps} AT epoch, {model_name}, {precision}, batch {batch}, {layout}: "
              f"{seen} images in {seconds:.2f} s ({seen / seconds:.0f} img/s)"
              + (f"; compiled during the timed epoch: {recompiled} frames" if compiled else ""))
        results[layout] = {"images_per_second": seen / seconds, "recompiled_frames": recompiled}
        if compiled:  # why a compiled epoch is slow: graphs captured, recompilations, graph breaks
            from torch._dynamo.utils import counters

            print("torch.compile counters: " + "; ".join(
                f"{group}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                for group, c in sorted(counters.items()) if c))
    return results


def _compiled_frames() -> int:
    """Frames dynamo has compiled so far in this process (each recompilation adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def determinism(data: Path, out: Path, device: str, model: str, epochs: int = 2, kill: bool = True) -> None:
    """Bitwise checks of the training promise on ``device`` (prints one line per comparison);
    ``kill=False`` leaves out the killed-and-resumed run."""
    import os
    import signal
    import subprocess
    import sys

    base = [sys.executable, "-m", "classrobust", "train", "--dataset", f"folder:{data}", "--model", model,
            "--method", "pgd-at", "--epochs", str(epochs), "--attack-steps", "2", "--batch-size", "64",
            "--val-size", "20", "--precision", "bf16", "--device", device, "--no-progress", "--seed", "1"]

    def trained(name, *extra):
        subprocess.run([*base, *extra, "--out", str(out / name)], check=True, capture_output=True)
        return _sha(out / name / "model.safetensors")

    det = [trained("det-a", "--deterministic"), trained("det-b", "--deterministic")]
    print(f"determinism --deterministic, two runs: {'bitwise equal' if det[0] == det[1] else 'DIFFER'}")
    if device.startswith("cuda"):  # on the CPU the default path is the deterministic one
        default = [trained("default-a"), trained("default-b")]
        print(f"determinism default (cudnn.benchmark), two runs: "
              f"{'bitwise equal' if default[0] == default[1] else 'differ'}")
    if not kill:
        return
    state = out / ".killed.partial" / "train_state.pt"
    proc = subprocess.Popen([*base, "--deterministic", "--out", str(out / "killed")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not state.exists() and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        print("determinism resume: the run finished before the kill; not measured")
        return
    resumed = trained("killed", "--deterministic", "--resume")
    print(f"determinism --deterministic, killed after epoch 1 and resumed vs uninterrupted: "
          f"{'bitwise equal' if resumed == det[0] else 'DIFFER'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data")
    d.add_argument("root", type=Path)
    d.add_argument("--train", type=int, default=100)
    d.add_argument("--test", type=int, default=30)
    s = sub.add_parser("syncs")
    s.add_argument("--device", default="cuda")
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--steps", type=int, default=10)
    t = sub.add_parser("throughput")
    t.add_argument("--device", default="cuda")
    t.add_argument("--images", type=int, default=50_000)
    t.add_argument("--batch", type=int, default=512)
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--precision", default="bf16")
    t.add_argument("--compile", action="store_true", help="the compiled model, channels-last + cudnn.benchmark only")
    t.add_argument("--backend", default="inductor", help="torch.compile backend (with --compile)")
    r = sub.add_parser("determinism")
    r.add_argument("data", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--device", default="cuda")
    r.add_argument("--model", default="preact-resnet18")
    r.add_argument("--no-kill", action="store_true", help="leave out the killed-and-resumed run")
    args = p.parse_args()
    if args.command == "determinism":
        determinism(args.data, args.out, args.device, args.model, kill=not args.no_kill)
    elif args.command == "data":
        make_data(args.root, args.train, args.test)
    elif args.command == "syncs":
        count_syncs(torch.device(args.device), args.batch, args.steps)
    else:
        throughput(torch.device(args.device), args.images, args.batch, args.steps, args.precision, args.compile,
                   args.backend)


if __name__ == "__main__":
    main()
