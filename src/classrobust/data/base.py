"""Dataset metadata and the in-memory image dataset every builder returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from classrobust.errors import UsageError


@dataclass(frozen=True)
class ThreatModel:
    """A dataset's default threat models (images in [0, 1]): the L-inf budget ``eps`` with the
    step size experiment files use for it, and the L2 radius ``eps_l2`` that L2 attacks (``pgd-l2``,
    ``autoattack:norm=l2``) take by default. Sources and choices: docs/attacks.md."""

    eps: float
    step_size: float
    eps_l2: float = 0.5
    norm: str = "linf"


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: class names, input shape, default threat model, normalisation."""

    name: str
    classes: tuple[str, ...]
    input_shape: tuple[int, int, int]  # (C, H, W)
    threat_model: ThreatModel
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: tuple[str, ...] = ("train", "test")

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ClassificationDataset(Dataset):
    """What every dataset split offers: labels, metadata, original indices and stratified subsets.

    ``.indices`` holds each sample's index in the original split, so a subset still names
    its samples by their place in the full test set. ``ds[list_of_positions]`` returns a
    whole batch, which is what :func:`classrobust.data.make_loader` uses.
    """

    def __init__(self, targets: torch.Tensor, info: DatasetInfo, split: str, indices: torch.Tensor | None = None):
        self.targets = torch.as_tensor(targets).long()
        self.info = info
        self.split = split
        self.indices = torch.arange(len(self.targets)) if indices is None else torch.as_tensor(indices).long()

    @property
    def classes(self) -> list[str]:
        return list(self.info.classes)

    @property
    def threat_model(self) -> ThreatModel:
        return self.info.threat_model

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, positions) -> "ClassificationDataset":
        """The samples at ``positions`` (positions in this dataset, not original indices)."""
        raise NotImplementedError


class ImageTensorDataset(ClassificationDataset):
    """Images held in memory as uint8 ``(N, C, H, W)``, served as float in [0, 1].

    ``ds[i]`` gives ``(x: (C, H, W) float32 in [0, 1], y: int)``; ``ds[indices]``
    with a list or 1-D tensor of indices gives a whole batch ``(x: (B, C, H, W), y: (B,))``
    in one tensor operation.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, info: DatasetInfo,
                 split: str, indices: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be uint8 (N, C, H, W)")
        if targets.shape != (images.shape[0],):
            raise ValueError("targets must be (N,) and match images")
        super().__init__(targets, info, split, indices)
        self.images = images

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.images[index].float().div_(255), int(self.targets[index])
        index = torch.as_tensor(index, dtype=torch.long)
        return self.images[index].float().div_(255), self.targets[index]

    def subset(self, positions: torch.Tensor | np.ndarray | list[int]) -> "ImageTensorDataset":
        positions = torch.as_tensor(positions, dtype=torch.long)
        return ImageTensorDataset(self.images[positions], self.targets[positions], self.info,
                                  self.split, self.indices[positions])


def stratified_positions(targets: torch.Tensor, n: int, num_classes: int, seed: int) -> torch.Tensor:
    """Positions of a class-stratified sample of ``n`` items, as equal per class as the data allows.

    Deterministic for a given seed; sorted so the subset keeps dataset order.
    """
    if n < 1:
        raise UsageError(f"subset size must be >= 1, got {n}")
    targets = torch.as_tensor(targets)
    if n >= len(targets):
        return torch.arange(len(targets))
    gen = torch.Generator().manual_seed(seed)
    by_class = [torch.nonzero(targets == c).flatten() for c in range(num_classes)]
    by_class = [idx[torch.randperm(len(idx), generator=gen)] for idx in by_class]
    counts = [0] * num_classes
    remaining = n
    # Water-filling: give each class an equal share, then hand out what small classes leave.
    while remaining > 0:
        open_classes = [c for c in range(num_classes) if counts[c] < len(by_class[c])]
        share, extra = divmod(remaining, len(open_classes))
        for rank, c in enumerate(open_classes):
            take = min(share + (1 if rank < extra else 0), len(by_class[c]) - counts[c])
            counts[c] += take
            remaining -= take
    chosen = torch.cat([by_class[c][: counts[c]] for c in range(num_classes)])
    return chosen.sort().values


def stratified_split(targets: torch.Tensor, fraction: float, num_classes: int, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split positions into (train, held-out) with ``fraction`` of every class held out."""
    if not 0 < fraction < 1:
        raise UsageError(f"validation fraction must be in (0, 1), got {fraction}")
    targets = torch.as_tensor(targets)
    gen = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = int(round(fraction * len(idx)))
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values
