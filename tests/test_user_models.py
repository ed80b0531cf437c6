"""Users' own models (python:package.module:factory) and weights files, through the CLI."""

from __future__ import annotations

import textwrap

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from classrobust.cli.main import main
from classrobust.data import get_dataset
from classrobust.errors import CheckpointError
from classrobust.models import create_model

MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    def tiny():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))

    def not_a_model():
        return 42
''')


class Evil:
    def __reduce__(self):  # pickled code: weights_only loading must refuse to run it
        return (print, ("this must never run",))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "mymodels_cr.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "python:mymodels_cr:tiny"


def _eval(args, out, capsys):
    code = main(["eval", *map(str, args), "--attacks", "fgsm", "--limit", "40", "--no-progress", "--no-report",
                 "--out", str(out)])
    return code, capsys.readouterr()


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_user_model_with_weights(fmt, user_module, synthetic_env, tmp_path, capsys):
    from mymodels_cr import tiny

    model = tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    weights = tmp_path / f"w.{fmt}"
    if fmt == "pt":
        torch.save(model.state_dict(), weights)
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    code, io = _eval(["--model", user_module, "--dataset", "fashion-mnist", "--weights", weights],
                     tmp_path / "e", capsys)
    assert code == 0, io.err
    samples = pd.read_csv(tmp_path / "e" / "samples.csv.gz")
    test = get_dataset("fashion-mnist", "test")
    x = test.images[torch.tensor(samples["index"].to_numpy())].float() / 255
    with torch.no_grad():
        expected = model.eval()(x).argmax(1).numpy()
    assert (samples["pred_clean"].to_numpy() == expected).all()  # the weights really were used


def test_pickle_with_code_is_refused(user_module, synthetic_env, tmp_path, capsys):
    from mymodels_cr import tiny

    weights = tmp_path / "evil.pt"
    torch.save({"state_dict": tiny().state_dict(), "payload": Evil()}, weights)
    code, io = _eval(["--model", user_module, "--dataset", "fashion-mnist", "--weights", weights],
                     tmp_path / "e", capsys)
    assert code == 1 and "refused" in io.err and "pickled code" in io.err
    assert "this must never run" not in io.out + io.err and "Traceback" not in io.err
    assert "\x1b" not in io.err  # torch's colour codes stripped (issue #35, item 15)
    assert not (tmp_path / "e").exists()


def test_registry_model_with_bare_network_weights(tmp_path):
    trained = create_model("smallcnn", "fashion-mnist")
    torch.save(trained.net.state_dict(), tmp_path / "net.pt")  # no wrapper prefixes
    loaded = create_model("smallcnn", "fashion-mnist", weights=str(tmp_path / "net.pt")).eval()
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(loaded(x), trained.eval()(x))
    with pytest.raises(CheckpointError, match="does not fit the model"):
        create_model("preact-resnet18", "fashion-mnist", weights=str(tmp_path / "net.pt"))


@pytest.mark.parametrize("spec, code, message", [
    ("python:no_such_module_cr:f", 2, "cannot import 'no_such_module_cr'"),
    ("python:mymodels_cr:missing", 2, "has no callable 'missing'"),
    ("python:mymodels_cr:not_a_model", 2, "returned int, not a torch.nn.Module"),
    ("python:mymodels_cr", 2, "must look like python:package.module:factory"),
    ("vgg", 2, "unknown model 'vgg'"),
])
def test_bad_model_specs(spec, code, message, user_module, synthetic_env, tmp_path, capsys):
    got, io = _eval(["--model", spec, "--dataset", "fashion-mnist"], tmp_path / "e", capsys)
    assert got == code and message in io.err and "Traceback" not in io.err


def test_option_combinations(user_module, synthetic_env, tmp_path, capsys):
    got, io = _eval(["--model", user_module], tmp_path / "e", capsys)
    assert got == 2 and "--model with its --dataset" in io.err
    got, io = _eval(["--checkpoint", tmp_path / "x.safetensors", "--weights", tmp_path / "w.pt"],
                    tmp_path / "e", capsys)
    assert got == 2 and "go with --model" in io.err
    got, io = _eval(["--model", user_module, "--dataset", "fashion-mnist", "--weights", tmp_path / "none.pt"],
                    tmp_path / "e", capsys)
    assert got == 1 and "not found" in io.err


def test_timm_model_end_to_end(synthetic_env, tmp_path, capsys):
    """timm:ARCH trains, saves, reloads from its checkpoint and evaluates; --model timm:ARCH with
    --weights evaluates the same weights; no download (pretrained is never asked for)."""
    pytest.importorskip("timm")
    import json

    from conftest import TRAIN, run

    out = tmp_path / "run"
    code, _, err = run([*TRAIN, "--model", "timm:mobilenetv3_small_050", "--out", out], capsys)
    assert code == 0, err
    assert json.loads((out / "model.json").read_text())["model"] == "timm:mobilenetv3_small_050"
    code, _, err = run(["eval", "--checkpoint", out, "--attacks", "fgsm", "--limit", "60", "--out", tmp_path / "e1",
                        "--no-progress"], capsys)
    assert code == 0, err
    code, _, err = run(["eval", "--model", "timm:mobilenetv3_small_050", "--dataset", "fashion-mnist", "--weights",
                        out / "model.safetensors", "--attacks", "fgsm", "--limit", "60", "--out", tmp_path / "e2",
                        "--no-progress"], capsys)
    assert code == 0, err
    a, b = (pd.read_csv(tmp_path / e / "per_class.csv") for e in ("e1", "e2"))
    pd.testing.assert_series_equal(a["accuracy"], b["accuracy"])  # the same network both ways
    model = create_model("timm:mobilenetv3_small_050", "fashion-mnist")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)  # built for 1 channel and 10 classes
    code, _, err = run([*TRAIN, "--model", "timm:resnet10x", "--out", tmp_path / "bad"], capsys)
    assert code == 2 and "timm has no architecture 'resnet10x'" in err and err.count("\n") == 1


def test_a_user_model_without_weights_is_evaluated_with_a_warning(user_module, synthetic_env, tmp_path, capsys):
    """Issue #35, item 13: `--model python:...` without `--weights` says that it evaluates the factory's
    own (untrained) weights; with them it says nothing."""
    code, io = _eval(["--model", user_module, "--dataset", "fashion-mnist"], tmp_path / "e", capsys)
    assert code == 0, io.err
    assert "without --weights" in io.err and io.err.count("\n") == 1
