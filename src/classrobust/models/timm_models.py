"""``timm:NAME``: any timm architecture, built for the dataset's channels, input size and classes
(untrained: no weights are downloaded; give your own with ``--weights FILE``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from classrobust.data.base import DatasetInfo
from classrobust.errors import UsageError

PREFIX = "timm:"


def is_timm_model(name: str) -> bool:
    return name.startswith(PREFIX)


def _timm():
    try:
        import timm
    except ImportError:
        raise UsageError("timm: models need timm: pip install 'classrobust[integrations]'") from None
    return timm


def check_timm_name(name: str) -> str:
    """The architecture of ``timm:NAME``, refused in one line if timm does not know it."""
    arch = name[len(PREFIX):]
    timm = _timm()
    if not arch or not timm.is_model(arch):
        import difflib

        # the closest names by spelling (resnet10tt -> resnet10t), not only those sharing a prefix
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.75) if arch else []
        raise UsageError(f"timm has no architecture {arch!r}" + (f" (close: {', '.join(close)})" if close else "")
                         + "; see timm.list_models()")
    return arch


def build_timm_model(name: str, info: DatasetInfo, **kwargs: Any) -> nn.Module:
    """``timm.create_model(arch, pretrained=False, num_classes=K, in_chans=C)``, plus ``img_size``
    for architectures that fix their input size (vision transformers). ``kwargs`` go to timm."""
    timm = _timm()
    arch = check_timm_name(name)
    c, h, w = info.input_shape
    args: dict[str, Any] = {"pretrained": False, "num_classes": info.num_classes, "in_chans": c, **kwargs}
    if "img_size" not in kwargs:  # transformers fix their input size; convolutional networks refuse the argument
        try:
            return timm.create_model(arch, **args, img_size=(h, w))
        except TypeError:
            pass
    try:
        return timm.create_model(arch, **args)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        raise UsageError(f"timm could not build {arch!r} for {c}x{h}x{w} inputs with {sorted(args)}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
