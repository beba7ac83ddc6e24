"""Bad and repeated input to `python -m cluster.index {embed,build,add,mine,search}` and `cluster/shard.py`, run as a
user runs them: a fresh process, the real CLI. A refusal is exit 2 with exactly one stderr line `error: ...` naming
the file or key and no traceback; finished work re-run is exit 0 saying so. Every refusal here comes before Ray
starts (none of these cases starts a cluster)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDX = [sys.executable, "-m", "cluster.index"]
SHARD = [sys.executable, "cluster/shard.py"]


def make_world(root: str) -> dict:
    """Files the cases point at: a tiny shard set, an export, embeddings of another export, an index with a mined
    table (built in process, without Ray), corpora with bad manifests and captions."""
    import torch

    from index import build, mining, synthetic
    from index.config import BuildSection
    from pretrain.model import build_model, save_export
    from pretrain.model_config import ModelConfig
    from pretrain_fixtures import make_shards

    w = {"root": root}
    w["shards"] = make_shards(os.path.join(root, "shards"), shards=2, per_shard=4, frames=4, size=32)
    w["empty"] = os.path.join(root, "empty")
    os.makedirs(w["empty"])
    torch.manual_seed(0)
    w["export"] = os.path.join(root, "export")
    save_export(build_model(ModelConfig(backbone="stg-micro", embed_dim=16, local_heads=2, frames_in=4,
                                        frames_selected=2, max_words=12)), w["export"])
    w["trunc"] = os.path.join(root, "truncated_export")  # an export whose model.pt was cut short
    os.makedirs(w["trunc"])
    blob = open(os.path.join(w["export"], "model.pt"), "rb").read()
    open(os.path.join(w["trunc"], "model.pt"), "wb").write(blob[: len(blob) // 2])
    open(os.path.join(w["trunc"], "model_config.json"), "w").write(
        open(os.path.join(w["export"], "model_config.json")).read())
    # tag "old": embeddings made by some other export
    data = synthetic.corpus(videos=12, clips_per_video=5, d=16, actions=3, seed=1)
    synthetic.write_shards(os.path.join(w["shards"], "embeddings", "old"), data, 30,
                           stats={"export": "0123456789abcdef"})
    # tag "ix": embeddings, a finished flat index and its mined table
    w["emb"] = os.path.join(w["shards"], "embeddings", "ix")
    synthetic.write_shards(w["emb"], data, 20)
    w["index"] = os.path.join(w["emb"], "index")
    build.build(BuildSection(factory="Flat"), w["emb"], w["index"])
    mining.mine(w["index"], os.path.join(w["index"], "pseudo_positives"), k=5, tau=0.9, search_k=64,
                clips_per_task=20000, nprobe=16)
    w["key"] = str(data["keys"][3])
    # tag "grown": a finished index, then one more embedding shard
    grown = os.path.join(w["shards"], "embeddings", "grown")
    synthetic.write_shards(grown, {k: v[:40] for k, v in data.items()}, 20)
    build.build(BuildSection(factory="Flat"), grown, os.path.join(grown, "index"))
    synthetic.write_shards(grown, {k: v[40:] for k, v in data.items()}, 20, first_shard=2)
    # a corrupt sidecar
    w["broken"] = os.path.join(root, "broken_index")
    os.makedirs(w["broken"])
    open(os.path.join(w["broken"], "index.json"), "w").write("{not json")
    # corpora for the sharder
    for name, manifest, captions in [("nohead", "vid,file\na,a.mp4\n", "{}"),
                                     ("nocaps", "video_id,path\na,a.mp4\n", None),
                                     ("badcaps", "video_id,path\na,a.mp4\n", "{not json"),
                                     ("novideos", "video_id,path\n", "{}"),
                                     ("good", "video_id,path\na,a.mp4\n", "{}")]:
        os.makedirs(os.path.join(root, name))
        open(os.path.join(root, name, "manifest.csv"), "w").write(manifest)
        if captions is not None:
            open(os.path.join(root, name, "caption.json"), "w").write(captions)
    open(os.path.join(root, "bad.yaml"), "w").write("embed: [unclosed\n")
    return w


# (case id, argv with {placeholders} from make_world, expected exit code, text the error line must hold)
S, E, X = "shards={shards}", "embed.checkpoint={export}", "model_tag=ix"
CASES = [
    ("no-command", IDX, 2, "command"),
    ("unknown-command", IDX + ["frobnicate"], 2, "frobnicate"),
    ("unknown-key", IDX + ["embed", S, E, "embed.batchsize=4"], 2, "batchsize"),
    ("wrong-type", IDX + ["embed", S, E, "embed.batch_size=many"], 2, "embed.batch_size"),
    ("missing-config", IDX + ["build", S, X, "--config", "{root}/absent.yaml"], 2, "absent.yaml"),
    ("bad-yaml-config", IDX + ["build", S, X, "--config", "{root}/bad.yaml"], 2, "bad.yaml"),
    ("embed-no-shards", IDX + ["embed", E], 2, "shards"),
    ("embed-missing-shards", IDX + ["embed", "shards={root}/nowhere", E], 2, "nowhere"),
    ("embed-empty-shards", IDX + ["embed", "shards={empty}", E], 2, "empty"),
    ("embed-no-checkpoint", IDX + ["embed", S], 2, "embed.checkpoint"),
    ("embed-missing-export", IDX + ["embed", S, "embed.checkpoint={root}/no_export"], 2, "no_export"),
    ("embed-truncated-export", IDX + ["embed", S, "embed.checkpoint={trunc}", "model_tag=trunc"], 2,
     "{trunc}/model.pt"),
    ("embed-batch-size-0", IDX + ["embed", S, E, "embed.batch_size=0"], 2, "embed.batch_size"),
    ("embed-actors-negative", IDX + ["embed", S, E, "embed.actors=-1"], 2, "embed.actors"),
    ("embed-other-export", IDX + ["embed", S, E, "model_tag=old"], 2, "0123456789abcdef"),
    ("build-no-embeddings", IDX + ["build", S, "model_tag=none"], 2, "none"),
    ("build-bad-vectors", IDX + ["build", S, X, "build.vectors=audio"], 2, "build.vectors"),
    ("build-bad-merge", IDX + ["build", S, X, "build.merge=disk"], 2, "build.merge"),
    ("build-shards-per-task-0", IDX + ["build", S, X, "build.shards_per_task=0"], 2, "build.shards_per_task"),
    ("build-memory-budget-0", IDX + ["build", S, X, "build.memory_budget_mb=0"], 2, "build.memory_budget_mb"),
    ("build-finished", IDX + ["build", S, X], 0, "already_built"),
    ("build-new-shards", IDX + ["build", S, "model_tag=grown"], 2, "cluster.index add"),
    ("build-other-factory", IDX + ["build", S, X, "build.factory=IVF4,Flat"], 2, "build.rebuild=true"),
    ("add-no-index", IDX + ["add", S, X, "index={root}/no_index"], 2, "no_index"),
    ("add-finished", IDX + ["add", S, X], 0, "already_built"),
    ("mine-k-0", IDX + ["mine", S, X, "mine.k=0"], 2, "mine.k"),
    ("mine-tau-1.5", IDX + ["mine", S, X, "mine.tau=1.5"], 2, "mine.tau"),
    ("mine-tau-minus-2", IDX + ["mine", S, X, "mine.tau=-2"], 2, "mine.tau"),
    ("mine-search-k-below-k", IDX + ["mine", S, X, "mine.search_k=3"], 2, "mine.search_k"),
    ("mine-nprobe-0", IDX + ["mine", S, X, "search.nprobe=0"], 2, "search.nprobe"),
    ("mine-clips-per-task-0", IDX + ["mine", S, X, "mine.clips_per_task=0"], 2, "mine.clips_per_task"),
    ("mine-no-index", IDX + ["mine", S, X, "index={root}/no_index"], 2, "no_index"),
    ("mine-finished", IDX + ["mine", S, X], 0, "already_mined"),
    ("mine-other-settings", IDX + ["mine", S, X, "mine.k=3"], 2, "pseudo_positives"),
    ("search-nothing", IDX + ["search", S, X], 2, "search.text"),
    ("search-empty-text", IDX + ["search", S, X, "search.text="], 2, "search.text"),
    ("search-both", IDX + ["search", S, X, "search.text=cut", "search.clip={key}"], 2, "search.text"),
    ("search-k-0", IDX + ["search", S, X, "search.clip={key}", "search.k=0"], 2, "search.k"),
    ("search-unknown-clip", IDX + ["search", S, X, "search.clip=nope__s0000"], 2, "nope__s0000"),
    ("search-no-index", IDX + ["search", S, X, "index={root}/no_index", "search.clip={key}"], 2, "no_index"),
    ("search-corrupt-sidecar", IDX + ["search", S, X, "index={broken}", "search.clip={key}"], 2, "index.json"),
    ("shard-no-manifest", SHARD + ["output={root}/out"], 2, "manifest"),
    ("shard-no-output", SHARD + ["manifest={root}/good/manifest.csv"], 2, "output"),
    ("shard-missing-manifest", SHARD + ["manifest={root}/absent.csv", "output={root}/out"], 2, "absent.csv"),
    ("shard-bad-header", SHARD + ["manifest={root}/nohead/manifest.csv", "output={root}/out"], 2, "nohead"),
    ("shard-no-videos", SHARD + ["manifest={root}/novideos/manifest.csv", "output={root}/out"], 2, "novideos"),
    ("shard-missing-captions", SHARD + ["manifest={root}/nocaps/manifest.csv", "output={root}/out"], 2,
     "caption.json"),
    ("shard-bad-captions", SHARD + ["manifest={root}/badcaps/manifest.csv", "output={root}/out"], 2, "badcaps"),
    ("shard-fps-0", SHARD + ["manifest={root}/good/manifest.csv", "output={root}/out", "fps=0"], 2, "fps"),
    ("shard-size-negative", SHARD + ["manifest={root}/good/manifest.csv", "output={root}/out", "size=-1"], 2,
     "size"),
    ("shard-jpeg-quality-0", SHARD + ["manifest={root}/good/manifest.csv", "output={root}/out", "jpeg_quality=0"],
     2, "jpeg_quality"),
    ("shard-bad-distributor", SHARD + ["manifest={root}/good/manifest.csv", "output={root}/out",
                                       "distributor=threads"], 2, "distributor"),
    ("shard-unknown-key", SHARD + ["manifest={root}/good/manifest.csv", "output={root}/out", "frames=4"], 2,
     "frames"),
]


def run_case(argv: list[str], world: dict, pythonpath: str = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=pythonpath, DS_ACCELERATOR="cpu", RAY_AUTH_MODE="token")
    env.pop("STG_DEBUG", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([a.format(**world) for a in argv], cwd=pythonpath, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(str(tmp_path_factory.mktemp("cli")))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_or_repeated_input(world, case):
    _, argv, code, needle = case
    out = run_case(argv, world)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == code, out.stderr
    if code == 2:
        errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and needle.format(**world) in errors[0], out.stderr
        assert "Started a local Ray instance" not in out.stderr  # refused before any cluster starts
        assert not os.path.exists(os.path.join(world["shards"], "embeddings", "trunc"))  # nor a folder left
    else:
        assert needle in out.stdout and not out.stderr.count("error:")


def test_no_op_leaves_every_byte(world):
    """build, add and mine again on finished work: the index folder is byte-identical afterwards."""
    import hashlib

    def digest():  # the index folder and the table folder inside it
        return {os.path.relpath(os.path.join(d, n), world["index"]):
                hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
                for d, _, names in os.walk(world["index"]) for n in names}

    before = digest()
    for command in ("build", "add", "mine"):
        assert run_case(IDX + [command, "shards={shards}", "model_tag=ix"], world).returncode == 0
    assert digest() == before


def test_help_lists_every_field(world):
    from common.config import field_paths
    from index.config import IndexConfig

    out = run_case(IDX + ["--help"], world)
    assert out.returncode == 0
    for path in field_paths(IndexConfig):
        assert path in out.stdout
    assert "mine.tau=0.9" in out.stdout and "caption cosine gate" in out.stdout
    shard_help = run_case(SHARD + ["--help"], world)
    assert shard_help.returncode == 0 and "fps=1.0" in shard_help.stdout


def test_search_prints_no_faiss_loader_lines(world):
    """A fresh search (FAISS imported for the first time in the process) shows the hits and no loader chatter."""
    out = run_case(IDX + ["search", "shards={shards}", "model_tag=ix", "search.clip={key}", "search.k=3"], world)
    assert out.returncode == 0 and world["key"] in out.stdout
    assert "faiss" not in out.stderr.lower() and "ModuleNotFoundError" not in out.stderr, out.stderr


def test_faiss_logs_loader_lines_unless_silenced(world):
    """The check above can fail: with the loader logger left at INFO the same import prints those lines."""
    code = ("import logging; logging.basicConfig(level=logging.INFO); import faiss")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "faiss.loader" in out.stderr
