"""argparse parsers built from the config dataclasses, so every default, choice and help text has
one source (:mod:`classrobust.options`); the options that are not settings of a run (paths, the
device, progress bars) are declared here."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterable

from classrobust.errors import UsageError
from classrobust.options import kind_of, parse_number


def _typed(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"expected an integer, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _numbers(text: str) -> tuple[float, ...]:
    return tuple(parse_number(n) for n in _names(text))


PARSE = {"int": _typed(_int), "float": _typed(parse_number), "str": str, "list": _names, "floats": _typed(_numbers)}


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def add_config_options(parser: argparse.ArgumentParser, cls, *, skip: Iterable[str] = ()) -> None:
    """One option per field of config dataclass ``cls`` (``eps_warmup_epochs`` -> ``--eps-warmup-epochs``),
    its default the field's; a boolean field defaulting to True becomes ``--no-NAME``."""
    skipped = set(skip)
    for f in dataclasses.fields(cls):
        if f.name in skipped or not f.metadata.get("cli", True):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        kind = kind_of(f)
        if kind == "bool":
            if default:
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                    help=f"do not: {help_}")
            else:
                parser.add_argument(flag, dest=f.name, action="store_true", help=help_)
            continue
        parser.add_argument(flag, dest=f.name, type=PARSE[kind], default=default,
                            choices=f.metadata.get("choices"), metavar=f.metadata.get("metavar"),
                            help=help_ if "(default" in help_ else f"{help_} (default: {_show(default)})")


def config_from_args(cls, args: argparse.Namespace, **fixed: Any):
    """An instance of ``cls`` from the parsed options (fields not on the command line keep their
    defaults; ``fixed`` sets others)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **fixed})


def add_data_options(p: argparse.ArgumentParser, *, device: bool = True) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="data directory (default ~/.cache/classrobust/data or $CLASSROBUST_DATA_DIR)")
    p.add_argument("--download", action="store_true", help="allow downloading missing data")
    if device:
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def positive_int(text: str) -> int:
    value = PARSE["int"](text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
