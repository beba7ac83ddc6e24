"""Pretraining from CLIP ViT-B/32 weights in every released format, and exports that rebuild the trained model.

Nothing downloads: one ViT-B-32 with random weights is written once per session in each format as released:
OpenAI's TorchScript archive (a traced module, fp16 matrices, input_resolution/context_length/vocab_size entries,
as `ViT-B-32.pt` is laid out), open_clip's state-dict `open_clip_pytorch_model.bin`, `open_clip_model.safetensors`,
and a Hugging Face cache tree (blobs, snapshot link, refs/main) holding the `openai` tag's file. From each, two
pretraining steps run under Ray (one DeepSpeed worker, the towers frozen but their final norms and projections,
tiny shards), then the export is reloaded the ways the stages reload it (pretrain.load_model, the index's
ShardEmbedder, grounding.query, finetune's feature extraction) and compared with the trained model (the run's own
config built as its workers built it, with the exported weights): the same activation class and outputs within
1e-5. The exported backbone file is loaded by open_clip itself and compared too. Bad weights are refused before
Ray by the CLI in one line.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from conftest import user_env
from pretrain_fixtures import make_shards
from shard_fixtures import make_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "pretrain", "tiny.yaml")
# the OpenAI tag's Hugging Face repo (open_clip's pretrained table) and a snapshot revision of our own
OPENAI_REPO = "timm/vit_base_patch32_clip_224.openai"
REVISION = "0123456789abcdef0123456789abcdef01234567"
# format -> the activation its weights were trained with, as that format says (None: the file does not say)
FORMATS = {"torchscript": "QuickGELU", "bin": "GELU", "safetensors": "GELU", "hf_tag": "QuickGELU"}
# the cheapest pretraining that still builds, trains, checkpoints and exports the whole ViT-B-32
RUN = ("model.backbone=ViT-B-32", "model.freeze=partial", "model.unfrozen_blocks=0", "model.embed_dim=64",
       "model.frames_in=2", "model.frames_selected=2", "model.max_words=8", "model.imposters=1",
       "data.micro_batch=2", "data.shuffle_buffer=0", "cluster.workers=1", "zero_stage=0", "max_steps=2",
       "checkpoint_every=2", "log_every=1", "progress=false")


def _openai_archive(clip: torch.nn.Module, path: str) -> None:
    """A TorchScript archive laid out as OpenAI's ViT-B-32.pt: the traced CLIP module, its matrices in fp16 (OpenAI's
    convert_weights), its LayerNorms and embeddings' biases fp32, and the three int entries OpenAI's holds."""
    model = copy.deepcopy(clip).eval()
    for key, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        model.__dict__.pop(key, None)
        model.register_buffer(key, torch.tensor(value))
    traced = torch.jit.trace_module(model, {"encode_image": (torch.zeros(1, 3, 224, 224),)}, check_trace=False)
    with torch.no_grad():
        for name, p in traced.named_parameters():
            if p.dim() >= 2:
                p.data = p.data.half()
    traced.save(path)


@pytest.fixture(scope="session")
def released(tmp_path_factory):
    """{format: (model.pretrained value, extra env)} for one random ViT-B-32 written in each released format."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32", quick_gelu=True).eval()
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    _openai_archive(clip, str(root / "ViT-B-32.pt"))
    torch.save(state, root / "open_clip_pytorch_model.bin")
    save_file(state, str(root / "open_clip_model.safetensors"))
    # a Hugging Face hub cache as huggingface_hub lays it out: the file is a blob, the snapshot links to it
    repo = root / "hf" / "hub" / f"models--{OPENAI_REPO.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    blob = repo / "blobs" / "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
    os.link(root / "open_clip_model.safetensors", blob)
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    os.symlink(os.path.relpath(blob, snapshot), snapshot / "open_clip_model.safetensors")
    probe = {k: state[k].clone() for k in ("transformer.resblocks.0.mlp.c_fc.weight", "visual.conv1.weight")}
    return {"torchscript": (str(root / "ViT-B-32.pt"), {}),
            "bin": (str(root / "open_clip_pytorch_model.bin"), {}),
            "safetensors": (str(root / "open_clip_model.safetensors"), {}),
            "hf_tag": ("openai", {"HF_HOME": str(root / "hf"), "HF_HUB_CACHE": ""}),
            "probe": probe, "root": str(root)}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(str(tmp_path_factory.mktemp("shards")), shards=1, per_shard=4, frames=2, size=32)


def _env(extra: dict):
    old = {k: os.environ.get(k) for k in extra}
    for k, v in extra.items():
        if v:
            os.environ[k] = v
        else:
            os.environ.pop(k, None)
    return old


def _restore(old: dict) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module", params=list(FORMATS))
def trained(request, released, ray_cluster, shards, tmp_path_factory):
    """(format, run folder, the trained model): two steps from that format's file under Ray, and the model the run
    trained, rebuilt from the run's own config.yaml as its workers built it, with the exported weights."""
    from cluster.pretrain import run_pretrain
    from pretrain.config import from_dict, load
    from pretrain.model import build_model, load_weights

    fmt = request.param
    value, env = released[fmt]
    run = str(tmp_path_factory.mktemp(f"run-{fmt}") / "run")
    old = _env(env)
    notes: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: notes.append(record.getMessage())
    logging.getLogger("pretrain.architecture").addHandler(handler)
    try:
        result = run_pretrain(load(TINY, [f"run={run}", f"data.shards={shards}", f"model.pretrained={value}", *RUN]))
    finally:
        logging.getLogger("pretrain.architecture").removeHandler(handler)
        _restore(old)
    assert result.error is None, result.error
    as_run = from_dict(yaml.safe_load(open(os.path.join(run, "config.yaml"))))
    model = build_model(as_run.model)
    model.load_state_dict(load_weights(os.path.join(run, "export", "model.pt")))
    return fmt, run, model.eval(), notes


def test_the_log_says_which_activation(trained):
    """Before Ray: the correction where the weights say QuickGELU but ViT-B-32 names GELU; a warning naming the
    choice where the file does not say."""
    fmt, _, _, notes = trained
    assert len(notes) == 1, notes
    if FORMATS[fmt] == "QuickGELU":
        assert "is built with GELU" in notes[0] and "recorded as model.quick_gelu=true" in notes[0], notes
    else:
        assert "does not say which activation" in notes[0], notes


def _inputs(model):
    rng = np.random.default_rng(1)
    frames = torch.from_numpy(rng.integers(0, 256, (2, 2, 40, 48, 3), dtype=np.uint8))
    return frames, model.tokenize(["crack two eggs into a bowl", "a person whisks the eggs"])


def _outputs(model, frames, tokens) -> list[torch.Tensor]:
    with torch.no_grad():
        fg, fl, _ = model.encode_frames(frames)
        tg, tl, _ = model.encode_text(tokens)
        return [fg, fl, tg, tl, model.heatmap(frames, tokens)]


def _activation(model) -> str:
    return type(model.backbone.clip.transformer.resblocks[0].mlp.gelu).__name__


def _max_diff(a: list, b: list) -> float:
    return max((torch.as_tensor(x).double() - torch.as_tensor(y).double()).abs().max().item() for x, y in zip(a, b))


def test_reload_is_the_trained_model(trained, released):
    from pretrain.model import load_model

    fmt, run, model, _ = trained
    export = os.path.join(run, "export")
    recorded = json.load(open(os.path.join(export, "model_config.json")))
    assert recorded["quick_gelu"] is (FORMATS[fmt] == "QuickGELU")
    assert recorded["image_size"] == 224 and len(recorded["image_mean"]) == 3
    loaded = load_model(export)
    assert _activation(model) == _activation(loaded) == FORMATS[fmt]
    assert _activation(loaded) == type(loaded.backbone.clip.visual.transformer.resblocks[-1].mlp.gelu).__name__
    frames, tokens = _inputs(model)
    diff = _max_diff(_outputs(model, frames, tokens), _outputs(loaded, frames, tokens))
    assert diff <= 1e-5, (fmt, diff)
    # the frozen blocks hold the released file's weights (fp16 in OpenAI's archive)
    clip = loaded.backbone.clip.state_dict()
    for key, value in released["probe"].items():
        want = value.half().float() if fmt == "torchscript" and value.dim() >= 2 else value
        assert torch.equal(clip[key], want), (fmt, key)
    print(f"{fmt}: max |diff| reload vs trained {diff:.3g}")


def test_stages_load_the_trained_model(trained, tmp_path):
    """The index's embedder, grounding.query and finetune's feature extraction, each loading the export itself."""
    from finetune.features import encode_video, load_encoder
    from grounding.query import ground_query
    from index.embed import ShardEmbedder

    fmt, run, model, _ = trained
    export = os.path.join(run, "export")
    frames, _ = _inputs(model)
    clips, valid = frames.numpy(), np.array([2, 1])
    texts = ["crack two eggs", "whisk"]

    embedder = ShardEmbedder(export, batch_size=2)
    reference = copy.copy(embedder)
    reference.model = model
    embed = _max_diff([embedder.encode_clips(clips, valid), embedder.encode_texts(texts)],
                      [reference.encode_clips(clips, valid), reference.encode_texts(texts)])
    assert _activation(embedder.model) == FORMATS[fmt]
    del embedder, reference

    video = make_video(str(tmp_path / "clip.mp4"), 2.0, size="64x48", rate=4)
    got, want = ground_query(export, video, "crack eggs", fps=2.0), ground_query(None, video, "crack eggs", fps=2.0,
                                                                                  model=model)
    query = _max_diff([[p.score for p in got["predictions"]]], [[p.score for p in want["predictions"]]])
    assert len(got["predictions"]) == len(want["predictions"]) > 0

    encoder = load_encoder(export)
    assert _activation(encoder) == FORMATS[fmt]
    still = clips[0]
    with torch.no_grad():  # as finetune's extraction calls it
        features = _max_diff(encode_video(encoder, still, 2, True), encode_video(model, still, 2, True))
    print(f"{fmt}: max |diff| embed {embed:.3g}, query {query:.3g}, finetune features {features:.3g}")
    assert max(embed, query, features) <= 1e-5, (fmt, embed, query, features)


def test_backbone_file_loads_in_open_clip(trained):
    """export/backbone.safetensors is a plain open_clip CLIP: create_model(NAME, pretrained=FILE) is the trained
    backbone, its activation included."""
    import open_clip

    fmt, run, model, _ = trained
    export = os.path.join(run, "export")
    info = json.load(open(os.path.join(export, "export.json")))["backbone"]
    assert info["open_clip_model"] == ("ViT-B-32-quickgelu" if FORMATS[fmt] == "QuickGELU" else "ViT-B-32")
    assert info["open_clip_kwargs"] == {}
    clip = open_clip.create_model(info["open_clip_model"], pretrained=os.path.join(export, info["file"])).eval()
    assert type(clip.transformer.resblocks[0].mlp.gelu).__name__ == FORMATS[fmt]
    frames, tokens = _inputs(model)
    images = model.preprocess_frames(frames).flatten(0, 1)
    with torch.no_grad():
        ours = model.backbone.clip
        diff = _max_diff([clip.encode_image(images), clip.encode_text(tokens)],
                         [ours.encode_image(images)[0], ours.encode_text(tokens)])
    assert diff <= 1e-5, (fmt, diff)
    print(f"{fmt}: max |diff| open_clip backbone vs trained {diff:.3g}")


def test_tag_resolves_from_the_clip_cache(released, tmp_path, monkeypatch):
    """The `openai` tag from ~/.cache/clip (OpenAI's archive under its release name), the HF cache empty."""
    from pretrain import architecture
    from pretrain.model_config import ModelConfig

    home = tmp_path / "home"
    (home / ".cache" / "clip").mkdir(parents=True)
    os.symlink(released["torchscript"][0], home / ".cache" / "clip" / "ViT-B-32.pt")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    cfg = architecture.check(ModelConfig(backbone="ViT-B-32", pretrained="openai"))
    assert cfg.pretrained == str(home / ".cache" / "clip" / "ViT-B-32.pt") and cfg.quick_gelu is True
    monkeypatch.setenv("HOME", str(tmp_path / "nobody"))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        architecture.resolve(ModelConfig(backbone="ViT-B-32", pretrained="openai"))


def test_legacy_export_is_read_as_written(tmp_path):
    """An export from before the architecture was recorded: a tag brought QuickGELU, so it is rebuilt with it; a
    tag this open_clip does not know is refused, saying what to add."""
    from pretrain.model import ExportError, build_model, load_model, save_export
    from pretrain.model_config import ModelConfig

    model = build_model(ModelConfig(backbone="stg-micro", quick_gelu=True, embed_dim=32, local_heads=2,
                                    frames_in=2, frames_selected=2)).eval()
    save_export(model, str(tmp_path))
    conf = tmp_path / "model_config.json"
    old = {k: v for k, v in json.loads(conf.read_text()).items()
           if k not in ("quick_gelu", "image_size", "image_mean", "image_std")}
    conf.write_text(json.dumps({**old, "backbone": "stg-micro", "pretrained": None}))
    assert _activation(load_model(str(tmp_path))) == "GELU"  # no tag: the name's GELU, as it was built then
    conf.write_text(json.dumps({**old, "pretrained": "not-a-tag"}))
    with pytest.raises(ExportError, match='add "quick_gelu"'):
        load_model(str(tmp_path))


def _cli(run: str, shards: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cluster.pretrain", "--config", TINY, f"run={run}", f"data.shards={shards}",
            *RUN, *extra]


@pytest.mark.parametrize("case", ["truncated", "not_weights", "other_backbone", "contrary_activation"])
def test_bad_weights_are_one_line_before_ray(case, released, shards, tmp_path):
    archive = released["torchscript"][0]
    if case == "truncated":
        cut = tmp_path / "open_clip_model.safetensors"
        with open(released["safetensors"][0], "rb") as f:
            cut.write_bytes(f.read(1 << 20))
        extra, named = (f"model.pretrained={cut}",), str(cut)
    elif case == "not_weights":  # a text file under a weights name was called a file of pickled objects
        text = tmp_path / "ViT-B-32.pt"
        text.write_text("<html>404 Not Found</html>\n")
        extra, named = (f"model.pretrained={text}",), "not a weights file"
    elif case == "other_backbone":  # ViT-B/32 weights on a ViT-B/16: patch and position shapes differ
        extra, named = (f"model.pretrained={released['bin'][0]}", "model.backbone=ViT-B-16"), "ViT-B-16"
    else:  # OpenAI's archive says QuickGELU; the config insists on GELU
        extra, named = (f"model.pretrained={archive}", "model.quick_gelu=false"), "QuickGELU"
    run = str(tmp_path / "run")
    done = subprocess.run(_cli(run, shards, *extra), cwd=ROOT, env=user_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert named in errors[0], errors[0]
    assert "Started a local Ray" not in done.stderr and not os.path.exists(run)
