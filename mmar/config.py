"""Config plumbing: nested dataclasses <-> dicts, type-checked `--set a.b=value` overrides, validation.

Configs are dataclasses beside the class they configure; recipes are plain functions returning
them. Every value is checked in two passes: `from_dict` / `--set` check each value's *type*
(floats must be finite numbers, ints must be ints, unknown keys are errors), and `validate` then
checks the whole resolved config once: each dataclass's `LIMITS` (a class attribute mapping a
field to an interval such as "[0, 1)" or "(0, inf)") and its `check()` method (choices and rules
that span several fields). Because the rules run on the resolved config, the order of `--set`
options never matters. Files read from disk go through `load_json`, so a hand-edited file fails
with a message naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
        elif (item := _dataclass_items(kind)) is not None:
            if not isinstance(value, list):
                raise ValueError(f"config key {key!r} expects a list of {item.__name__} objects, got {value!r}")
            kwargs[key] = [entry if isinstance(entry, item) else from_dict(item, _object(entry, f"{key}[{i}]"))
                           for i, entry in enumerate(value)]
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
    return _dataclass_argument(kind, dict)


def _dataclass_items(kind: Any) -> type | None:
    """The item class of a `list[SomeDataclass]` annotation, else None."""
    return _dataclass_argument(kind, list)


def _dataclass_argument(kind: Any, container: type) -> type | None:
    """The last type argument of `container[..., SomeDataclass]` when it is a dataclass, else None."""
    args = typing.get_args(kind) if typing.get_origin(kind) is container else ()
    return args[-1] if args and dataclasses.is_dataclass(args[-1]) else None


def _object(value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"config key {key!r} expects a JSON object, got {value!r}")
    return value


def load_json(cls: type, path: str | Path, *, partial: bool = True) -> Any:
    """A validated config dataclass from a JSON file; every error names the file and the key.

    `partial`: missing keys keep their defaults (a user's config); False: every field without a
    default must be there (a file mmar wrote itself).
    """
    path = Path(path)
    values = read_json(path)
    try:
        if not partial:
            required = [f.name for f in dataclasses.fields(cls)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
            missing = [name for name in required if name not in _object(values, "the file")]
            if missing:
                raise ValueError(f"missing key(s) {missing}")
        return validate(from_dict(cls, _object(values, "the file")))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{path}: {error}") from error


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; FileNotFoundError / ValueError naming the file (and the line of a syntax error)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from error


def save_json(config: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """A copy of `config` with each "a.b=value" applied (parsed by the field's type), then validated whole."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        config = _set(config, key.strip().split("."), raw, key.strip())
    return validate(config)


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
    if kind is float or float in typing.get_args(kind):  # "nan" and "inf" too, so they get a clear refusal
        try:
            return float(raw)
        except ValueError:
            pass
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
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {key!r} expects a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"config key {key!r} must be a finite number, got {value!r}")
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
        args = typing.get_args(kind)
        if args and not dataclasses.is_dataclass(args[1]):
            return {name: _coerce(entry, args[1], f"{key}.{name}") for name, entry in value.items()}
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"config key {key!r} expects a list, got {value!r}")
        args = typing.get_args(kind)
        return [_coerce(v, args[0], key) for v in value] if args else value
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, kind):
            raise ValueError(f"config key {key!r} expects a {kind.__name__} object, got {value!r}")
        return value
    return value


def validate(config: Any, prefix: str = "") -> Any:
    """Check a whole config tree (types, finite numbers, each class's LIMITS and check()); returns it.

    A ValueError names the dotted key: "optim.learning_rate must be in (0, inf), got -1.0".
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        key, value = prefix + f.name, getattr(config, f.name)
        _coerce(value, hints[f.name], key)
        if dataclasses.is_dataclass(value):
            validate(value, key + ".")
        elif isinstance(value, dict):
            for name, entry in value.items():
                if dataclasses.is_dataclass(entry):
                    validate(entry, f"{key}.{name}.")
                else:
                    _check_finite(entry, f"{key}.{name}")
        elif isinstance(value, list):
            for index, entry in enumerate(value):
                if dataclasses.is_dataclass(entry):
                    validate(entry, f"{key}[{index}].")
    for name, interval in getattr(type(config), "LIMITS", {}).items():
        value = getattr(config, name)
        if value is not None and not in_interval(value, interval):
            raise ValueError(f"{prefix}{name} must be in {interval}, got {value!r}")
    check = getattr(config, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as error:
            raise ValueError(f"{prefix.rstrip('.') + ': ' if prefix else ''}{error}") from error
    return config


def _check_finite(value: Any, key: str) -> None:
    """Free-form values (a head's options) may be anything JSON holds, except NaN and infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"config key {key!r} must be a finite number, got {value!r}")
    if isinstance(value, (list, tuple)):
        for entry in value:
            _check_finite(entry, key)
    elif isinstance(value, dict):
        for name, entry in value.items():
            _check_finite(entry, f"{key}.{name}")


def in_interval(value: float, interval: str) -> bool:
    """Whether `value` lies in an interval written "[low, high)", "(0, inf)", "[1, 64]" and so on."""
    low, high = (float(part) for part in interval[1:-1].split(","))
    above = value >= low if interval[0] == "[" else value > low
    below = value <= high if interval[-1] == "]" else value < high
    return above and below
