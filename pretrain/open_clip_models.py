"""open_clip as this project uses it: our configs in `pretrain/model_configs/` registered on import (so
`open_clip.create_model("stg-tiny")` works), and model building without open_clip's misleading notice.

The lowest module of pretrain/ that touches open_clip: pretrain/architecture.py (which resolves the architecture) and
pretrain/backbone.py (which builds it) both read it, so neither imports the other for it.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import open_clip

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
if str(CONFIG_DIR) not in {str(p) for p in open_clip.factory._MODEL_CONFIG_PATHS}:
    open_clip.add_model_config(CONFIG_DIR)


def _not_random_init_notice(record: logging.LogRecord) -> bool:
    return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def weights_follow():
    """Build models inside this when their weights are loaded right after (an export) or random initialisation is
    what the config asks for: open_clip's warning "No pretrained weights loaded ... Model initialized randomly"
    (root logger, no option to turn it off) would say nothing or the opposite of what happens."""
    root = logging.getLogger()
    root.addFilter(_not_random_init_notice)
    try:
        yield
    finally:
        root.removeFilter(_not_random_init_notice)
