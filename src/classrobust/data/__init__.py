"""Datasets: ``get_dataset(name, split)`` returns images in [0, 1] with class names and a threat model.

Adding a dataset is one builder plus one ``DATASETS.register`` line.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from classrobust.data.base import (ClassificationDataset, DatasetInfo, ImageTensorDataset, ThreatModel,
                                   stratified_positions, stratified_split)
from classrobust.data.folder import (FOLDER_PREFIX, IMAGENET, ImageFolderDataset, folder_info, load_folder,
                                     load_imagenet)
from classrobust.data.mnist_like import FASHION_MNIST, MNIST, load_mnist_like
from classrobust.data.torchvision_sets import CIFAR10, CIFAR100, STL10, SVHN, load_torchvision
from classrobust.errors import UsageError
from classrobust.registry import Registry

DATASETS: Registry[Dataset] = Registry("dataset")

DEFAULT_DATA_DIR = Path(os.environ.get("CLASSROBUST_DATA_DIR", "~/.cache/classrobust/data")).expanduser()


def _register(info: DatasetInfo, loader, summary: str) -> None:
    def build(split: str, root: Path, download: bool = False) -> ImageTensorDataset:
        return loader(info, split, root, download)

    DATASETS.register(info.name, info=info, summary=summary)(build)


_register(FASHION_MNIST, load_mnist_like, "Fashion-MNIST, 10 clothing classes, 28x28 grey (default; eps 0.1)")
_register(MNIST, load_mnist_like, "MNIST digits, 28x28 grey (eps 0.3)")
_register(CIFAR10, load_torchvision, "CIFAR-10, 32x32 colour (eps 8/255; --download)")
_register(CIFAR100, load_torchvision, "CIFAR-100 fine labels, 32x32 colour (eps 8/255; --download)")
_register(SVHN, load_torchvision, "SVHN digits, 32x32 colour (eps 8/255; --download)")
_register(STL10, load_torchvision, "STL-10 labelled splits, 96x96 colour (eps 8/255; --download)")
_register(IMAGENET, load_imagenet, "ImageNet-1k from ROOT/imagenet/{train,val}/<wnid>/ (224x224, eps 4/255)")
# ``folder:PATH`` is not a registry entry (its metadata comes from the tree); see get_dataset_info.


def get_dataset_info(name: str) -> DatasetInfo:
    """Metadata of a registry dataset or of an image tree named ``folder:PATH``."""
    if name.startswith(FOLDER_PREFIX):
        return folder_info(name)
    return DATASETS.get(name).info


def get_dataset(name: str, split: str, root: str | os.PathLike | None = None,
                download: bool = False) -> ClassificationDataset:
    """A dataset split as images ``(C, H, W)`` float in [0, 1] with int labels.

    Args:
        name: registry name, e.g. ``"fashion-mnist"``, or ``"folder:PATH"`` for an ImageFolder tree.
        split: ``"train"`` or ``"test"``. Validation splits are carved out of
            ``"train"`` by :func:`train_val_split`, never out of ``"test"``.
        root: data directory (default ``~/.cache/classrobust/data`` or ``$CLASSROBUST_DATA_DIR``).
        download: allow fetching missing files (off by default: nothing touches
            the network unless asked).

    The result has ``.classes`` (class names), ``.info`` (:class:`DatasetInfo`)
    and ``.threat_model`` (the dataset's default eps and step size).
    """
    info = get_dataset_info(name)
    if split not in info.splits:
        raise UsageError(f"dataset {name!r} has no split {split!r}; choose one of: {', '.join(info.splits)}")
    root = Path(root).expanduser() if root is not None else DEFAULT_DATA_DIR
    if name.startswith(FOLDER_PREFIX):
        return load_folder(info, split, root, download)
    return DATASETS.build(name, split, root, download=download)


def train_val_split(train: ClassificationDataset, val_fraction: float = 0.1, seed: int = 0
                    ) -> tuple[ClassificationDataset, ClassificationDataset]:
    """Stratified (train, validation) split of the training set."""
    tr, va = stratified_split(train.targets, val_fraction, train.info.num_classes, seed)
    return train.subset(tr), train.subset(va)


def without_classes(ds: ClassificationDataset, names: tuple[str, ...] | list[str]) -> ClassificationDataset:
    """``ds`` without the samples of the named classes (the model keeps all outputs)."""
    unknown = [n for n in names if n not in ds.classes]
    if unknown:
        raise UsageError(f"cannot drop unknown class(es) {', '.join(map(repr, unknown))}; "
                         f"{ds.info.name} has: {', '.join(ds.classes)}")
    if len(set(names)) >= len(ds.classes) - 1:
        raise UsageError("dropping these classes leaves fewer than two to train on")
    dropped = torch.tensor([ds.classes.index(n) for n in names])
    return ds.subset(torch.nonzero(~torch.isin(ds.targets, dropped)).flatten())


def run_splits(config, root: str | os.PathLike | None = None, download: bool = False, *,
               val_size: int | None = None) -> tuple[ClassificationDataset, ClassificationDataset]:
    """The (training, validation) sets of a training run, both carved out of the training split.

    ``config`` is a :class:`~classrobust.training.TrainConfig` (or anything with its ``dataset``,
    ``val_fraction``, ``seed``, ``drop_classes``, ``train_subset`` and ``val_size``): the training
    loop and the calibration of its checkpoint read the same validation images through this one
    function, never the test split. ``val_size`` overrides the config's validation subset size.
    """
    full = get_dataset(config.dataset, "train", root=root, download=download)
    train, val = train_val_split(full, config.val_fraction, seed=config.seed)
    if config.drop_classes:
        train, val = without_classes(train, config.drop_classes), without_classes(val, config.drop_classes)
    if config.train_subset is not None:
        train = stratified_subset(train, config.train_subset, seed=config.seed)
    return train, stratified_subset(val, config.val_size if val_size is None else val_size, seed=config.seed)


def stratified_subset(ds: ClassificationDataset, n: int, seed: int = 0) -> ClassificationDataset:
    """A class-stratified subset of ``n`` samples (all of ``ds`` if ``n >= len(ds)``)."""
    return ds.subset(stratified_positions(ds.targets, n, ds.info.num_classes, seed))


class _ShardOfBatches:
    """Each global batch of ``batches`` cut to one process's share, ``batch[rank::size]``: under
    torchrun every process reads (and a folder dataset decodes) only its own images, in the
    order the global batch gives them."""

    def __init__(self, batches, rank: int, size: int):
        self.batches, self.rank, self.size = batches, rank, size

    def __iter__(self):
        for batch in self.batches:
            yield batch[self.rank::self.size]

    def __len__(self) -> int:
        return len(self.batches)


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, num_workers: int = 0, shard: tuple[int, int] | None = None,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader serving a whole batch per index call (no per-item collate).

    Folder datasets decode a batch per call; ``num_workers > 0`` decodes batches in parallel.
    ``shard=(rank, size)``: this process's share ``[rank::size]`` of every global batch of
    ``batch_size`` (the global order is the same in every process). ``pin_memory``: page-locked
    batches, for asynchronous copies to a GPU.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    if isinstance(ds, ClassificationDataset):
        from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

        base = RandomSampler(ds, generator=gen) if shuffle else SequentialSampler(ds)
        sampler = BatchSampler(base, batch_size, drop_last)
        if shard is not None and shard[1] > 1:
            sampler = _ShardOfBatches(sampler, *shard)
        return DataLoader(ds, sampler=sampler, batch_size=None, num_workers=num_workers, pin_memory=pin_memory)
    if shard is not None and shard[1] > 1:
        raise UsageError("sharded loading needs a classrobust dataset (ClassificationDataset)")
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      drop_last=drop_last, num_workers=num_workers, pin_memory=pin_memory)


__all__ = ["DATASETS", "ClassificationDataset", "DatasetInfo", "ImageTensorDataset", "ImageFolderDataset", "ThreatModel", "get_dataset",
           "get_dataset_info", "train_val_split", "stratified_subset", "make_loader", "run_splits", "without_classes"]
