"""Models: ``create_model(name, dataset=...)`` returns a module taking [0, 1] images.

Every model normalises inside (a :class:`Normalize` first layer), so attacks,
eps and projections all live in pixel space. Adding a model is one builder
plus one ``MODELS.register`` line.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from classrobust.data import get_dataset_info
from classrobust.data.base import DatasetInfo
from classrobust.models.normalize import Normalize, NormalizedModel
from classrobust.models.smallcnn import SmallCNN
from classrobust.errors import UsageError
from classrobust.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


@MODELS.register("smallcnn", summary="4-conv / 3-fc small CNN for 28x28 inputs (MNIST, Fashion-MNIST)")
def smallcnn(info: DatasetInfo, dropout: float = 0.5) -> nn.Module:
    c, h, w = info.input_shape
    return SmallCNN(c, info.num_classes, image_size=h, dropout=dropout)


@MODELS.register("preact-resnet18", summary="PreAct ResNet-18 (CIFAR-sized inputs)")
def preact_resnet18(info: DatasetInfo) -> nn.Module:
    from classrobust.models.resnets import preact_resnet18 as build

    return build(info.input_shape[0], info.num_classes)


@MODELS.register("wrn-34-10", summary="WideResNet-34-10 (CIFAR-sized inputs)")
def wrn_34_10(info: DatasetInfo, depth: int = 34, widen_factor: int = 10, dropout: float = 0.0) -> nn.Module:
    from classrobust.models.resnets import wide_resnet

    return wide_resnet(info.input_shape[0], info.num_classes, depth, widen_factor, dropout)


@MODELS.register("resnet18", summary="torchvision ResNet-18 (ImageNet-sized inputs), untrained")
def resnet18(info: DatasetInfo) -> nn.Module:
    from torchvision.models import resnet18 as build

    return build(weights=None, num_classes=info.num_classes)


@MODELS.register("resnet50", summary="torchvision ResNet-50 (ImageNet-sized inputs), untrained")
def resnet50(info: DatasetInfo) -> nn.Module:
    from torchvision.models import resnet50 as build

    return build(weights=None, num_classes=info.num_classes)


def check_model_name(name: str) -> None:
    """Refuse, in one line and before any data is read, a model name that cannot be built: an
    unknown registry name or timm architecture (``python:`` factories are imported when built)."""
    from classrobust.models.timm_models import check_timm_name, is_timm_model
    from classrobust.models.user import is_user_model

    if is_timm_model(name):
        check_timm_name(name)
    elif not is_user_model(name):
        MODELS.get(name)


def valid_model_kwargs(name: str) -> set[str] | None:
    """The keyword arguments a registry model takes; None where they are not known in advance
    (``timm:`` architectures take timm's, ``python:`` factories none)."""
    from classrobust.models.timm_models import is_timm_model
    from classrobust.models.user import is_user_model

    if is_timm_model(name):
        return None
    if is_user_model(name):
        return set()
    return set(MODELS.valid_kwargs(name))


def create_model(name: str, dataset: str | DatasetInfo = "fashion-mnist", *, weights: str | None = None,
                 normalize: bool | None = None, **kwargs: Any) -> nn.Module:
    """Build model ``name`` for ``dataset``: ``model(x: (N, C, H, W) in [0, 1]) -> logits (N, K)``.

    ``name`` is a registry name, ``timm:ARCH`` (any timm architecture, untrained, built for the
    dataset's channels, size and classes; ``kwargs`` go to timm) or ``python:package.module:factory``
    (a user's model, used as returned unless ``normalize=True`` wraps it with the dataset's mean and
    std; registry and timm models always normalise inside). ``weights`` loads a ``.safetensors`` file or a state dict
    (``weights_only=True``) into the model, strictly.
    """
    from classrobust.models.timm_models import build_timm_model, is_timm_model
    from classrobust.models.user import build_user_model, is_user_model, load_weights

    info = get_dataset_info(dataset) if isinstance(dataset, str) else dataset
    if is_timm_model(name):
        model = NormalizedModel(build_timm_model(name, info, **kwargs), info.mean, info.std)
    elif is_user_model(name):
        if kwargs:
            raise UsageError(f"user models take no keyword arguments (got {', '.join(kwargs)})")
        model = build_user_model(name)
        if normalize:
            model = NormalizedModel(model, info.mean, info.std)
    else:
        model = NormalizedModel(MODELS.build(name, info, **kwargs), info.mean, info.std)
    if weights is not None:
        load_weights(model, weights)
    return model


def final_linear(model: nn.Module) -> nn.Linear:
    """The last ``nn.Linear`` of a model: its rows are the per-class classifier weights."""
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last = module
    if last is None:
        raise ValueError("model has no nn.Linear layer")
    return last


__all__ = ["MODELS", "create_model", "check_model_name", "valid_model_kwargs", "final_linear", "Normalize", "NormalizedModel", "SmallCNN"]
