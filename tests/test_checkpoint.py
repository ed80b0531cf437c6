"""Checkpoint round trip and every way a checkpoint can be broken."""

from __future__ import annotations

import json

import pytest
import torch

from classrobust.checkpoint import load_checkpoint, save_checkpoint
from classrobust.errors import CheckpointError
from classrobust.models import create_model

META = {"model": "smallcnn", "dataset": "fashion-mnist",
        "classes": ["c%d" % i for i in range(10)], "seed": 3, "config": {"lr": 0.1}}


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("smallcnn", "fashion-mnist").eval()
    path = save_checkpoint(tmp_path / "model", model, META)
    return model, path


def test_round_trip(saved):
    model, path = saved
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert meta["seed"] == 3 and meta["config"] == {"lr": 0.1}
    assert path.name == "model.safetensors" and path.with_suffix(".json").is_file()
    # the json path and the bare stem name the same checkpoint
    assert load_checkpoint(path.with_suffix(".json"))[1]["sha256"] == meta["sha256"]


def test_normalisation_is_saved_with_the_weights(saved):
    _, path = saved
    from safetensors.torch import load_file

    keys = load_file(str(path)).keys()
    assert "normalize.mean" in keys and "normalize.std" in keys


def test_missing_files(saved, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    _, path = saved
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="sidecar .* not found"):
        load_checkpoint(path)


def test_truncated_weights(saved):
    _, path = saved
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated, corrupt or from another run"):
        load_checkpoint(path)


def test_corrupt_sidecar(saved):
    _, path = saved
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)
    path.with_suffix(".json").write_text(json.dumps({"model": "smallcnn"}))
    with pytest.raises(CheckpointError, match="lacks one of"):
        load_checkpoint(path)


def test_weights_from_another_run(saved, tmp_path):
    _, path = saved
    other = save_checkpoint(tmp_path / "other", create_model("smallcnn", "fashion-mnist"), META)
    path.write_bytes(other.read_bytes())
    with pytest.raises(CheckpointError, match="does not match its sidecar"):
        load_checkpoint(path)


def test_weights_of_another_architecture(tmp_path):
    model = create_model("smallcnn", "fashion-mnist")
    path = save_checkpoint(tmp_path / "m", model, META)
    meta = json.loads(path.with_suffix(".json").read_text())
    # a consistent pair (checksum fine) whose weights do not fit the named model
    small = {k: v for k, v in model.state_dict().items() if "classifier" not in k}
    from safetensors.torch import save as st_save
    import hashlib

    blob = st_save({k: v.contiguous() for k, v in small.items()})
    path.write_bytes(blob)
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit model 'smallcnn'"):
        load_checkpoint(path)


def test_unknown_model_name_in_sidecar(saved):
    _, path = saved
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["model"] = "resnet9000"
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown model 'resnet9000'"):
        load_checkpoint(path)


def test_failed_save_keeps_the_earlier_checkpoint(saved, monkeypatch):
    model, path = saved
    before = (path.read_bytes(), path.with_suffix(".json").read_bytes())
    import classrobust.checkpoint as ck

    def boom(obj):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "json_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, create_model("smallcnn", "fashion-mnist"), META)
    assert (path.read_bytes(), path.with_suffix(".json").read_bytes()) == before
    load_checkpoint(path)
    assert not list(path.parent.glob(".*.tmp"))


def test_interrupted_write_leaves_no_partial_file(saved, monkeypatch):
    _, path = saved
    before = path.read_bytes()
    import classrobust.io as io

    real_replace = io.os.replace
    calls = []

    def fail_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("crash between renames")
        real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", fail_second)
    with pytest.raises(OSError):
        save_checkpoint(path, create_model("smallcnn", "fashion-mnist"), META)
    monkeypatch.setattr(io.os, "replace", real_replace)
    # the weights were replaced but the sidecar was not: the checksum refuses the mix
    assert path.read_bytes() != before
    with pytest.raises(CheckpointError, match="does not match its sidecar"):
        load_checkpoint(path)
    assert not list(path.parent.glob(".*.tmp"))
