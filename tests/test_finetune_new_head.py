"""Adding a head is one file (docs/finetune.md "Adding a head"): a head defined here, outside the library, is
registered with its HeadSpec and trained two steps as a Ray task by cluster.finetune, on a real tiny synthetic
corpus (ffmpeg decoding) and a random stg-micro export, its predictions scored by grounding.evaluate."""
import json
import os
import sys
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common import config as cfglib
from finetune import config as C
from finetune.heads.base import GroundingHead
from finetune.heads.registry import register
from finetune.heads.spec import TEMPORAL, HeadSpec


@dataclass
class ToyConfig:
    temperature: float = 0.1         # logit temperature of the video-sentence NCE


class ToyHead(GroundingHead):
    """Frame score = cos(P frame, sentence); trained with an NCE on each video's mean frame score."""

    name = "toy"

    def __init__(self, dim: int, cfg: ToyConfig):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.temperature = cfg.temperature

    def frame_scores(self, video, text):
        frames = F.normalize(self.proj(video.frames), dim=-1)
        return torch.einsum("btd,bd->bt", frames, F.normalize(text.sentence, dim=-1))

    def loss(self, batch):
        v = F.normalize(self.proj(batch.video.frames), dim=-1)
        w = batch.video.mask.float() / batch.video.mask.float().sum(1, keepdim=True).clamp_min(1)
        pooled = F.normalize(torch.einsum("btd,bt->bd", v, w), dim=-1)
        logits = pooled @ F.normalize(batch.text.sentence, dim=-1).T / self.temperature
        loss = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
        return {"loss": loss}


def _validate(section: ToyConfig, cfg) -> None:
    if section.temperature <= 0:
        raise cfglib.ConfigError("toy.temperature must be > 0")


SPEC = HeadSpec(name="toy", head=ToyHead, config=ToyConfig, family=TEMPORAL, validate=_validate)


@pytest.fixture(scope="module")
def toy_registered():
    import ray

    register(SPEC)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # Ray's workers cannot import this file
    return SPEC


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from shards.synthetic import SyntheticConfig, generate

    out = str(tmp_path_factory.mktemp("corpus"))
    generate(SyntheticConfig(out=out, n_train=4, n_test=2, min_seconds=8, max_seconds=10, seed=5))
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from pretrain.model import ModelConfig, build_model, save_export

    out = str(tmp_path_factory.mktemp("pretrain") / "export")
    torch.manual_seed(0)
    save_export(build_model(ModelConfig(backbone="stg-micro", embed_dim=64, local_heads=2, frames_in=4,
                                        frames_selected=2, max_words=12)), out)
    return out


def test_a_registered_head_has_its_config_section_and_checks(toy_registered):
    cfg = C.load(None, ["checkpoint=x", "dataset.root=y", "head=toy", "toy.temperature=0.5"])
    assert cfg.toy == ToyConfig(temperature=0.5)
    with pytest.raises(cfglib.ConfigError, match="toy.temperature"):
        C.load(None, ["checkpoint=x", "dataset.root=y", "head=toy", "toy.temperature=0"])
    with pytest.raises(cfglib.ConfigError, match="does not fit"):   # its family's datasets only
        C.load(None, ["checkpoint=x", "dataset.root=y", "head=toy", "dataset.kind=synthetic_stvg"])


def test_a_head_defined_outside_the_library_trains_under_ray(ray_cluster, toy_registered, export, corpus, tmp_path):
    from cluster.finetune import run_finetunes

    cfg = cfglib.load(C.config_class(), None, [
        f"checkpoint={export}", f"dataset.root={corpus}", f"features.cache={tmp_path / 'cache'}",
        f"run={tmp_path / 'run'}", "head=toy", "name=toy", "toy.temperature=0.2", "batch_size=4", "max_steps=2",
        "checkpoint_every=2", "log_every=1"])
    out = run_finetunes(cfg, ray_cluster)
    job, = out["jobs"]
    assert job.get("error") is None and job["head"] == "toy" and job["steps"] == 2
    assert job["predicted_queries"] == job["eval_queries"] > 0
    run = str(tmp_path / "run")
    assert json.load(open(os.path.join(run, "head.json")))["config"] == {"temperature": 0.2}
    ev = json.load(open(os.path.join(run, "eval.json")))
    assert ev["benchmark"] == "charades_sta" and "mIoU" in ev["metrics"]
    torch.manual_seed(0)
    initial = ToyHead(64, ToyConfig()).state_dict()
    trained = torch.load(os.path.join(run, "head.pt"))
    assert not torch.equal(trained["proj.weight"], initial["proj.weight"])   # the two steps moved it
