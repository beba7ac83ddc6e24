"""Typed stage configs: dataclass defaults <- YAML file <- `key=value` CLI overrides.

Every stage owns one dataclass. `parse(cls, argv)` gives the resolved config; `dump` echoes it into the
run directory so a run can be reproduced from its own folder.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from typing import Any, Sequence, TypeVar

import yaml

from common.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config that cannot be meant: unknown key, wrong type, out-of-range value, unreadable YAML."""


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
        if value is None:  # `key:` or `key=null`: "None" as a string would pass as a path or a query
            raise ConfigError(f"{where}: expected a string, got null")
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def field_paths(cls: type, prefix: str = "") -> list[str]:
    """Every dotted field name of a config dataclass, sections included."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        out.append(path)
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(field_paths(tp, path + "."))
    return out


def from_dict(cls: type[T], data: dict, where: str = "", root: type | None = None) -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        # name the section a misplaced key really lives in (`lr` given at the top level means `optim.lr`)
        paths = field_paths(root or cls)
        hints_for = []
        for k in sorted(unknown):
            elsewhere = [p for p in paths if p.rsplit(".", 1)[-1] == k]
            if elsewhere:
                hints_for.append(f"{k!r} is {' or '.join(elsewhere)}")
        hint = f" ({'; '.join(hints_for)})" if hints_for else ""
        raise ConfigError(f"{where or cls.__name__}: unknown keys {sorted(unknown)}{hint}; known: {sorted(names)}")
    kwargs = {}
    for k, v in data.items():
        tp, at = hints[k], f"{where}.{k}" if where else k
        kwargs[k] = from_dict(tp, v, at, root or cls) if dataclasses.is_dataclass(tp) and isinstance(v, dict) \
            else _coerce(tp, v, at)
    return cls(**kwargs)


def check_ranges(rules: Sequence[tuple[str, Any, bool, str]]) -> None:
    """(dotted key, value, holds, rule) rows; the first that does not hold is a ConfigError naming its key."""
    for key, value, holds, rule in rules:
        if not holds:
            raise ConfigError(f"config [{key}]: {value!r} is out of range, must be {rule}")


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


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that `1e-3` and `1e9` are floats (PyYAML reads them as strings
    because YAML 1.1 asks for a dot and a signed exponent)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str, what: str) -> Any:
    """Parse YAML with the float rule above; a syntax error is a ConfigError naming `what`."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what}: not valid YAML{at}: {problem}") from None


def _read_config_text(path: str) -> str:
    """A local config file is read without fsspec (benchmarks/gpu/check.py runs where fsspec is absent); a URL
    through common.fsio."""
    from common import fsio

    if fsio.is_local(path):
        local = path[len("file://"):] if path.startswith("file://") else path
        if not os.path.exists(local):
            raise ConfigError(f"config file [{path}]: not found")
        with open(local, encoding="utf-8") as fh:
            return fh.read()
    if not fsio.exists(path):
        raise ConfigError(f"config file [{path}]: not found")
    return fsio.read_text(path)


def load(cls: type[T], path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults, then the YAML file at `path`, then `a.b=value` overrides (values parsed as YAML)."""
    data: dict = to_dict(cls())
    if path:
        loaded = yaml_load(_read_config_text(path), f"config file [{path}]") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file [{path}]: top level must be a mapping")
        data = merge(data, loaded)
    return from_dict(cls, apply_overrides(data, overrides))


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """`a.b=value` overrides (values parsed as YAML) set in the nested dict `data` (changed in place, returned)."""
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override [{ov}]: not of the form key=value")
        key, raw = ov.split("=", 1)
        # a blank value is the empty string (YAML would read it as null)
        _set_dotted(data, key.strip(), yaml_load(raw, f"override [{ov}]") if raw.strip() != "" else raw)
    return data


def _field_comments(cls: type) -> dict[str, str]:
    """The `# comment` after each field in the class source (the dataclasses carry their docs that way)."""
    import inspect

    out = {}
    for klass in reversed(cls.__mro__):   # a class built at run time (make_dataclass) has its bases' comments
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in src.splitlines():
            m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.*)$", line)
            if m:
                out[m.group(1)] = m.group(2).strip()
    return out


def describe_fields(cls: type, prefix: str = "") -> list[str]:
    """One line per field: dotted name, default, and the field's comment; sections recurse."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    defaults = to_dict(cls())
    lines = []
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines.append(f"  [{name}]" + (f"  {comments[f.name]}" if f.name in comments else ""))
            lines.extend(describe_fields(tp, name + "."))
            continue
        default = yaml.safe_dump(defaults[f.name], default_flow_style=True, width=10**6).strip()
        default = default[:-4] if default.endswith("\n...") else default.removesuffix("...").strip()
        line = f"  {name}={default}"
        if f.name in comments:
            line = f"{line:<40} {comments[f.name]}"
        lines.append(line)
    return lines


def parser(cls: type, description: str, prog: str | None = None) -> argparse.ArgumentParser:
    """argparse with --config, --debug and key=value overrides; --help lists every field with its default."""
    epilog = (f"Overrides are key=value over {cls.__name__}'s fields (dotted for sections), values parsed as YAML.\n"
              f"Fields (default, meaning):\n" + "\n".join(describe_fields(cls)))
    p = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with the stage config")
    p.add_argument("--debug", action="store_true", help="show tracebacks of expected errors too (or STG_DEBUG=1)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the fields listed below")
    return p


def parse(cls: type[T], argv: Sequence[str] | None = None, description: str = "") -> T:
    args = parser(cls, description).parse_args(argv)
    return load(cls, args.config, args.overrides)


def dump(cfg: Any, url: str) -> None:
    """Echo the resolved config as YAML (local path or fsspec URL)."""
    from common import fsio

    fsio.write_text_atomic(url, yaml.safe_dump(to_dict(cfg), sort_keys=False))
