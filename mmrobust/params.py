"""Typed parameters: one builder for run configs, attack and defense parameters.

Every settable thing in mmrobust is a frozen dataclass (``RunConfig``, an
attack's or a defense's ``Params``). :func:`build_params` turns plain values
(from the command line, a TOML file or Python) into one, and every mistake
comes back as a one-line :class:`ValueError` that names its owner and key:

* an unknown key, with the closest known one suggested;
* a value of the wrong type (``bool`` is never a number; an ``int`` is
  accepted for a ``float`` and converted);
* a value out of range, from the dataclass's ``__post_init__``, which checks
  ranges with :func:`check_number` and :func:`check_flag`.

Example::

    @dataclass(frozen=True)
    class Params:
        steps: int = 10

        def __post_init__(self) -> None:
            check_number("steps", self.steps, 1, integer=True)

    build_params(Params, {"steps": 5}, owner="attack 'pgd'")    # Params(steps=5)
    build_params(Params, {"stpes": 5}, owner="attack 'pgd'")
    # ValueError: attack 'pgd': unknown parameter 'stpes'; did you mean 'steps'? (parameters: steps)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

P = TypeVar("P")


def check_number(name: str, value: Any, low: float, high: float = math.inf, *,
                 low_open: bool = False, integer: bool = False) -> None:
    """Raise ValueError naming ``name`` unless ``value`` lies in its allowed range.

    The range is [low, high] (or (low, high] with ``low_open``); ``integer``
    asks for an ``int``. Booleans are never numbers here, and NaN is never in range.
    """
    left = "(" if low_open else "["
    right = ")" if math.isinf(high) else "]"
    kind = "an integer" if integer else "a number"
    allowed = f"{kind} in {left}{low:g}, {high:g}{right}"
    numeric = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if not math.isfinite(value) or not (value > low if low_open else value >= low) or value > high:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_flag(name: str, value: Any) -> None:
    """Raise ValueError naming ``name`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def build_params(params_type: type[P], values: Mapping[str, Any], *, owner: str, noun: str = "parameter") -> P:
    """``params_type(**values)``, with every key and type checked first.

    Args:
        params_type: a dataclass.
        values: plain values by field name; missing fields keep their defaults.
        owner: what the parameters belong to, the start of every message
            ("attack 'pgd'", "defense 'amr'", a config file's path).
        noun: what a key is called in messages ("parameter", "key").

    Raises:
        ValueError: ``<owner>: unknown <noun> 'x'; did you mean 'y'?``, a wrong
            type (``<owner>: steps must be int, got '10'``) or whatever the
            dataclass's own checks reject, prefixed with ``<owner>: ``.
    """
    fields = [f.name for f in dataclasses.fields(params_type)]
    hints = typing.get_type_hints(params_type)
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            known = f"{noun}s: {', '.join(fields)}" if fields else f"it takes no {noun}s"
            hint = f"; did you mean {close[0]!r}? ({known})" if close else f" ({known})"
            raise ValueError(f"{owner}: unknown {noun} {key!r}{hint}")
        clean[key] = coerce(key, value, hints[key], owner)
    try:
        return params_type(**clean)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{owner}: {error}") from None


def coerce(key: str, value: Any, hint: Any, owner: str) -> Any:
    """``value`` checked against the annotation ``hint``; an int becomes a float where a float is wanted.

    Understands ``bool``, ``int``, ``float``, ``str``, ``X | None``,
    ``tuple[X, ...]`` of those and ``dict``; other annotations are left to
    the dataclass's own checks.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) != 1:
            return value
        hint = others[0]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        element = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{owner}: {key} must be a list, got {value!r}")
        if element in (bool, int, float, str):
            try:
                return tuple(coerce(key, v, element, owner) for v in value)
            except ValueError:
                raise ValueError(f"{owner}: {key} must be a list of {element.__name__} values, got {value!r}") from None
        return tuple(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{owner}: {key} must be a table, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (bool, int, float, str):
        if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
            raise ValueError(f"{owner}: {key} must be {hint.__name__}, got {value!r}")
    return value
