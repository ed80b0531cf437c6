"""The real loaders on generated IDX files and real Fashion-MNIST; splits and subsets."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from classrobust.data import (DATASETS, get_dataset, get_dataset_info, make_loader, stratified_subset,
                              train_val_split)
from classrobust.data.idx import read_idx
from classrobust.errors import ClassrobustError, DataNotFoundError, UsageError
from conftest import require_fmnist, write_idx


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    a = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    path = tmp_path / ("x.gz" if compress else "x")
    write_idx(path, a, compress=compress)
    assert torch.equal(read_idx(path), torch.from_numpy(a))


def test_idx_truncated_and_bad_magic(tmp_path):
    a = np.zeros((5, 28, 28), np.uint8)
    write_idx(tmp_path / "x", a, compress=False)
    data = (tmp_path / "x").read_bytes()
    (tmp_path / "short").write_bytes(data[:-10])
    with pytest.raises(ClassrobustError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "bad").write_bytes(b"\x01\x02" + data[2:])
    with pytest.raises(ClassrobustError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ClassrobustError, match="cannot read IDX"):
        read_idx(tmp_path / "bad.gz")


def test_generated_files_through_real_loader(synthetic_env):
    train = get_dataset("fashion-mnist", "train")
    test = get_dataset("fashion-mnist", "test")
    assert len(train) == 600 and len(test) == 200
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    assert 0 <= float(test.images.min()) and float(x.max()) <= 1
    assert test.classes[6] == "Shirt" and len(test.classes) == 10
    assert test.threat_model.eps == 0.1


@pytest.mark.parametrize("name, package", [("fashion-mnist", "dataset-fashion-mnist"), ("mnist", None)])
def test_missing_data_message(name, package, tmp_path, monkeypatch):
    """Debian ships Fashion-MNIST (dataset-fashion-mnist) but no MNIST package: none is suggested for it."""
    monkeypatch.setenv("CLASSROBUST_SYSTEM_DATA", str(tmp_path / "nothing"))
    with pytest.raises(DataNotFoundError, match="--download") as missing:
        get_dataset(name, "test", root=tmp_path / "data")
    assert (f"apt-get install {package}" in str(missing.value)) if package else "apt-get" not in str(missing.value)


def test_unknown_dataset_and_split():
    with pytest.raises(UsageError, match=r"unknown dataset 'cifar' \(did you mean 'cifar10'\?\); choose one of: fashion-mnist, mnist"):
        get_dataset("cifar", "test")
    with pytest.raises(UsageError, match="has no split 'val'"):
        get_dataset("fashion-mnist", "val")


def test_registry_metadata():
    for entry in DATASETS:
        info = get_dataset_info(entry.name)
        assert info.num_classes == len(info.classes) == len(set(info.classes))
        assert info.num_classes == {"cifar100": 100, "imagenet": 1000}.get(entry.name, 10)
        assert len(info.mean) == len(info.std) == info.input_shape[0]
        assert 0 < info.threat_model.eps <= 0.3 and 0 < info.threat_model.step_size <= info.threat_model.eps
    assert get_dataset_info("mnist").threat_model.eps == 0.3
    assert get_dataset_info("cifar10").threat_model.eps == pytest.approx(8 / 255)
    assert get_dataset_info("cifar10").threat_model.step_size == pytest.approx(2 / 255)
    assert get_dataset_info("stl10").input_shape == (3, 96, 96)
    imagenet = get_dataset_info("imagenet")
    assert imagenet.threat_model.eps == pytest.approx(4 / 255) and imagenet.input_shape == (3, 224, 224)
    # human-readable names in the standard class order (index 0 is n01440764, the tench)
    assert imagenet.classes[0] == "tench" and imagenet.classes[1] == "goldfish"


@pytest.mark.parametrize("name, expected", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python"),
                                            ("svhn", "test_32x32.mat"), ("stl10", "stl10_binary")])
def test_torchvision_sets_say_what_is_missing(name, expected, tmp_path):
    with pytest.raises(DataNotFoundError, match=f"{name} test not found: expected .*{expected}.*--download"):
        get_dataset(name, "test", root=tmp_path)


def test_imagenet_says_what_is_missing(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"imagenet test not found: expected .*imagenet/val/<wnid>"):
        get_dataset("imagenet", "test", root=tmp_path)
    with pytest.raises(DataNotFoundError, match="cannot be downloaded"):
        get_dataset("imagenet", "test", root=tmp_path, download=True)


def write_image_tree(root, classes, per_class, size=(20, 16), mode="RGB", seed=0):
    """An ImageFolder tree root/<class>/<i>.png of random images (w x h = size); returns the pixel arrays."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays = {}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            a = rng.integers(0, 256, size=shape).astype(np.uint8)
            Image.fromarray(a, mode).save(root / c / f"{i}.png")
            arrays[(c, i)] = a
    return arrays


def test_folder_dataset_with_splits(tmp_path):
    classes = ["zebra", "apple", "mango"]
    arrays = write_image_tree(tmp_path / "tree" / "test", classes, 4)
    write_image_tree(tmp_path / "tree" / "train", classes, 6, seed=1)
    name = f"folder:{tmp_path / 'tree'}"
    info = get_dataset_info(name)
    assert info.classes == ("apple", "mango", "zebra")  # sorted directory names give the indices
    assert info.input_shape == (3, 16, 20) and info.splits == ("train", "test")
    test = get_dataset(name, "test")
    assert len(test) == 12 and len(get_dataset(name, "train")) == 18
    x, y = test[0]
    assert x.shape == (3, 16, 20) and y == 0
    # the pixels are the file's pixels, scaled to [0, 1]
    assert torch.allclose(x, torch.from_numpy(arrays[("apple", 0)]).permute(2, 0, 1).float() / 255)
    xb, yb = next(iter(make_loader(stratified_subset(test, 6, seed=0), 4)))
    assert xb.shape == (4, 3, 16, 20) and yb.tolist() == sorted(yb.tolist())
    tr, va = train_val_split(get_dataset(name, "train"), 0.5, seed=0)
    assert len(tr) == len(va) == 9 and set(tr.indices.tolist()).isdisjoint(va.indices.tolist())


def test_folder_dataset_flat_and_grey(tmp_path):
    write_image_tree(tmp_path, ["a", "b"], 3, size=(12, 12), mode="L")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    info = get_dataset_info(f"folder:{tmp_path}")
    assert info.input_shape == (1, 12, 12) and info.splits == ("test",)
    assert info.threat_model.eps == pytest.approx(8 / 255)
    assert len(get_dataset(f"folder:{tmp_path}", "test")) == 6
    with pytest.raises(UsageError, match="has no split 'train'"):
        get_dataset(f"folder:{tmp_path}", "train")


def test_folder_dataset_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="is not a directory"):
        get_dataset_info(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no images"):
        get_dataset_info(f"folder:{tmp_path / 'empty'}")
    (tmp_path / "noclass").mkdir()
    with pytest.raises(DataNotFoundError, match="no class sub-directories"):
        get_dataset_info(f"folder:{tmp_path / 'noclass'}")


def test_stratified_subset_and_split():
    targets = torch.arange(1000) % 10
    from classrobust.data.base import stratified_positions, stratified_split

    pos = stratified_positions(targets, 205, 10, seed=0)
    counts = torch.bincount(targets[pos], minlength=10)
    assert counts.sum() == 205 and counts.max() - counts.min() <= 1
    assert torch.equal(pos, stratified_positions(targets, 205, 10, seed=0))
    tr, va = stratified_split(targets, 0.1, 10, seed=0)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 1000
    assert torch.bincount(targets[va], minlength=10).tolist() == [10] * 10


def test_stratified_subset_with_unequal_classes():
    from classrobust.data.base import stratified_positions

    targets = torch.cat([torch.zeros(3), torch.ones(100), torch.full((100,), 2)]).long()
    counts = torch.bincount(targets[stratified_positions(targets, 60, 3, seed=1)], minlength=3)
    assert counts.tolist() == [3, 29, 28] or counts.tolist() == [3, 28, 29]


def test_real_fashion_mnist():
    require_fmnist()
    train, test = get_dataset("fashion-mnist", "train"), get_dataset("fashion-mnist", "test")
    assert len(train) == 60000 and len(test) == 10000
    assert torch.bincount(test.targets).tolist() == [1000] * 10
    tr, va = train_val_split(train, 0.1, seed=0)
    assert len(tr) == 54000 and torch.bincount(va.targets).tolist() == [600] * 10
    assert not set(tr.indices.tolist()) & set(va.indices.tolist())
    sub = stratified_subset(test, 2000, seed=0)
    assert torch.bincount(sub.targets).tolist() == [200] * 10
    x, y = next(iter(make_loader(sub, 64)))
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,)
    # the subset remembers where its samples sit in the test split
    assert torch.equal(test.targets[sub.indices], sub.targets)


def test_loader_batch_size_must_be_positive(synthetic_env):
    with pytest.raises(UsageError, match="batch size must be >= 1"):
        make_loader(get_dataset("fashion-mnist", "test"), 0)
