"""The one registry mechanism and the model factory."""

from __future__ import annotations

import pytest
import torch

from classrobust.errors import UsageError
from classrobust.models import MODELS, create_model, final_linear
from classrobust.registry import Registry


def test_registry_checks_names_and_kwargs():
    reg = Registry("widget")

    @reg.register("a-b", summary="first")
    def build(x, *, size: int = 1):
        return x * size

    assert reg.build("a-b", 2, size=3) == 6
    assert reg.names() == ["a-b"] and "a-b" in reg
    with pytest.raises(UsageError, match="unknown widget 'c'; choose one of: a-b"):
        reg.get("c")
    with pytest.raises(UsageError, match="widget 'a-b' has no parameter 'sise'; valid: x, size"):
        reg.build("a-b", 2, sise=3)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a-b")(build)


@pytest.mark.parametrize("name", MODELS.names())
def test_models_take_unit_range_images(name):
    model = create_model(name, "fashion-mnist").eval()
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert final_linear(model).out_features == 10
    # normalisation lives inside the model
    assert model.normalize.mean.item() == pytest.approx(0.2860)


def test_unknown_model():
    with pytest.raises(UsageError, match="unknown model 'vgg'; choose one of: smallcnn"):
        create_model("vgg")
