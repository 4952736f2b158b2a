"""Nested YAML mappings read into typed dataclasses, with dotted ``--set`` overrides.

This module holds the schema-independent half of recipe loading: building a dataclass (and its
nested dataclass sections) from a mapping, where an unknown key is an error naming the closest
valid key and each value is checked against its field's type hint (converting only the harmless
cases, such as YAML's ``1e-4`` read as a string); applying one ``key.sub=value`` override to the
raw mapping; and locating a byte offset's line for error messages. What a recipe contains and
which combinations are valid lives in ``recipe.py``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Union

from tah.errors import ConfigError


def text_line_of(raw: bytes, offset: int) -> int:
    """1-based line number of byte ``offset`` in ``raw``."""
    return raw.count(b"\n", 0, offset) + 1


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``--set key.sub=value`` to the raw recipe dict (value parsed as YAML)."""
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value, e.g. --set optim.lr=1e-4")
    key, _, text = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(
                f"--set {item!r}: {'.'.join(parts[: depth + 1])} is a value, not a section"
            )
        node = child
    node[parts[-1]] = value


def deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [deep_copy(v) for v in value]
    return value


def build_dataclass(cls: type, data: Any, prefix: str, source: str | None) -> Any:
    where = f" in recipe {source}" if source else ""
    label = prefix.rstrip(".") or "the recipe"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be a mapping, got {data!r}{where}")
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown recipe key '{prefix}{key}'{where}{hint} Valid keys of {label}: "
            f"{sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = build_dataclass(typ, value, f"{prefix}{name}.", source)
        else:
            kwargs[name] = _coerce(value, typ, f"{prefix}{name}", where)
    return cls(**kwargs)


def _coerce(value: Any, typ: Any, key: str, where: str) -> Any:
    """Check ``value`` against a field's type, converting the harmless cases (``"1e-4"``)."""
    origin = typing.get_origin(typ)
    if origin in (Union, types.UnionType):
        options = typing.get_args(typ)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, where)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r} is not a valid {_type_name(typ)}{where}")
    if typ is Any:
        return value
    if origin is list:
        (item_type,) = typing.get_args(typ) or (Any,)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}{where}")
        return [_coerce(v, item_type, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}{where}")
        return dict(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-4 (no dot) as a string
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - schema uses only the types above
        return value
    raise ConfigError(f"{key} must be {_type_name(typ)}, got {value!r}{where}")


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) in (Union, types.UnionType):
        return " or ".join(_type_name(t) for t in typing.get_args(typ))
    if typ is type(None):
        return "null"
    return getattr(typ, "__name__", str(typ))
