"""The backbone's whole architecture, resolved once: what model_config.json records and every loader rebuilds.

An open_clip name alone does not fix the forward pass: CLIP released with QuickGELU (OpenAI's, LAION-400M's) loads
into `ViT-B-32` as well as into `ViT-B-32-quickgelu`, and a tag brings its own image mean/std. `resolve` fills
ModelConfig's quick_gelu, image_size, image_mean and image_std from, in order: the config itself, what the weights
say (their file format or open_clip tag), the name's open_clip config. A tag becomes its cached file, so the
workers (and a re-launch) read the same file the driver checked.

Mismatch policy (README "Start from CLIP weights"): weights whose file says how they were trained are built with
that activation, whatever the name says, with a warning in the log (the weights are only right one way; the name
usually just says "ViT-B/32"). An explicit model.quick_gelu that contradicts the file is refused: the user asked for
a model the weights were not trained for.
"""
from __future__ import annotations

import dataclasses
import logging
import os

from common.config import ConfigError
from pretrain.model_config import ModelConfig

log = logging.getLogger(__name__)


def name_config(name: str) -> dict:
    import open_clip

    import pretrain.open_clip_models  # noqa: F401 - registers our configs with open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ConfigError(f"model.backbone={name!r} is not an open_clip model name nor one of pretrain/model_configs")
    return cfg


def _size(value) -> int:
    return int(value[0] if isinstance(value, (tuple, list)) else value)


def resolve(cfg: ModelConfig, weights=None) -> ModelConfig:
    """cfg with every architecture field set and `pretrained` an absolute local file (or None). `weights`: the
    clip_weights.Weights already read from cfg.pretrained (read here otherwise)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from pretrain import clip_weights

    base = name_config(cfg.backbone)
    name_qg = bool(base.get("quick_gelu", False))
    mean, std = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    trained_qg, why, path = None, "", None
    if cfg.pretrained:
        if os.path.isfile(cfg.pretrained):
            path = os.path.abspath(cfg.pretrained)
        else:
            path, tag_cfg = clip_weights.cached_tag_file(cfg.backbone, cfg.pretrained)
            trained_qg = bool(tag_cfg.get("quick_gelu", False)) or name_qg
            why = f"open_clip's tag {cfg.pretrained!r} of {cfg.backbone} says so"
            mean, std = tag_cfg.get("mean", mean), tag_cfg.get("std", std)
            log.info("model.pretrained=%s: %s", cfg.pretrained, path)
        if trained_qg is None:
            weights = weights if weights is not None else clip_weights.read(path)
            trained_qg, why = weights.quick_gelu, weights.why
            if "image_mean" in weights.meta:
                import json
                mean, std = json.loads(weights.meta["image_mean"]), json.loads(weights.meta["image_std"])
    act = {True: "QuickGELU", False: "GELU"}
    if cfg.quick_gelu is not None and trained_qg is not None and cfg.quick_gelu != trained_qg:
        raise ConfigError(f"model.quick_gelu={str(cfg.quick_gelu).lower()} but model.pretrained [{cfg.pretrained}] "
                          f"was trained with {act[trained_qg]} ({why}); drop model.quick_gelu or pass other weights")
    quick_gelu = cfg.quick_gelu if cfg.quick_gelu is not None else trained_qg if trained_qg is not None else name_qg
    if cfg.quick_gelu is None and trained_qg is not None and trained_qg != name_qg:
        log.warning("model.backbone=%s is built with %s, but model.pretrained [%s] was trained with %s (%s): built "
                    "with %s, recorded as model.quick_gelu=%s", cfg.backbone, act[name_qg], cfg.pretrained,
                    act[trained_qg], why, act[trained_qg], str(trained_qg).lower())
    elif path and cfg.quick_gelu is None and trained_qg is None:
        log.warning("model.pretrained [%s] does not say which activation its weights were trained with: %s, as "
                    "model.backbone=%s builds (OpenAI's and LAION-400M's CLIP need QuickGELU: set "
                    "model.quick_gelu=true or name the -quickgelu model)", cfg.pretrained, act[name_qg], cfg.backbone)
    if path:
        log.info("model.backbone=%s from %s: %s", cfg.backbone, path, act[quick_gelu])
    return dataclasses.replace(
        cfg, pretrained=path, quick_gelu=quick_gelu,
        image_size=cfg.image_size or _size(base["vision_cfg"]["image_size"]),
        image_mean=tuple(float(x) for x in (cfg.image_mean or mean)),
        image_std=tuple(float(x) for x in (cfg.image_std or std)))


def check(cfg: ModelConfig) -> ModelConfig:
    """resolve(cfg), having opened the weights file and checked that it loads into the backbone (names and
    shapes, on a model without memory): what cluster.pretrain runs before Ray starts. A WeightsError or
    ConfigError in one line otherwise."""
    import open_clip
    import torch

    from pretrain import clip_weights
    from pretrain.open_clip_models import weights_follow

    weights = clip_weights.read(cfg.pretrained) if cfg.pretrained and os.path.isfile(cfg.pretrained) else None
    out = resolve(cfg, weights)
    if out.pretrained:
        weights = weights if weights is not None else clip_weights.read(out.pretrained)
        kwargs = create_kwargs(out)
        with weights_follow(), torch.device("meta"):
            clip = open_clip.create_model(out.backbone, device=torch.device("meta"), **kwargs)
        clip_weights.fit(clip, weights, out.backbone, resize="force_image_size" in kwargs)
    return out


def is_resolved(cfg: ModelConfig) -> bool:
    return (cfg.quick_gelu is not None and cfg.image_size > 0 and cfg.image_mean is not None
            and cfg.image_std is not None)


def create_kwargs(cfg: ModelConfig) -> dict:
    """open_clip.create_model keyword arguments that build the resolved architecture of cfg (random weights)."""
    base = name_config(cfg.backbone)
    kwargs: dict = {"quick_gelu": bool(cfg.quick_gelu)}
    if cfg.image_size != _size(base["vision_cfg"]["image_size"]):
        kwargs["force_image_size"] = cfg.image_size
    return kwargs


def open_clip_name(cfg: ModelConfig) -> tuple[str, dict]:
    """The open_clip name (and the create_model keywords beyond it) that builds cfg's backbone as a plain CLIP model:
    the -quickgelu sibling of the name where the activation differs and open_clip has one."""
    import open_clip

    name = cfg.backbone
    if bool(name_config(name).get("quick_gelu", False)) != bool(cfg.quick_gelu):
        sibling = name[: -len("-quickgelu")] if name.endswith("-quickgelu") else f"{name}-quickgelu"
        if open_clip.get_model_config(sibling) is not None and \
                bool(open_clip.get_model_config(sibling).get("quick_gelu", False)) == bool(cfg.quick_gelu):
            name = sibling
    kwargs = create_kwargs(dataclasses.replace(cfg, backbone=name))
    if bool(name_config(name).get("quick_gelu", False)) == bool(cfg.quick_gelu):
        kwargs.pop("quick_gelu")
    elif cfg.quick_gelu:
        kwargs = {"force_quick_gelu": True, **{k: v for k, v in kwargs.items() if k != "quick_gelu"}}
    return name, kwargs


def legacy(data: dict, where: str) -> dict:
    """The architecture fields of a model_config.json written before they were recorded, as that pretraining built
    the backbone: a tag brought its QuickGELU and mean/std, anything else the name's config and OpenAI's mean/std.
    A tag this open_clip does not know cannot be read back faithfully: refused, saying what to add."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    name, pretrained = data.get("backbone", ModelConfig.backbone), data.get("pretrained")
    base = name_config(name)
    quick_gelu, mean, std = bool(base.get("quick_gelu", False)), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    is_path = pretrained and ("/" in pretrained or os.sep in pretrained or "." in os.path.basename(pretrained))
    if pretrained and not is_path:
        tag = open_clip.pretrained.get_pretrained_cfg(name, pretrained)
        if not tag:
            from common.errors import UserError

            raise UserError(
                f"export [{where}]: written before model_config.json recorded the backbone's activation, with "
                f"pretrained={pretrained!r}, which this open_clip does not know as a tag of {name}; add "
                f"\"quick_gelu\": true|false (as it was trained) to that file, or re-run pretraining")
        quick_gelu = quick_gelu or bool(tag.get("quick_gelu", False))
        mean, std = tag.get("mean", mean), tag.get("std", std)
    return {"quick_gelu": quick_gelu, "image_size": _size(base["vision_cfg"]["image_size"]),
            "image_mean": list(mean), "image_std": list(std)}
