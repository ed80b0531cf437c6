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


SHAPES = {"fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}


@pytest.mark.parametrize("name, dataset", [("smallcnn", "fashion-mnist"), ("preact-resnet18", "cifar10"),
                                           ("wrn-34-10", "cifar100"), ("resnet18", "cifar10"),
                                           ("resnet50", "cifar10"), ("preact-resnet18", "fashion-mnist")])
def test_models_take_unit_range_images(name, dataset):
    from classrobust.data import get_dataset_info

    info = get_dataset_info(dataset)
    torch.manual_seed(0)
    model = create_model(name, dataset).eval()
    out = model(torch.rand(2, *SHAPES[dataset]))
    assert out.shape == (2, info.num_classes)
    assert final_linear(model).out_features == info.num_classes
    # normalisation lives inside the model
    assert model.normalize.mean.flatten().tolist() == pytest.approx(list(info.mean))


def test_every_model_is_tested():
    assert set(MODELS.names()) == {"smallcnn", "preact-resnet18", "wrn-34-10", "resnet18", "resnet50"}


def test_model_sizes():
    # parameter counts of the published architectures (10 classes)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert 11.1e6 < count(create_model("preact-resnet18", "cifar10")) < 11.2e6
    assert 46.1e6 < count(create_model("wrn-34-10", "cifar10")) < 46.2e6


def test_unknown_model():
    with pytest.raises(UsageError, match="unknown model 'vgg'; choose one of: smallcnn"):
        create_model("vgg")
