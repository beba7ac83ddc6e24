"""Typed stage configs: dataclass defaults <- YAML file <- `key=value` CLI overrides.

Every stage owns one dataclass. `parse(cls, argv)` gives the resolved config; `dump` echoes it into the
run directory so a run can be reproduced from its own folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] and X | None
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (list, tuple, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        out = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown keys {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    data[keys[-1]] = value


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(cls: type[T], path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults, then the YAML file at `path`, then `a.b=value` overrides (values parsed as YAML)."""
    data: dict = to_dict(cls())
    if path:
        from common import fsio

        loaded = yaml.safe_load(fsio.read_text(path)) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        data = merge(data, loaded)
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not of the form key=value")
        key, raw = ov.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return from_dict(cls, data)


def parser(cls: type, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                epilog=f"Overrides are key=value over {cls.__name__}'s fields (dotted for sections).")
    p.add_argument("--config", help="YAML file with the stage config")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. fps=2 window_frames=16")
    return p


def parse(cls: type[T], argv: Sequence[str] | None = None, description: str = "") -> T:
    args = parser(cls, description).parse_args(argv)
    return load(cls, args.config, args.overrides)


def dump(cfg: Any, url: str) -> None:
    """Echo the resolved config as YAML (local path or fsspec URL)."""
    from common import fsio

    fsio.write_text_atomic(url, yaml.safe_dump(to_dict(cfg), sort_keys=False))
