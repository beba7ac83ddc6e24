"""The heads a finetune can name: the built-in ones (their modules, imported when first asked for) and any a caller
registers (`register(SPEC)`, e.g. a head defined outside the library; docs/finetune.md "Adding a head").

This file and each head's own module are the only places that name a head.
"""
from __future__ import annotations

import importlib

from finetune.heads.spec import HeadSpec

BUILTIN = {   # head name -> the module that exports its SPEC
    "wsra": "finetune.heads.wsra",
    "tube_sim": "finetune.heads.tube_sim",
    "fsm": "finetune.heads.fsm",
    "winner": "finetune.heads.winner",
    "vcma": "finetune.heads.vcma",
}
_registered: dict[str, HeadSpec] = {}


def register(spec: HeadSpec) -> HeadSpec:
    """Add a head (a later spec of the same name replaces an earlier registered one; built-ins are kept)."""
    if spec.name in BUILTIN:
        raise ValueError(f"head {spec.name!r} is built in ({BUILTIN[spec.name]})")
    _registered[spec.name] = spec
    return spec


def registered() -> list[HeadSpec]:
    """The heads added with register() in this process (cluster/finetune.py hands them to its Ray tasks)."""
    return list(_registered.values())


def names() -> list[str]:
    return [*BUILTIN, *_registered]


def spec_of(name: str) -> HeadSpec:
    """The spec of head `name`; KeyError for an unknown one."""
    if name in _registered:
        return _registered[name]
    if name not in BUILTIN:
        raise KeyError(name)
    return importlib.import_module(BUILTIN[name]).SPEC


def specs() -> list[HeadSpec]:
    return [spec_of(n) for n in names()]


__all__ = ["BUILTIN", "names", "register", "registered", "spec_of", "specs"]
