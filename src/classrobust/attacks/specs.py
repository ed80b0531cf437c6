"""Attacks from CLI strings: ``"fgsm,pgd:steps=50,alpha=0.005"`` -> built attacks.

Global options (``--eps``, ``--steps``, ``--alpha``, ``--mode``, ``--precision``, ``--seed``) reach
every attack that takes them; per-attack values win. A global option that an attack cannot
take is an error naming both, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from classrobust.attacks.base import Attack
from classrobust.errors import UsageError
from classrobust.registry import parse_specs

#: the global options and the value each has when the user did not set it (None: not set)
GLOBAL_OPTIONS = {"eps": None, "steps": None, "alpha": None, "mode": "best", "precision": "fp32", "seed": 0}


def parse_attack_specs(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Parse ``"fgsm,pgd:steps=50,alpha=0.005,temp-pgd"`` into ``[(name, overrides)]``.

    Commas separate attacks; a ``key=value`` item belongs to the attack before it.
    """
    from classrobust.attacks import ATTACKS

    specs = parse_specs(text, ATTACKS)
    if not specs:
        raise UsageError("no attack given")
    if "clean" in (s[0] for s in specs):
        raise UsageError("'clean' is always evaluated; do not list it as an attack")
    return specs


def accepted_globals(name: str) -> set[str]:
    """The global options attack ``name`` takes: those of its constructor's parameters that its
    class does not reserve (AutoAttack keeps its members' settings: no global ``--steps``)."""
    from classrobust.attacks import ATTACKS

    entry = ATTACKS.get(name)
    reserved = set(getattr(entry.builder, "reserved_options", ()))
    return (set(ATTACKS.valid_kwargs(name)) & set(GLOBAL_OPTIONS)) - reserved


def attack_kwargs(specs: list[tuple[str, dict[str, Any]]], **global_options: Any) -> dict[str, dict[str, Any]]:
    """Each attack's keyword arguments: the global options it takes, then its own values.

    A global option set to anything but its unset value (:data:`GLOBAL_OPTIONS`) that an attack
    does not take raises :class:`UsageError` naming the attack and the option.
    """
    unknown = sorted(set(global_options) - set(GLOBAL_OPTIONS))
    if unknown:
        raise TypeError(f"not global attack options: {', '.join(unknown)}")
    from classrobust.attacks import ATTACKS

    out = {}
    for name, own in specs:
        ATTACKS.check_kwargs(name, own)  # an unknown or internal parameter (model=...), in one line
        accepted = accepted_globals(name)
        kwargs: dict[str, Any] = {}
        for key, value in global_options.items():
            if key in accepted and value is not None:
                kwargs[key] = value
            elif key not in accepted and value != GLOBAL_OPTIONS[key] and key not in own:
                hint = (f"; set it for {name} alone with {name}:{key}=VALUE" if key in ATTACKS.valid_kwargs(name)
                        else "")
                raise UsageError(f"attack {name!r} does not take the global --{key}{hint}; "
                                 f"give {key} per attack instead (e.g. pgd:{key}=...)")
        kwargs.update(own)
        out[name] = kwargs
    return out


def build_attacks(specs: str | list[tuple[str, dict[str, Any]]], model: nn.Module,
                  overrides: Mapping[str, Mapping[str, Any]] | None = None, **global_options: Any
                  ) -> dict[str, Attack]:
    """Attacks on ``model`` from a spec string (or parsed specs), global options applied as in
    :func:`attack_kwargs`; ``overrides`` adds per-attack values on top (the sanity checks' variants)."""
    from classrobust.attacks import create_attack

    parsed = parse_attack_specs(specs) if isinstance(specs, str) else list(specs)
    kwargs = attack_kwargs(parsed, **global_options)
    return {name: create_attack(name, model, **{**kw, **dict((overrides or {}).get(name, {}))})
            for name, kw in kwargs.items()}
