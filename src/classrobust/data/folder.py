"""Image-folder datasets: ImageNet (``ROOT/imagenet/{train,val}/<wnid>/*.JPEG``) and ``folder:PATH``.

Both read an ImageFolder tree (one sub-directory per class, sorted names give the class
indices) lazily: only file paths and labels are held in memory and images are decoded
when a batch is drawn, so ImageNet's 1.28 M training images need no preprocessing step.
Every image is resized (shorter side) and centre-cropped to the dataset's input shape.

Choices, documented in the README:
  * ``imagenet``: the labelled ``val/`` directory serves as the ``test`` split (ImageNet's
    test labels are not public); it must already be in class sub-directories. Class names
    are the human-readable ImageNet-1k names shipped with torchvision, in the standard order.
  * ``folder:PATH``: if PATH has ``train/`` and ``test/`` (or ``val/``) sub-directories, those
    are the splits; otherwise PATH itself is the ``test`` split (an audit set). The input
    shape is the first test image's size (colour unless every probed image is grey); the
    threat model defaults to L-inf 8/255 with step 2/255 (override with --eps).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from classrobust.data.base import ClassificationDataset, DatasetInfo, ThreatModel
from classrobust.errors import DataNotFoundError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FOLDER_THREAT = ThreatModel(eps=8 / 255, step_size=2 / 255, eps_l2=0.5)


class ImageFolderDataset(ClassificationDataset):
    """Images decoded from files on access, resized and centre-cropped to ``info.input_shape``.

    ``ds[i]`` gives ``(x: (C, H, W) float32 in [0, 1], y: int)``; a list of indices gives a batch.
    """

    def __init__(self, files: list[str], targets: torch.Tensor, info: DatasetInfo, split: str,
                 indices: torch.Tensor | None = None, resize: int | None = None):
        super().__init__(targets, info, split, indices)
        if len(files) != len(self.targets):
            raise ValueError("files and targets must have the same length")
        self.files = list(files)
        self.resize = resize  # shorter side before the crop; None: straight to (H, W)

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, position: int) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms import functional as F

        c, h, w = self.info.input_shape
        try:
            with Image.open(self.files[position]) as img:
                img = img.convert("L" if c == 1 else "RGB")
                if self.resize is not None:
                    img = F.resize(img, self.resize, antialias=True)
                    img = F.center_crop(img, [h, w])
                elif img.size != (w, h):
                    img = F.resize(img, [h, w], antialias=True)
                return F.pil_to_tensor(img)
        except OSError as exc:
            raise DataNotFoundError(f"cannot read image {self.files[position]}: {exc}") from None

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self._load(int(index)).float().div_(255), int(self.targets[index])
        positions = torch.as_tensor(index, dtype=torch.long)
        batch = torch.stack([self._load(int(p)) for p in positions])
        return batch.float().div_(255), self.targets[positions]

    def subset(self, positions) -> "ImageFolderDataset":
        positions = torch.as_tensor(positions, dtype=torch.long)
        return ImageFolderDataset([self.files[int(p)] for p in positions], self.targets[positions], self.info,
                                  self.split, self.indices[positions], self.resize)


def scan_tree(directory: Path) -> tuple[list[str], list[str], list[int]]:
    """(class directory names sorted, image files, labels) of an ImageFolder tree."""
    if not directory.is_dir():
        raise DataNotFoundError(f"{directory} is not a directory")
    classes = sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataNotFoundError(f"{directory} has no class sub-directories (expected {directory}/<class>/<image>)")
    files, labels = [], []
    for k, name in enumerate(classes):
        found = sorted(str(p) for p in (directory / name).rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        files.extend(found)
        labels.extend([k] * len(found))
    if not files:
        raise DataNotFoundError(f"{directory} has class directories but no images "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
    return classes, files, labels


# -- imagenet -------------------------------------------------------------------
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 human-readable ImageNet-1k names in the standard (sorted-wnid) order, from torchvision."""
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


IMAGENET = DatasetInfo("imagenet", imagenet_classes(), (3, 224, 224), ThreatModel(eps=4 / 255, step_size=1 / 255, eps_l2=3.0),
                       _IMAGENET_MEAN, _IMAGENET_STD)
_IMAGENET_DIRS = {"train": "train", "test": "val"}


def load_imagenet(info: DatasetInfo, split: str, root: Path, download: bool) -> ImageFolderDataset:
    target = root / "imagenet" / _IMAGENET_DIRS[split]
    if download:
        raise DataNotFoundError("ImageNet cannot be downloaded automatically (its licence requires a login); "
                                f"place it at {root / 'imagenet'}/{{train,val}}/<wnid>/*.JPEG")
    if not target.is_dir():
        raise DataNotFoundError(f"imagenet {split} not found: expected {target}/<wnid>/*.JPEG (an ImageFolder "
                                f"tree, val/ sorted into class directories); ImageNet is never downloaded")
    classes, files, labels = scan_tree(target)
    if len(classes) != len(info.classes):
        raise DataNotFoundError(f"{target} has {len(classes)} class directories; ImageNet-1k has "
                                f"{len(info.classes)} (use folder:{target.parent} for other trees)")
    return ImageFolderDataset(files, torch.tensor(labels), info, split, resize=256)


# -- folder:PATH ----------------------------------------------------------------
FOLDER_PREFIX = "folder:"


def folder_split_dirs(path: Path) -> dict[str, Path]:
    """The split directories of a ``folder:PATH`` tree (see the module docstring)."""
    test = next((path / d for d in ("test", "val") if (path / d).is_dir()), None)
    if (path / "train").is_dir() and test is not None:
        return {"train": path / "train", "test": test}
    return {"test": path}


@functools.lru_cache(maxsize=32)
def folder_info(name: str) -> DatasetInfo:
    """Metadata of ``folder:PATH``, read from the tree (class names and the first test image's shape)."""
    from PIL import Image

    path = Path(name[len(FOLDER_PREFIX):]).expanduser()
    if not path.is_dir():
        raise DataNotFoundError(f"dataset {name!r}: {path} is not a directory "
                                "(expected an ImageFolder tree PATH/<class>/<image>, or PATH/{train,test}/<class>/)")
    splits = folder_split_dirs(path)
    classes, files, _ = scan_tree(splits["test"])
    if "train" in splits:
        train_classes = scan_tree(splits["train"])[0]
        if train_classes != classes:
            only_train = sorted(set(train_classes) - set(classes))
            only_test = sorted(set(classes) - set(train_classes))
            raise DataNotFoundError(f"{splits['train']} and {splits['test']} have different class directories"
                                    + (f"; only in train: {', '.join(only_train)}" if only_train else "")
                                    + (f"; only in test: {', '.join(only_test)}" if only_test else "")
                                    + ("" if only_train or only_test else " (the same names in another order)"))
    grey = True
    for f in files[:: max(1, len(files) // 16)][:16]:  # a sample decides the channels
        with Image.open(f) as img:
            grey &= img.mode in ("L", "1", "I;16", "I")
    with Image.open(files[0]) as img:
        w, h = img.size
    channels = 1 if grey else 3
    mean, std = (0.5,) * channels, (0.5,) * channels  # a neutral normalisation, inside the model
    return DatasetInfo(name, tuple(classes), (channels, h, w), FOLDER_THREAT, mean, std,
                       splits=tuple(s for s in ("train", "test") if s in splits))


def load_folder(info: DatasetInfo, split: str, root: Path, download: bool) -> ImageFolderDataset:
    path = Path(info.name[len(FOLDER_PREFIX):]).expanduser()
    classes, files, labels = scan_tree(folder_split_dirs(path)[split])
    if tuple(classes) != info.classes:
        raise DataNotFoundError(f"{path} changed since it was read: its classes differ")
    return ImageFolderDataset(files, torch.tensor(labels), info, split)
