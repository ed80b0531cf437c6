"""One registry mechanism for datasets, models, attacks and training methods.

A registry maps a CLI name (``fashion-mnist``, ``temp-pgd``) to a builder and
a frozen info object. :meth:`Registry.build` checks keyword arguments against
the builder's signature, so a typo is an error naming the valid keys instead
of being silently ignored deep inside.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from classrobust.errors import UsageError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    summary: str
    info: Any = None
    defaults: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> builder, with signature-checked keyword arguments."""

    def __init__(self, kind: str, internal: tuple[str, ...] = ()):
        """``internal``: builder arguments the library passes itself (an attack's ``model``, a lever's
        ``num_classes``): never offered to a user, never listed as settable."""
        self.kind = kind
        self.internal = tuple(internal)
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, summary: str = "", info: Any = None,
                 defaults: dict[str, Any] | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``builder`` under ``name``."""

        def deco(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = summary or (inspect.getdoc(builder) or "").split("\n")[0]
            self._entries[name] = Entry(name, builder, doc, info, dict(defaults or {}))
            return builder

        return deco

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(
                f"unknown {self.kind} {name!r}{hint}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def parameters(self, name: str) -> list[tuple[str, str, Any]]:
        """(name, type, default) of each keyword parameter of ``name``'s builder, registered
        defaults applied; the model and class count the builder is given are left out."""
        entry = self.get(name)
        out = []
        for p in inspect.signature(entry.builder).parameters.values():
            if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty):
                default = entry.defaults.get(p.name, None if p.default is p.empty else p.default)
                out.append((p.name, str(p.annotation).replace("'", ""), default))
        return out

    def valid_kwargs(self, name: str) -> list[str]:
        params = inspect.signature(self.get(name).builder).parameters.values()
        return [p.name for p in params
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]

    def check_kwargs(self, name: str, kwargs: dict[str, Any]) -> None:
        valid = self.valid_kwargs(name)
        sig = inspect.signature(self.get(name).builder)
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return
        settable = [v for v in valid if v not in self.internal]
        unknown = sorted(set(kwargs) - set(valid)) or sorted(set(kwargs) & set(self.internal))
        if unknown:
            raise UsageError(
                f"{self.kind} {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"valid: {', '.join(settable)}"
            )

    def coerce(self, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``kwargs`` with each string value converted to its parameter's annotated type (as written
        in a CLI spec: ``steps=50``, ``eps=8/255``, ``random_start=false``); a value that does not
        fit is a one-line error naming the entry, the parameter and the expected type."""
        params = inspect.signature(self.get(name).builder).parameters
        out = dict(kwargs)
        for key, value in kwargs.items():
            if isinstance(value, str) and key in params:
                out[key] = _typed_value(value, str(params[key].annotation),
                                        f"{self.kind} {name!r}: {key}")
        return out

    def build(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Call the builder of ``name`` with its registered defaults overridden by ``kwargs``. The
        library passes the internal arguments itself (positionally or by name); a user's spec is
        checked where it is parsed (:meth:`check_kwargs` refuses internal names there)."""
        entry = self.get(name)
        merged = self.coerce(name, {**entry.defaults, **kwargs})
        self.check_kwargs(name, {k: v for k, v in merged.items() if k not in self.internal})
        return entry.builder(*args, **merged)


def _typed_value(text: str, annotation: str, what: str) -> Any:
    """``text`` as the type ``annotation`` names (a string, e.g. ``"float | None"``): booleans
    strictly ``true``/``false``, integers, numbers or fractions (``8/255``), ``none`` where allowed."""
    from classrobust.options import parse_number

    kinds = {k.strip() for k in annotation.replace("Optional[", "").replace("]", "").split("|")}
    low = text.strip().lower()
    if "None" in kinds and low == "none":
        return None
    if "bool" in kinds:
        if low not in ("true", "false"):
            raise UsageError(f"{what} must be true or false, got {text!r}")
        return low == "true"
    if "int" in kinds and "float" not in kinds:
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{what} must be an integer, got {text!r}") from None
    if "float" in kinds:
        try:
            return parse_number(text)
        except UsageError:
            raise UsageError(f"{what} must be a number or a fraction like 8/255, got {text!r}") from None
    return text


def parse_specs(text: str, registry: Registry) -> list[tuple[str, dict[str, Any]]]:
    """Parse ``"a,b:k=1,j=2,c"`` into ``[(name, params)]`` with names checked against ``registry``
    and each value converted to its parameter's type (:meth:`Registry.coerce`).

    Commas separate entries; a ``key=value`` item belongs to the entry before it.
    """
    specs: list[tuple[str, dict[str, Any]]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" in item and ":" not in item:
            if not specs:
                raise UsageError(f"{registry.kind} parameter {item!r} comes before any {registry.kind} name")
            key, _, value = item.partition("=")
            specs[-1][1][key.strip()] = value.strip()
            continue
        name, _, first = item.partition(":")
        name = name.strip()
        registry.get(name)  # unknown names fail here, listing the valid ones
        params: dict[str, Any] = {}
        if first:
            if "=" not in first:
                raise UsageError(f"{registry.kind} parameter {first!r} must look like key=value")
            key, _, value = first.partition("=")
            params[key.strip()] = value.strip()
        if name in (s[0] for s in specs):
            raise UsageError(f"{registry.kind} {name!r} is listed twice")
        specs.append((name, params))
    return [(name, registry.coerce(name, params)) for name, params in specs]
