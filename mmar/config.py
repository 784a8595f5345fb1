"""Config plumbing: nested dataclasses <-> dicts, and type-checked `--set a.b=value` overrides.

Configs are dataclasses beside the class they configure; recipes are plain functions returning
them. An unknown key or a value of the wrong type is an error that names the key.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Build dataclass `cls` from (possibly partial) nested dicts; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
    kwargs = {}
    for key, value in values.items():
        kind = hints[key]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            kwargs[key] = from_dict(kind, value)
        elif (item := _dataclass_values(kind)) is not None:
            if not isinstance(value, dict):
                raise ValueError(f"config key {key!r} expects a JSON object of {item.__name__} entries, got {value!r}")
            kwargs[key] = {name: entry if isinstance(entry, item) else from_dict(item, _object(entry, f"{key}.{name}"))
                           for name, entry in value.items()}
        else:
            kwargs[key] = _coerce(value, kind, key)
    return cls(**kwargs)


def _dataclass_values(kind: Any) -> type | None:
    """The value class of a `dict[str, SomeDataclass]` annotation, else None."""
    if typing.get_origin(kind) is dict:
        args = typing.get_args(kind)
        if len(args) == 2 and dataclasses.is_dataclass(args[1]):
            return args[1]
    return None


def _object(value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"config key {key!r} expects a JSON object, got {value!r}")
    return value


def load_json(cls: type, path: str | Path) -> Any:
    """A config dataclass from a JSON file (partial: missing keys keep their defaults)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file at {path}")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error
    try:
        return from_dict(cls, _object(values, str(path)))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from error


def save_json(config: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """Return a copy of `config` with each "a.b=value" applied (value parsed by the field's type)."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        config = _set(config, key.strip().split("."), raw, key.strip())
    return config


def _set(node: Any, path: list[str], raw: str, full_key: str) -> Any:
    if not dataclasses.is_dataclass(node):
        raise ValueError(f"unknown config key {full_key!r}")
    fields = {f.name: f for f in dataclasses.fields(node)}
    name = path[0]
    if name not in fields:
        raise ValueError(f"unknown config key {full_key!r}; known here: {', '.join(sorted(fields))}")
    current = getattr(node, name)
    entry_class = _dataclass_values(typing.get_type_hints(type(node))[name])
    if entry_class is not None:  # named entries (e.g. modalities.image.data.source=folder)
        if len(path) < 3:
            raise ValueError(f"config key {full_key!r}: set a field of one entry, e.g. {name}.<entry>.<field>=...")
        if path[1] not in current:
            raise ValueError(f"config key {full_key!r}: no entry {path[1]!r} in {name}; "
                             f"it has {', '.join(current) or 'none'}")
        entry = _set(current[path[1]], path[2:], raw, full_key)
        return dataclasses.replace(node, **{name: {**current, path[1]: entry}})
    if len(path) > 1:
        if isinstance(current, dict):  # free-form options (e.g. a head's config): parse as JSON
            return dataclasses.replace(node, **{name: {**current, ".".join(path[1:]): _parse_json(raw)}})
        return dataclasses.replace(node, **{name: _set(current, path[1:], raw, full_key)})
    kind = typing.get_type_hints(type(node))[name]
    if dataclasses.is_dataclass(kind):
        raise ValueError(f"config key {full_key!r} is a group; set one of its fields, e.g. {full_key}.<field>=...")
    return dataclasses.replace(node, **{name: _coerce(_parse(raw, kind), kind, full_key)})


def _parse_json(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _parse(raw: str, kind: Any) -> Any:
    if kind is str:
        return raw
    if kind is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        return raw
    return _parse_json(raw)


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check `value` against annotation `kind`, converting int->float and list->tuple where needed."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0])
    if kind is Any:
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind in (int, str, bool):
        if type(value) is kind:
            return value
        raise ValueError(f"config key {key!r} expects {kind.__name__}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} expects a list like [1,2], got {value!r}")
        args = typing.get_args(kind)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, key) for v in value)
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} expects a JSON object, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"config key {key!r} expects a list, got {value!r}")
        return value
    return value
