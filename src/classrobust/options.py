"""One source of truth for every option: a dataclass field carries its default, choices and help.

The config dataclasses (``TrainConfig``, ``EvalConfig``, ``CalibrateConfig``) declare their fields
with :func:`option`; the CLI builds its parsers from them (:mod:`classrobust.cli.parsers`) and the
experiment files validate against them, so the command line, the Python API and the files can
never disagree about a default. No torch here.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, Sequence

from classrobust.errors import UsageError


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: Sequence[str] | None = None,
           cli: bool = True, metavar: str | None = None, kind: str | None = None) -> Any:
    """A dataclass field with its CLI metadata.

    Args:
        default: the default (a dict or list default is copied per instance).
        help: one line for ``--help``; the default is appended there.
        choices: the allowed values, checked by the parser and by :func:`check_choice`.
        cli: False for options the command line does not offer (nested mappings).
        kind: how the command line parses the value when the annotation does not say:
            ``"int"``, ``"float"`` (fractions such as ``8/255`` accepted), ``"str"``, ``"bool"``,
            ``"list"`` (comma-separated strings), ``"floats"`` (comma-separated numbers).
    """
    metadata = {"help": help, "choices": tuple(choices) if choices else None, "cli": cli, "metavar": metavar,
                "kind": kind}
    if isinstance(default, (dict, list)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def kind_of(f: dataclasses.Field) -> str:
    """The parse kind of a field: from its metadata, else from its annotation (a string)."""
    if f.metadata.get("kind"):
        return f.metadata["kind"]
    annotation = str(f.type).replace(" ", "")
    for prefix, kind in (("bool", "bool"), ("int", "int"), ("float", "float"), ("str", "str"),
                         ("tuple[str", "list"), ("tuple[float", "floats")):
        if annotation.startswith(prefix):
            return kind
    raise TypeError(f"option {f.name!r}: cannot tell how to parse {f.type!r}; give kind=")


def defaults(cls) -> dict[str, Any]:
    """Field name -> default value of a config dataclass."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def parse_number(text: str, what: str = "value") -> float:
    """``"0.03"``, ``"8/255"`` -> float; anything else is a one-line error."""
    try:
        return float(Fraction(text.strip())) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"{what} must be a number or a fraction like 8/255, got {text!r}") from None


def check_choice(cls, name: str, value: Any) -> None:
    """Refuse ``value`` for field ``name`` of ``cls`` when it is not one of the field's choices."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise UsageError(f"{name.replace('_', ' ')} must be one of {', '.join(choices)}, got {value!r}")


def coerce_fields(obj) -> None:
    """Check (and where the command line would parse it, convert) every scalar field of a config
    dataclass instance: a number written as text in a file (``eps: 8/255``) becomes a float as on the
    command line, and a value of the wrong type is a one-line error naming the field, never a
    Python comparison error later. Frozen dataclasses are updated in place."""
    for f in dataclasses.fields(obj):
        try:
            kind = kind_of(f)
        except TypeError:  # nested mappings and the like: checked where they are used
            continue
        value, name = getattr(obj, f.name), f.name.replace("_", " ")
        if value is None or kind in ("list", "floats"):
            continue
        if kind == "float":
            if isinstance(value, str):
                value = parse_number(value, name)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"{name} must be a number, got {value!r}")
            value = float(value)
        elif kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise UsageError(f"{name} must be an integer, got {value!r}")
        elif kind == "bool" and not isinstance(value, bool):
            raise UsageError(f"{name} must be true or false, got {value!r}")
        elif kind == "str" and not isinstance(value, str):
            raise UsageError(f"{name} must be text, got {value!r}")
        object.__setattr__(obj, f.name, value)


def plural(n: int, word: str) -> str:
    """``1 run``, ``2 runs``: a count with its noun."""
    return f"{n} {word}{'' if n == 1 else 's'}"
