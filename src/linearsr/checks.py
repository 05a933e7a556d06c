"""Type checks for config values read from files and the command line (YAML, JSON, `key=value`).

Dataclass annotations say what each field holds; `check_value` holds a parsed value to that, so a wrong
value fails when the config is read, in one line naming the key, instead of deep inside training or model
construction as a traceback ("depth": "one" used to reach `width % heads`).
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def describe(hint) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is list:
        return f"a list of {describe(args[0]).removeprefix('a ')}s" if args else "a list"
    if origin is tuple:
        return f"a list of {len(args)} {describe(args[0]).removeprefix('a ')}s" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return _WORDS.get(hint, getattr(hint, "__name__", str(hint)))


class _Mismatch(Exception):
    pass


def _convert(hint, value):
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _convert(option, value)
            except _Mismatch:
                continue
        raise _Mismatch
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 2000.0 from a JSON tool
            return int(value)
        raise _Mismatch
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise _Mismatch from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise _Mismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch
        return [_convert(args[0], v) for v in value] if args else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args and len(value) != len(args)):
            raise _Mismatch
        return tuple(_convert(a, v) for a, v in zip(args, value)) if args else tuple(value)
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    return value  # a type this module does not know: the dataclass itself decides


def check_value(key: str, hint, value):
    """`value` converted to `hint` (int stays int, "1e-3" becomes 1e-3 for a float), else ValueError."""
    try:
        return _convert(hint, value)
    except _Mismatch:
        raise ValueError(f"{key} must be {describe(hint)}, not {value!r}") from None


def check_fields(cls, data: dict, where: str = "") -> dict:
    """Every known field of dataclass `cls` in `data` checked and converted; unknown keys are left for the
    caller to report. Nested dataclass fields are left as they are."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out = dict(data)
    for key, value in data.items():
        if key in names and not dataclasses.is_dataclass(hints[key]):
            out[key] = check_value(f"{where}{key}", hints[key], value)
    return out
