"""The export's backbone as a plain open_clip CLIP file (`<export>/backbone.safetensors`, docs/contracts.md
section 3), for any open_clip tool:

    model = open_clip.create_model(NAME, pretrained="<export>/backbone.safetensors", **KWARGS)

NAME and KWARGS (empty unless the tower's image size was changed, or the activation has no named sibling) are in the
file's metadata (`open_clip_model`, `open_clip_kwargs`) and in export.json. NAME is the trained activation's name:
`ViT-B-32-quickgelu` for a ViT-B-32 trained with QuickGELU. Our own configs (stg-*) need `import pretrain.backbone`
first to be known to open_clip.
"""
from __future__ import annotations

import json

import torch

from pretrain import architecture
from pretrain.model_config import ModelConfig

NAME = "backbone.safetensors"
PREFIX = "backbone.clip."


def write(state: dict[str, torch.Tensor], cfg: ModelConfig, path: str) -> dict:
    """Write the CLIP part of a GlobalLocalModel state_dict to `path`; returns what export.json records of it."""
    from safetensors.torch import save_file

    name, kwargs = architecture.open_clip_name(cfg)
    clip = {k[len(PREFIX):]: _own(v) for k, v in state.items() if k.startswith(PREFIX)}
    if "logit_scale" in clip and clip["logit_scale"].shape == (1,):
        clip["logit_scale"] = clip["logit_scale"].reshape(())  # a plain CLIP's scalar (Backbone made it (1,))
    meta = {"format": "pt", "open_clip_model": name, "open_clip_kwargs": json.dumps(kwargs),
            "quick_gelu": "true" if cfg.quick_gelu else "false", "image_size": str(cfg.image_size),
            "image_mean": json.dumps(list(cfg.image_mean)), "image_std": json.dumps(list(cfg.image_std))}
    save_file(clip, path, metadata=meta)
    return {"file": NAME, "open_clip_model": name, "open_clip_kwargs": kwargs}


def _own(v: torch.Tensor) -> torch.Tensor:
    """fp32, contiguous, in storage of its own (safetensors refuses views into one flat buffer, which ZeRO's
    consolidation returns); copied only where needed, a ViT-B/32 backbone being 600 MB."""
    v = v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
    return v if v.untyped_storage().nbytes() == v.numel() * v.element_size() else v.clone()


def model_config(data: dict, where: str) -> ModelConfig:
    """A ModelConfig of an exported model_config.json, its architecture as that export was trained."""
    data = dict(data)
    if "quick_gelu" not in data:
        data.update(architecture.legacy(data, where))
    return architecture.resolve(ModelConfig(**{**data, "pretrained": None}))
