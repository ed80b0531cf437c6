"""Replay the epoch in which a training run diverged, from its kept state, under variants.

Issue #15's confirmation lost `trades+wat-e03` seed 1 to a non-finite loss in epoch 6. The loop
keeps the last completed epoch's full state (weights, optimiser, RNG, lever state) in the run's
`.seedN.partial/` folder; this script reloads it and reruns the next epoch up to ``--until`` steps,
recording every batch's training loss (no validation or test image is read):

- ``as-run``: the recipe as configured (bf16, the lever's class weights);
- ``fp32``: the same epoch without bf16 autocast;
- ``unit-weights``: the lever's class weights replaced by 1 (plain TRADES from the same state);
- ``clip10``: the gradient's global norm clipped at 10 before each step (``--grad-clip 10``);
- ``other-start``: another random start for every inner attack.

For the first batch whose loss exceeds ``--spike`` in the ``as-run`` replay it also records the
gradient norm and the loss's parts (mean clean CE, mean KL). Writes a JSON record (``--out``).

    python experiments/quick/replay_divergence.py [--partial DIR] [--out FILE]

The default partial folder is the confirmation's (under runs/, not committed); on another machine,
retrain the run to its last completed epoch first (``classrobust train`` with the run's
``config.json``, stopped after that epoch), since the replay starts from the saved state.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from classrobust.training import loop
from classrobust.training.config import TrainConfig
from classrobust.training.methods.trades import kl_per_sample

ROOT = Path(__file__).resolve().parents[2]
PARTIAL = ROOT / "runs/experiments/quick-defenses/runs/fashion-mnist/trades+wat-e03/.seed1.partial"
RECORD = ROOT / "docs" / "results" / "divergence-trades-wat-e03-seed1.json"
VARIANTS = ("as-run", "fp32", "unit-weights", "clip10", "other-start")


class _Stop(Exception):
    pass


def _restored(partial: Path, scratch: Path):
    """The run of ``partial`` (a ``.NAME.partial`` folder), restored from its state in a scratch copy."""
    stage = scratch / ".run.partial"
    shutil.copytree(partial, stage)
    config = TrainConfig.from_dict(json.loads((stage / "config.json").read_text()))
    run = loop._prepare(config, scratch / "run", None, False)
    _, step, epoch, _ = loop._restore(run, True, lambda _: None)
    return run, step, epoch


def _spike_parts(run, x, y, loss, logits_adv, beta: float) -> dict[str, float]:
    """Gradient norm of the spiking batch's loss and its parts (mean clean CE, mean KL(clean || adv))."""
    grads = torch.autograd.grad(loss, list(run.net.parameters()), retain_graph=True)
    with torch.no_grad():
        clean = F.log_softmax(run.net(x).float(), dim=1)
        kl = kl_per_sample(clean, F.log_softmax(logits_adv.detach().float(), dim=1))
        ce = F.nll_loss(clean, y)
    return {"grad_norm": math.sqrt(sum(float(g.float().norm()) ** 2 for g in grads)), "mean_clean_ce": float(ce),
            "mean_kl": float(kl.mean()), "beta": beta}


def replay(partial: Path, variant: str, until: int, spike: float) -> dict:
    """One variant's replay from the kept state to step ``until`` (or the first non-finite loss)."""
    with tempfile.TemporaryDirectory() as scratch:
        run, step, epoch = _restored(partial, Path(scratch))
        if variant == "fp32":
            run.method.precision = "fp32"
        elif variant == "unit-weights":
            terms = run.levers.per_class
            run.levers.per_class = lambda: {k: np.ones_like(v) for k, v in terms().items()}
        elif variant == "clip10":
            run.config = replace(run.config, grad_clip=10.0)
        loss_of = run.method.loss
        losses: list[float] = []
        parts: dict = {}

        def recorded(model, x, y, **kwargs):
            if variant == "other-start":
                kwargs["seed"] += 17
            loss, logits = loss_of(model, x, y, **kwargs)
            losses.append(float(loss.detach()))
            if variant == "as-run" and not parts and losses[-1] > spike:
                parts.update(step=step + len(losses) - 1, loss=losses[-1],
                             **_spike_parts(run, x, y, loss, logits, run.method.beta))
            if step + len(losses) >= until or not math.isfinite(losses[-1]):
                raise _Stop
            return loss, logits

        run.method.loss = recorded
        try:
            loop._train_epoch(run, epoch, step, False)
        except _Stop:
            pass
    values = np.array(losses)
    finite = np.isfinite(values)
    return {"variant": variant, "epoch": epoch, "first_step": step, "last_step": step + len(values) - 1,
            "finite": bool(finite.all()),
            "first_nonfinite_step": None if finite.all() else step + int(np.argmin(finite)),
            "median_loss": float(np.median(values[finite])),
            "max_finite_loss": float(values[finite].max()),
            "max_at_step": step + int(np.argmax(np.where(finite, values, -1))),
            "steps_above_spike": [step + int(i) for i in np.flatnonzero(finite & (values > spike))],
            "losses_from_first_spike": [float(v) if math.isfinite(v) else None  # None: NaN or infinite
                                        for v in values[int(np.argmax((values > spike) | ~finite)):][:8]]
            if ((values > spike) | ~finite).any() else [],
            **({"spike": parts} if parts else {})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partial", type=Path, default=PARTIAL, help="the diverged run's .NAME.partial folder")
    parser.add_argument("--until", type=int, default=2260, help="replay up to this optimiser step")
    parser.add_argument("--spike", type=float, default=3.0, help="a batch loss above this counts as a spike")
    parser.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=RECORD)
    args = parser.parse_args()
    if not (args.partial / loop.STATE).is_file():
        print(f"replay_divergence: no kept state in {args.partial} (see the docstring)", file=sys.stderr)
        return 2
    record = {"partial": str(args.partial.relative_to(ROOT) if args.partial.is_relative_to(ROOT) else args.partial),
              "until": args.until, "spike": args.spike, "torch": torch.__version__,
              "variants": [replay(args.partial, v, args.until, args.spike) for v in args.variants]}
    for r in record["variants"]:
        print(f"{r['variant']}: steps {r['first_step']}-{r['last_step']}, finite {r['finite']}, "
              f"max loss {r['max_finite_loss']:.3g} at step {r['max_at_step']}, spikes at {r['steps_above_spike'][:6]}")
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
