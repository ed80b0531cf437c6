"""Run a model against attacks on a loader and keep per-sample, per-class results."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # not tqdm.auto: its asyncio class calls iter() on the loader when built (#17)

from classrobust.attacks.autoattack import AutoAttack, CascadeRecord
from classrobust.attacks.base import Attack, output_scale_warning
from classrobust.attacks.minimal import MinimalNormAttack
from classrobust.errors import UsageError
from classrobust.runtime import fast_layout, fast_weights, model_mode
from classrobust.models import final_linear
from classrobust.results import CLEAN, AttackResult, ClasswiseResult


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted classes in fp32 eval mode (how the model is deployed), x: (N, C, H, W) in [0, 1]."""
    return model(fast_layout(x)).argmax(dim=1)


def check_labels(y: torch.Tensor, num_classes: int) -> None:
    """Refuse labels outside [0, num_classes) in one line (two host reads: call once per batch)."""
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise UsageError(f"labels must lie in [0, {num_classes}); got {int(y.min())}..{int(y.max())}")


def worst_case_predictions(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor,
                           clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The per-point worst case of one attack on one batch: ``(predictions (B,), distances (B,) or None)``.

    x: (B, C, H, W) in [0, 1]; y: (B,); clean: (B,) the clean predictions. The attack runs only on
    the points classified correctly; a clean error keeps its clean prediction (distance 0). A
    minimal-norm attack also gives each point's smallest adversarial distance (inf: none found),
    and its prediction is taken at that point if it lies within eps, else at x. ``model`` in eval mode.
    """
    pred, dist, _ = _worst_case(model, attack, x, y, clean)
    return pred, dist


def _worst_case(model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor | None, CascadeRecord | None]:
    """:func:`worst_case_predictions`, and for AutoAttack its cascade's record over the whole batch
    (``breaker`` -1 for clean errors and points no member broke; ``x_adv`` not kept)."""
    correct = clean == y
    pred = clean.clone()
    minimal = isinstance(attack, MinimalNormAttack)
    dist = torch.zeros(len(y), device=x.device) if minimal else None
    record = None
    if correct.any():
        if minimal:
            x_min, dist[correct] = attack.minimal(x[correct], y[correct])
            x_adv = attack.at_radius(x[correct], x_min, dist[correct])
        elif isinstance(attack, AutoAttack):  # which member broke each point, and what each cost
            record = attack.cascade(x[correct], y[correct])
            x_adv = record.x_adv
        else:
            x_adv = attack(x[correct], y[correct])
        pred[correct] = predict(model, x_adv)
    if isinstance(attack, AutoAttack):  # per point of the batch: -1 where no member broke it (or clean error)
        breaker = torch.full((len(y),), -1, dtype=torch.long, device=x.device)
        if record is not None:
            breaker[correct] = record.breaker
        seconds = record.seconds if record is not None else dict.fromkeys(attack.members, 0.0)
        points = record.points if record is not None else dict.fromkeys(attack.members, 0)
        record = CascadeRecord(None, breaker, seconds, points)
    return pred, dist, record


def progress_lines(batches: Iterable, total: int | None, what: str = "evaluate") -> Iterator:
    """``batches`` unchanged, with one line on stderr per tenth of ``total`` done: the progress
    report when stderr is not a terminal (a log file or CI gets ten short lines, not a bar)."""
    t0 = time.perf_counter()
    shown = 0
    for i, batch in enumerate(batches, 1):
        yield batch
        if total and i * 10 // total > shown:
            shown = i * 10 // total
            print(f"{what}: {100 * i // total}% ({i}/{total} batches, {time.perf_counter() - t0:.0f}s)",
                  file=sys.stderr, flush=True)


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's memory as bytes (any dtype), for hashing."""
    return tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


class BatchCache:
    """Finished batches of an evaluation, kept in ``folder`` so that a killed evaluation continues
    where it stopped: each batch's labels, predictions, distances and seconds, under a key of
    everything that decides them (the model's weights, the attacks' settings, the classes, the
    batch's place). Attacks are per-sample deterministic (keyed noise), so a continued evaluation
    gives the uninterrupted one's predictions. A folder made for another key is emptied (it holds
    only files this class wrote); the caller deletes it once the result is saved."""

    KEY = "key.json"

    def __init__(self, folder: str | Path, model: nn.Module, attacks: Mapping[str, Attack], classes: list[str]):
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(_raw_bytes(tensor))
        self.key = {"weights_sha256": digest.hexdigest(), "classes": list(classes),
                    "attacks": {name: attack.config() for name, attack in attacks.items()}}
        self.folder = Path(folder)
        key_path = self.folder / self.KEY
        if self.folder.is_dir() and any(self.folder.iterdir()) and not key_path.is_file():
            raise UsageError(f"{str(self.folder)!r} holds files that classrobust did not write there; move them "
                             "away (an evaluation keeps its finished batches there)")
        if self.folder.is_dir() and key_path.is_file() and json.loads(key_path.read_text()) != self.key:
            for stale in self.folder.glob("batch*.pt"):
                stale.unlink()
        self.folder.mkdir(parents=True, exist_ok=True)
        from classrobust.io import atomic_write_json

        atomic_write_json(key_path, self.key)
        self.done = len(list(self.folder.glob("batch*.pt")))

    @staticmethod
    def fingerprint(x: torch.Tensor, y: torch.Tensor) -> str:
        """The batch's images and labels, hashed: a batch is taken from the cache only if it is the same."""
        digest = hashlib.sha256(_raw_bytes(x))
        digest.update(_raw_bytes(y))
        return digest.hexdigest()

    def load(self, index: int, fingerprint: str) -> dict[str, Any] | None:
        path = self.folder / f"batch{index:06d}.pt"
        if not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
        return saved if saved.get("fingerprint") == fingerprint else None  # other images: attack them

    def save(self, index: int, entry: dict[str, Any], fingerprint: str) -> None:
        import io

        from classrobust.io import atomic_write_bytes

        buffer = io.BytesIO()
        torch.save({**entry, "fingerprint": fingerprint}, buffer)
        atomic_write_bytes(self.folder / f"batch{index:06d}.pt", buffer.getvalue())


def evaluate_classwise(model: nn.Module, loader: Iterable, attacks: Mapping[str, Attack], *,
                       classes: list[str] | None = None, device: str | torch.device | None = None,
                       progress: bool = True, meta: dict[str, Any] | None = None,
                       resume_dir: str | Path | None = None) -> ClasswiseResult:
    """Clean and adversarial per-sample predictions, from which every per-class number derives.

    Args:
        model: ``model(x in [0, 1]) -> logits (N, K)``; evaluated in eval mode, its mode restored.
        loader: yields ``(x: (B, C, H, W) in [0, 1], y: (B,))`` in a fixed order. If
            ``loader.dataset.indices`` exists, it names each sample's index in the test split.
        attacks: name -> attack built on ``model``. Each attack runs only on the
            points the model classifies correctly; a point already misclassified
            keeps its clean prediction (the per-point worst case). A minimal-norm attack
            (:class:`~classrobust.attacks.MinimalNormAttack`) also records each point's smallest
            adversarial distance (0 for clean errors, inf where none was found); its prediction
            is taken at its smallest adversarial point if that lies within eps, else at x.
        classes: class names (default: ``loader.dataset.classes``).
        resume_dir: keep each finished batch there (:class:`BatchCache`) and take the batches an
            interrupted evaluation with the same model and attacks left there instead of attacking
            them again.
    """
    if CLEAN in attacks:
        raise UsageError("'clean' is reserved for the unattacked model")
    dataset = getattr(loader, "dataset", None)
    classes = list(classes if classes is not None else getattr(dataset, "classes", []))
    if not classes:
        raise UsageError("evaluate_classwise needs class names (pass classes=...)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    k = len(classes)
    labels, preds = [], {name: [] for name in (CLEAN, *attacks)}
    distances = {name: [] for name, a in attacks.items() if isinstance(a, MinimalNormAttack)}
    breakers = {name: [] for name, a in attacks.items() if isinstance(a, AutoAttack)}
    member_stats = {name: {m: {"seconds": 0.0, "points": 0} for m in attacks[name].members} for name in breakers}
    seconds = dict.fromkeys(preds, 0.0)
    cache = BatchCache(resume_dir, model, attacks, classes) if resume_dir is not None else None
    scale_warning = None
    if cache is not None and cache.done and progress:
        print(f"evaluate: continuing an interrupted evaluation ({cache.done} batches done)", file=sys.stderr)
    with model_mode(model, False), fast_weights(model):  # attacks inside find it already converted
        # a bar on a terminal; elsewhere (a log file, CI) a line per tenth of the batches
        if progress and not sys.stderr.isatty():
            batches = progress_lines(loader, len(loader) if hasattr(loader, "__len__") else None)
        else:
            batches = tqdm(loader, desc="evaluate", disable=None if progress else True, leave=False)
        for index, (x, y) in enumerate(batches):
            if index == 0:  # one forward pass: do the outputs look like logits the verdicts fit?
                with torch.no_grad():
                    scale_warning = output_scale_warning(model(fast_layout(x.to(device))))
            fingerprint = BatchCache.fingerprint(x, y) if cache is not None else ""
            entry = cache.load(index, fingerprint) if cache is not None else None
            if entry is None:
                entry = _attack_batch(model, attacks, x.to(device), y.to(device), k)
                if cache is not None:
                    cache.save(index, entry, fingerprint)
            labels.append(entry["labels"])
            for name in preds:
                preds[name].append(entry["preds"][name])
                seconds[name] += entry["seconds"][name]
            for name in distances:
                distances[name].append(entry["distances"][name])
            for name in breakers:
                breakers[name].append(entry["breakers"][name])
                for member, (secs, points) in entry["members"][name].items():
                    member_stats[name][member]["seconds"] += secs
                    member_stats[name][member]["points"] += int(points)
    if not labels:
        raise UsageError("the loader yielded no samples")
    y_all = torch.cat(labels).numpy().astype(np.int64)
    indices = getattr(dataset, "indices", None)
    indices = np.asarray(indices) if indices is not None and len(indices) == len(y_all) else np.arange(len(y_all))
    meta = dict(meta or {})
    if scale_warning:
        meta["output_warning"] = scale_warning
    head = _classifier_head(model, k)
    if head is not None:  # per-class weight norms, for the weight-norm analysis (no model needed later)
        meta["classifier_weight_norms"] = head.weight.detach().float().norm(dim=1).cpu().tolist()
    results = {}
    for name, chunks in preds.items():
        config = {"attack": CLEAN} if name == CLEAN else attacks[name].config()
        dist = torch.cat(distances[name]).numpy().astype(np.float64) if name in distances else None
        results[name] = AttackResult(name, y_all, torch.cat(chunks).numpy().astype(np.int64), k,
                                     config, seconds[name], dist)
        if name in breakers:
            results[name].breakers = torch.cat(breakers[name]).numpy().astype(np.int64)
            results[name].member_stats = {m: {"seconds": round(v["seconds"], 3), "points": v["points"]}
                                          for m, v in member_stats[name].items()}
    return ClasswiseResult(classes, indices, y_all, results, meta)


def _attack_batch(model: nn.Module, attacks: Mapping[str, Attack], x: torch.Tensor, y: torch.Tensor,
                  k: int) -> dict[str, Any]:
    """One batch's labels, clean and per-attack predictions, distances and seconds (on the CPU)."""
    check_labels(y, k)
    entry: dict[str, Any] = {"labels": y.cpu(), "preds": {}, "seconds": {}, "distances": {}, "breakers": {},
                             "members": {}}
    # each clock stops after the copy to the host: on a GPU the kernels run asynchronously, and a clock
    # stopped before the copy would charge this attack's work to the next one
    t0 = time.perf_counter()
    clean = predict(model, x)
    entry["preds"][CLEAN] = clean.cpu()
    entry["seconds"][CLEAN] = time.perf_counter() - t0
    for name, attack in attacks.items():
        t0 = time.perf_counter()
        pred, dist, record = _worst_case(model, attack, x, y, clean)
        entry["preds"][name] = pred.cpu()
        if dist is not None:
            entry["distances"][name] = dist.cpu()
        if record is not None:
            entry["breakers"][name] = record.breaker.cpu()
            entry["members"][name] = {m: [record.seconds[m], record.points[m]] for m in record.seconds}
        entry["seconds"][name] = time.perf_counter() - t0
    return entry


def _classifier_head(model: nn.Module, num_classes: int) -> nn.Linear | None:
    """The final linear layer, if the model ends in one with a row per class."""
    try:
        head = final_linear(model)
    except ValueError:
        return None
    return head if head.out_features == num_classes else None
