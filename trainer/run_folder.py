"""A run folder belongs to one config: a re-launch into it may change only what a stage lists as resumable.

The stored `config.yaml` (and `deepspeed.json`) describe the checkpoints beside them; a launch whose model, data or
optimisation differs would resume those checkpoints under another contract and then overwrite the records that
describe them. `refuse_changes` compares before anything is written and names every differing key; a new run
is asked for with another `run=`.
"""
from __future__ import annotations

import json

import yaml

from common import fsio
from common.errors import UserError


class RunConflict(UserError):
    """A launch into an existing run folder with a config the run was not made with."""


def _flat(data, prefix: str = "") -> dict:
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(data, tuple):
        data = list(data)
    return {prefix.rstrip("."): data}


def _allowed(key: str, resumable: tuple[str, ...]) -> bool:
    return any(key == r or key.startswith(r + ".") for r in resumable)


def differences(stored: dict, new: dict, resumable: tuple[str, ...] = (), defaults: dict | None = None) -> list[str]:
    """Dotted keys whose values differ (or exist on one side only), resumable ones left out. A key the stored
    config lacks (written before the field existed) counts only if the new value is not the field's default."""
    a, b = _flat(stored), _flat(new)
    d = _flat(defaults) if defaults is not None else {}
    absent = object()
    return sorted(k for k in set(a) | set(b)
                  if a.get(k, d.get(k, absent)) != b.get(k, absent) and not _allowed(k, resumable))


def refuse_changes(run: str, config: dict, resumable: tuple[str, ...], deepspeed: dict | None = None,
                   defaults: dict | None = None) -> bool:
    """Raise RunConflict when `run` holds a config.yaml (or deepspeed.json) this launch differs from outside
    `resumable`; returns whether the run existed. Reads only. `defaults`: the config class's defaults."""
    url = fsio.join(run, "config.yaml")
    if not fsio.exists(url):
        return False
    stored = yaml.safe_load(fsio.read_text(url)) or {}
    # YAML turns tuples into lists; compare what the file would hold
    as_yaml = (lambda d: yaml.safe_load(yaml.safe_dump(d, sort_keys=False)))
    diff = differences(stored, as_yaml(config), resumable, as_yaml(defaults) if defaults is not None else None)
    ds_url = fsio.join(run, "deepspeed.json")
    if deepspeed is not None and fsio.exists(ds_url):
        diff += [f"deepspeed.json:{k}" for k in differences(fsio.read_json(ds_url), json.loads(json.dumps(deepspeed)))]
    if diff:
        shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise RunConflict(f"run [{url}]: this launch differs from the run's stored config in {shown}; a resume may "
                          f"change only {', '.join(resumable)} (start a new run with another run=)")
    return True
