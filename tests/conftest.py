"""Shared fixtures: generated IDX data for the real loaders, small models, real Fashion-MNIST."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from classrobust.data.mnist_like import SYSTEM_DIRS
from classrobust.runtime import Runtime

FMNIST_DIR = SYSTEM_DIRS["fashion-mnist"]

#: a fast ``classrobust train`` on the generated data (``synthetic_env``)
TRAIN = ["train", "--train-subset", "300", "--epochs", "1", "--val-size", "100", "--attack-steps", "2",
         "--batch-size", "50", "--lr", "0.02", "--no-progress"]


def run(argv, capsys):
    """``classrobust ARGV`` in this process: (exit code, stdout, stderr)."""
    from classrobust.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """Write ``array`` (uint8) in the IDX format MNIST and Fashion-MNIST ship in."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def synthetic_mnist_like(n: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 images: class k lights up a k-specific stripe, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for k in range(num_classes):
        rows = slice(2 + 2 * k, 4 + 2 * k)
        images[labels == k, rows, 4:24] += 150
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def trained_run_template(synthetic_data_root, tmp_path_factory) -> Path:
    """One ``classrobust train`` (TRAIN, one epoch) on the generated data per session: training is
    deterministic, so every test's copy is the run it would have trained itself."""
    from classrobust.cli.main import main

    root = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLASSROBUST_SYSTEM_DATA", str(synthetic_data_root))
        mp.setenv("CLASSROBUST_DATA_DIR", str(root / "datadir"))
        import classrobust.data as data

        mp.setattr(data, "DEFAULT_DATA_DIR", root / "datadir")
        assert main([*TRAIN, "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def trained_run(synthetic_env, tmp_path, trained_run_template) -> Path:
    """A run folder trained by ``classrobust train`` (TRAIN, one epoch) on the generated data: a copy of
    the session's one training (each test may change its copy)."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained_run_template, out)
    return out


@pytest.fixture(scope="session")
def synthetic_data_root(tmp_path_factory) -> Path:
    """A system-data directory with generated fashion-mnist IDX files (600 train / 200 test)."""
    root = tmp_path_factory.mktemp("sysdata")
    d = root / "fashion-mnist"
    d.mkdir()
    for split, n, seed in (("train", 600, 1), ("t10k", 200, 2)):
        x, y = synthetic_mnist_like(n, seed)
        write_idx(d / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", y)
    return root


@pytest.fixture
def synthetic_env(synthetic_data_root, tmp_path, monkeypatch) -> Path:
    """Point the loaders at the generated data (and an empty data dir), for the CLI tests."""
    monkeypatch.setenv("CLASSROBUST_SYSTEM_DATA", str(synthetic_data_root))
    monkeypatch.setenv("CLASSROBUST_DATA_DIR", str(tmp_path / "datadir"))
    import classrobust.data as data

    monkeypatch.setattr(data, "DEFAULT_DATA_DIR", tmp_path / "datadir")
    return synthetic_data_root


class TinyNet(nn.Module):
    """A small conv net on (N, 1, 8, 8) in [0, 1], 4 classes, with dropout so train/eval differ."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Dropout(0.5), nn.Linear(4 * 64, 4))

    def forward(self, x):
        return self.body(x)


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 4, (6,), generator=g)


def require_fmnist() -> None:
    if not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"Fashion-MNIST is not installed in {FMNIST_DIR}; `make test` installs it "
                    "(Debian package dataset-fashion-mnist)")


@pytest.fixture(scope="session")
def fmnist_test_subset():
    """600 stratified Fashion-MNIST test images."""
    require_fmnist()
    from classrobust.data import get_dataset, stratified_subset

    return stratified_subset(get_dataset("fashion-mnist", "test"), 600, seed=0)


@pytest.fixture(scope="session")
def trained_fmnist_model():
    """smallcnn briefly standard-trained on 4,000 Fashion-MNIST training images (a few seconds)."""
    require_fmnist()
    from classrobust.data import get_dataset, make_loader, stratified_subset
    from classrobust.models import create_model

    torch.manual_seed(0)
    train = stratified_subset(get_dataset("fashion-mnist", "train"), 4000, seed=0)
    model = create_model("smallcnn", "fashion-mnist")
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    for _ in range(2):
        for x, y in make_loader(train, 100, shuffle=True, seed=0):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def at_fmnist_model(tmp_path_factory):
    """smallcnn PGD-AT-trained (2 epochs on 10,000 images, batch 64) through our own training loop."""
    require_fmnist()
    from classrobust.checkpoint import load_checkpoint
    from classrobust.training import TrainConfig, train

    # lr 0.01 with a 1-epoch eps ramp learns on every seed tried (75-77% clean, 52-55% PGD);
    # lr 0.05 at batch 64 collapsed or diverged on some seeds
    config = TrainConfig(train_subset=10000, epochs=2, batch_size=64, attack_steps=3, eps_warmup_epochs=1.0,
                         val_size=200, model_kwargs={"dropout": 0.0}, lr=0.01, precision="bf16")
    path = train(config, tmp_path_factory.mktemp("at") / "run", runtime=Runtime(progress=False, log=lambda s: None))
    model, meta = load_checkpoint(path)
    # a collapsed model would make every cross-check trivial
    per_class = meta["metrics"]["val_clean_accuracy_per_class"]
    assert meta["metrics"]["val_clean_accuracy"] > 0.6 and sum(a > 0.2 for a in per_class) >= 8
    return model
