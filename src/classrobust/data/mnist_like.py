"""MNIST and Fashion-MNIST from IDX files: system package, data directory, or torchvision download."""

from __future__ import annotations

import os
from pathlib import Path


from classrobust.data.base import DatasetInfo, ImageTensorDataset, ThreatModel
from classrobust.data.idx import read_idx
from classrobust.errors import DataNotFoundError

FASHION_MNIST = DatasetInfo(
    name="fashion-mnist",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
             "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    input_shape=(1, 28, 28),
    threat_model=ThreatModel(eps=0.1, step_size=0.01, eps_l2=1.0),  # L2: our choice, docs/attacks.md
    mean=(0.2860,), std=(0.3530,),
)

MNIST = DatasetInfo(
    name="mnist",
    classes=tuple(str(d) for d in range(10)),
    input_shape=(1, 28, 28),
    threat_model=ThreatModel(eps=0.3, step_size=0.01, eps_l2=2.0),
    mean=(0.1307,), std=(0.3081,),
)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Where Debian/Ubuntu's dataset packages put the original files.
SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
               "mnist": Path("/usr/share/datasets/mnist")}
_TORCHVISION_DIRS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
#: Debian packages that ship the files (Debian has none for MNIST itself)
_APT_PACKAGES = {"fashion-mnist": "dataset-fashion-mnist"}


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def candidate_dirs(name: str, root: Path) -> list[Path]:
    """Directories searched for the IDX files, in order."""
    env = os.environ.get("CLASSROBUST_SYSTEM_DATA")  # tests point this at generated files
    system = Path(env) / name if env else SYSTEM_DIRS[name]
    return [system, root / name, root / _TORCHVISION_DIRS[name] / "raw"]


def load_mnist_like(info: DatasetInfo, split: str, root: Path, download: bool) -> ImageTensorDataset:
    images_stem, labels_stem = _FILES[split]
    for directory in candidate_dirs(info.name, root):
        images, labels = _find(directory, images_stem), _find(directory, labels_stem)
        if images and labels:
            break
    else:
        if not download:
            dirs = ", ".join(str(d) for d in candidate_dirs(info.name, root))
            raise DataNotFoundError(
                f"{info.name} {split} files ({images_stem}[.gz]) not found in {dirs}; "
                + (f"install them with `apt-get install {_APT_PACKAGES[info.name]}` (Debian/Ubuntu) or "
                   if info.name in _APT_PACKAGES else "")
                + "pass --download to fetch them with torchvision")
        images, labels = _download(info.name, root, images_stem, labels_stem)
    x = read_idx(images)
    y = read_idx(labels)
    if x.dim() != 3 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise DataNotFoundError(f"{images} and {labels} do not form an image/label pair")
    if int(y.max()) >= info.num_classes or int(y.min()) < 0:
        raise DataNotFoundError(f"{labels} has labels outside 0..{info.num_classes - 1}")
    return ImageTensorDataset(x.unsqueeze(1).contiguous(), y.long(), info, split)


def _download(name: str, root: Path, images_stem: str, labels_stem: str) -> tuple[Path, Path]:
    from torchvision import datasets

    cls = {"fashion-mnist": datasets.FashionMNIST, "mnist": datasets.MNIST}[name]
    try:
        cls(str(root), train=images_stem.startswith("train"), download=True)
    except Exception as exc:  # network errors come in many types
        raise DataNotFoundError(f"could not download {name} into {root}: {exc}") from None
    raw = root / _TORCHVISION_DIRS[name] / "raw"
    return raw / images_stem, raw / labels_stem
