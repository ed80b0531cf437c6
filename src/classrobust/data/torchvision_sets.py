"""CIFAR-10, CIFAR-100 (fine labels), SVHN and STL-10 (labelled splits) through torchvision.

Images are read once into memory as uint8 (N, C, H, W). Nothing is downloaded unless
``download=True`` (the CLI's ``--download``); a missing dataset stops with a message naming
what is expected where.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from classrobust.data.base import DatasetInfo, ImageTensorDataset, ThreatModel
from classrobust.errors import DataNotFoundError

_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
EPS_8 = ThreatModel(eps=8 / 255, step_size=2 / 255, eps_l2=0.5)
#: STL-10's 96x96 images: the 32x32 radius scaled by the square root of the pixel ratio (our choice)
EPS_8_STL = ThreatModel(eps=8 / 255, step_size=2 / 255, eps_l2=1.5)

CIFAR10 = DatasetInfo("cifar10", ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                  "ship", "truck"), (3, 32, 32), EPS_8, _CIFAR_MEAN, _CIFAR_STD)
SVHN = DatasetInfo("svhn", tuple(str(d) for d in range(10)), (3, 32, 32), EPS_8,
                   (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
STL10 = DatasetInfo("stl10", ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
                    (3, 96, 96), EPS_8_STL, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713))

# (torchvision class, folder torchvision creates under root, how the split is named)
_SOURCES = {"cifar10": ("CIFAR10", "cifar-10-batches-py"), "cifar100": ("CIFAR100", "cifar-100-python"),
            "svhn": ("SVHN", "{split}_32x32.mat"), "stl10": ("STL10", "stl10_binary")}


def load_torchvision(info: DatasetInfo, split: str, root: Path, download: bool) -> ImageTensorDataset:
    from torchvision import datasets

    cls_name, expected = _SOURCES[info.name]
    cls = getattr(datasets, cls_name)
    kwargs = ({"split": split} if info.name in ("svhn", "stl10") else {"train": split == "train"})
    target = root / info.name
    try:
        ds = cls(str(target), download=download, **kwargs)
    except RuntimeError as exc:  # torchvision raises RuntimeError for missing/corrupt files
        if download:
            raise DataNotFoundError(f"could not download {info.name} into {target}: {exc}") from None
        raise DataNotFoundError(
            f"{info.name} {split} not found: expected {target / expected.format(split=split)} "
            f"(torchvision's layout); pass --download to fetch it") from None
    except OSError as exc:
        raise DataNotFoundError(f"could not read {info.name} from {target}: {exc}") from None
    data = np.asarray(ds.data)
    if data.ndim == 4 and data.shape[-1] == 3:  # CIFAR stores (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    labels = np.asarray(getattr(ds, "targets", None) if hasattr(ds, "targets") else ds.labels)
    return ImageTensorDataset(torch.from_numpy(np.ascontiguousarray(data)), torch.from_numpy(labels).long(),
                              info, split)


def cifar100_info() -> DatasetInfo:

    names = ("apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
             "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
             "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
             "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
             "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road "
             "rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
             "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale "
             "willow_tree wolf woman worm").split()
    return DatasetInfo("cifar100", tuple(names), (3, 32, 32), EPS_8, (0.5071, 0.4865, 0.4409),
                       (0.2673, 0.2564, 0.2762))


CIFAR100 = cifar100_info()
