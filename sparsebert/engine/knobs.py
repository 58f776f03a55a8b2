"""One definition per knob: a dataclass field with a one-line help, its range or choices, checked by type and range
in one place (:func:`check_knobs`, from each config's ``__post_init__``). A knob that two configs share is defined
once and copied with :func:`like` (its help, range and type travel with it; only the default may differ)."""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from typing import Any

_MISSING = dataclasses.MISSING


def knob(default: Any = _MISSING, help: str = "", *, factory: Any = _MISSING, min: float | None = None,
         above: float | None = None, max: float | None = None, choices: tuple | None = None) -> Any:
    """A dataclass field: ``min`` (>=), ``above`` (>), ``max`` (<=) bound a number; ``choices`` lists the values."""
    meta = {"help": help, "min": min, "above": above, "max": max, "choices": choices}
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def like(cls: type, name: str, default: Any = _MISSING, **changes: Any) -> Any:
    """The field ``name`` of ``cls`` (its help, range, choices), with another default where given."""
    f = cls.__dataclass_fields__[name]
    meta = {**f.metadata, **changes}
    if default is _MISSING:
        if f.default_factory is not _MISSING:
            return dataclasses.field(default_factory=f.default_factory, metadata=meta)
        default = f.default
    return dataclasses.field(default=default, metadata=meta)


def _hints(cls: type) -> dict[str, Any]:
    cached = cls.__dict__.get("_knob_hints")
    if cached is None:
        cached = typing.get_type_hints(cls)
        setattr(cls, "_knob_hints", cached)
    return cached


def _kinds(hint: Any) -> tuple:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(k for a in args for k in _kinds(a))
    if typing.get_origin(hint) is typing.ClassVar:
        return ()
    return (typing.get_origin(hint) or hint,)


def _type_ok(value: Any, kinds: tuple) -> bool:
    for k in kinds:
        if k is type(None) and value is None:
            return True
        if k is bool and isinstance(value, bool):
            return True
        if k is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if k is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return True
        if k is str and isinstance(value, str):
            return True
        if isinstance(k, type) and issubclass(k, enum.Enum):
            if isinstance(value, k) or value in [m.value for m in k]:
                return True
        elif k in (dict, list, tuple) and isinstance(value, (list, tuple) if k is not dict else dict):
            return True
        elif k is Any:
            return True
    return False


def _kind_name(kinds: tuple) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping",
             list: "a list", tuple: "a list", type(None): "null"}
    return " or ".join(names.get(k, f"a {getattr(k, '__name__', k)}") for k in kinds)


def check_value(name: str, value: Any, f: dataclasses.Field, hint: Any) -> None:
    """Raise ValueError naming ``name`` when ``value`` has the wrong type or lies outside the field's range."""
    kinds = _kinds(hint)
    if kinds and not _type_ok(value, kinds):
        tip = " (YAML reads 1e-4 as text: write 1.0e-4)" if isinstance(value, str) and float in kinds else ""
        raise ValueError(f"{name} must be {_kind_name(kinds)}, got {value!r}{tip}")
    meta = f.metadata
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ValueError(f"{name} must be one of {list(meta['choices'])}, got {value!r}")
    if value is None or isinstance(value, (bool, str)) or not isinstance(value, (int, float)):
        return
    if meta.get("min") is not None and value < meta["min"]:
        raise ValueError(f"{name} must be >= {meta['min']}, got {value!r}")
    if meta.get("above") is not None and value <= meta["above"]:
        raise ValueError(f"{name} must be > {meta['above']}, got {value!r}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ValueError(f"{name} must be <= {meta['max']}, got {value!r}")


def check_knobs(obj: Any, names: typing.Iterable[str] | None = None) -> None:
    """Check every field of the dataclass ``obj`` (or those in ``names``) by its annotated type and its range."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        if names is None or f.name in names:
            check_value(f.name, getattr(obj, f.name), f, hints.get(f.name))


def check_key(cls: type, name: str, value: Any) -> None:
    """Check one value for the field ``name`` of ``cls`` without building the config (the loader's per-key check)."""
    check_value(name, value, cls.__dataclass_fields__[name], _hints(cls).get(name))
