"""The finetune framework with real parts: a random stg-micro export, a tiny synthetic corpus of real mp4 videos
(ffmpeg decoding), the on-disk feature cache, DeepSpeed's optimizer step on a one-rank gloo group, Ray tasks
(the session's local Ray) and `python -m grounding.evaluate` on the written predictions.

These check plumbing (files, counts, resume, the cache, each loss term active); whether the trained head beats
chance and an untrained head is measured by benchmarks/experiments/finetune_wsra.py on a larger corpus.
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from common import config as C
from conftest import ROOT, shared_path
from finetune import predict as P
from finetune.config import FinetuneConfig
from finetune.datasets import CharadesAdapter, DidemoAdapter, SyntheticAdapter


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from shards.synthetic import SyntheticConfig, generate

    out = str(tmp_path_factory.mktemp("corpus"))
    generate(SyntheticConfig(out=out, n_train=6, n_test=2, min_seconds=12, max_seconds=14, seed=3))
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from pretrain.model import ModelConfig, build_model, save_export

    out = str(tmp_path_factory.mktemp("pretrain") / "export")
    torch.manual_seed(0)
    save_export(build_model(ModelConfig(backbone="stg-micro", embed_dim=64, local_heads=2, frames_in=4,
                                        frames_selected=2, max_words=12)), out)
    return out


def cfg_for(export, corpus, cache, run, *extra):
    return C.load(FinetuneConfig, None, [f"checkpoint={export}", f"dataset.root={corpus}", f"features.cache={cache}",
                                         f"run={run}", "batch_size=4", "max_steps=4", "checkpoint_every=2",
                                         "log_every=1", "optim.lr=0.001", *extra])


def records(run: str) -> list[list[dict]]:
    out = []
    for name in sorted(glob.glob(os.path.join(run, "logs", "*.jsonl"))):
        out.append([json.loads(x) for x in open(name) if x.strip()])
    return sorted(out, key=lambda r: r[0]["step"] if r else 0)


# --- adapters on the real annotation files ----------------------------------------------------------------------
def test_charades_adapter_reads_the_real_files():
    root = shared_path("benchmarks", "charades_sta")
    a = CharadesAdapter(str(root / "charades_sta_train.txt"), str(root / "charades_sta_test.txt"), "", "")
    train, test = a.train_samples(), a.eval_queries()
    assert len(train) == 12408 and len({s.video for s in train}) == 5338
    assert len({s.key for s in train}) == len(train)
    assert len(test) == 3720 and len({q.video for q in test}) == 1334
    assert test[0].key == "0" and test[0].sentence == "person turn a light on"
    assert a.benchmark == "charades_sta" and a.videos("test") == {}   # no videos here: nothing to extract


def test_didemo_adapter_reads_the_real_files():
    root = shared_path("benchmarks", "didemo")
    a = DidemoAdapter(str(root / "val_data.json"), str(root / "test_data.json"), "")
    assert len(a.train_samples()) == 4180
    test = a.eval_queries()
    assert len(test) == 4021 and len({q.video for q in test}) == 1037
    assert a.write_eval_files("unused", {})["annotations"].endswith("test_data.json")


def test_synthetic_adapter_keys_and_eval_files(corpus, tmp_path):
    from shards.tarwriter import sample_key

    a = SyntheticAdapter(corpus)
    caps = json.load(open(os.path.join(corpus, "train", "caption.json")))
    train = a.train_samples()
    assert len(train) == sum(len(c["text"]) for c in caps.values())
    vid = next(iter(caps))
    assert train[0].key == sample_key(vid, 0) and train[0].sentence == caps[vid]["text"][0]
    truth = json.load(open(os.path.join(corpus, "test", "truth", "ground_seg.json")))
    queries = a.eval_queries()
    assert [q.sentence for q in queries] == [s["sentence"] for segs in truth.values() for s in segs]
    files = a.write_eval_files(str(tmp_path), {v: 13.0 for v in truth})
    first = open(files["annotations"]).readline()
    seg = next(iter(truth.values()))[0]
    assert first.split("##")[0].split()[1:] == [f"{seg['segment'][0]:.2f}", f"{seg['segment'][1] + 1:.2f}"]


# --- candidates and moment scores ---------------------------------------------------------------------------------
def test_sliding_windows_follow_sec_4_2():
    w = P.sliding_windows(30.0)
    lengths = np.round(w[:, 1] - w[:, 0], 6)
    assert sorted(set(lengths.tolist())) == [6.0, 9.0, 12.0, 15.0]
    six = w[lengths == 6.0]
    assert np.allclose(np.diff(six[:, 0]), 1.2)               # 80 % overlap: stride 20 % of the window
    assert six[0, 0] == 0 and six[-1, 1] == pytest.approx(30.0) and (w >= 0).all() and (w[:, 1] <= 30 + 1e-9).all()
    spans, written = P.candidates("didemo", 30.0)
    assert len(written) == 21 and written[0] == [0, 0] and spans[-1].tolist() == [25.0, 30.0]


def test_moment_scores_mean_and_contrast():
    times = np.arange(6.0)
    scores = np.array([0, 0, 1, 1, 0, 0], dtype=float)
    spans = np.array([[2.0, 4.0], [0.0, 2.0], [2.0, 3.0], [10.0, 12.0]])
    assert P.moment_scores(scores, times, spans, 1.0, "mean").tolist() == [1.0, 0.0, 1.0, 0.0]
    # contrast: inside mean minus outside mean; the whole action beats half of it
    c = P.moment_scores(scores, times, spans, 1.0, "contrast")
    assert c[0] == pytest.approx(1.0) and c[2] == pytest.approx(1 - 1 / 5) and c[1] == pytest.approx(-0.5)
    # a span past the last frame takes the nearest frame (t = 5, score 0)
    assert c[3] == pytest.approx(0 - 2 / 5)
    ranked = P.rank_moments("didemo", np.r_[np.zeros(10), np.ones(5), np.zeros(15)], np.arange(30.0), 30.0, 1.0,
                            "contrast")
    assert ranked[0] == [2, 2]


# --- one process, no Ray --------------------------------------------------------------------------------------------
def test_batcher_marks_rows_of_the_same_video():
    from finetune.datasets import WeakSample
    from finetune.features import TextFeatures, VideoFeatures
    from finetune.batches import Batcher

    rng = np.random.default_rng(0)
    videos = {f"v{i}": VideoFeatures(f"v{i}", rng.normal(size=(5 + i, 4)).astype(np.float16), np.arange(5.0 + i),
                                     5.0 + i) for i in range(3)}
    samples = [WeakSample(f"v{i}__s{j:04d}", f"v{i}", f"caption {i} {j}") for i in range(3) for j in range(3)]

    def text_of(sentences):
        return TextFeatures(np.ones((len(sentences), 4), np.float32), np.ones((len(sentences), 2, 4), np.float32),
                            np.ones((len(sentences), 2), bool))

    cfg = C.load(FinetuneConfig, None, ["checkpoint=x", "batch_size=3", "queries_per_video=2"])
    batch, rows, _ = Batcher(cfg, samples, videos, text_of).batch(0)
    assert len(rows) == 6 and len({r.key for r in rows}) == 6
    groups = batch.groups.tolist()
    for a in range(6):
        for b in range(6):
            assert (groups[a] == groups[b]) == (rows[a].video == rows[b].video)
    assert batch.video.mask.sum(1).tolist() == [len(videos[r.video].times) for r in rows]


def test_finetune_in_process_resumes_uses_the_cache_and_the_table(export, corpus, tmp_path):
    from finetune.train import run
    from trainer import checkpoint
    from shards.tarwriter import sample_key

    cache, run_dir = str(tmp_path / "cache"), str(tmp_path / "run")
    # a pseudo-positive table (contracts.md section 4) pairing every caption with one of another video
    caps = json.load(open(os.path.join(corpus, "train", "caption.json")))
    vids = sorted(caps)
    table = {sample_key(v, i): [[sample_key(vids[(k + 1) % len(vids)], 0), 0.8, 0.95]]
             for k, v in enumerate(vids) for i in range(len(caps[v]["text"]))}
    table_url = str(tmp_path / "pp.json")
    json.dump({"format": 1, "k": 1, "tau": 0.9, "table": table}, open(table_url, "w"))

    first = run(cfg_for(export, corpus, cache, run_dir, "max_steps=2", f"pseudo_positives={table_url}"))
    assert first["features"]["extracted"] == 8 and first["features"]["cached"] == 0
    assert first["pseudo_positives"]["rows"] == len(table)
    second = run(cfg_for(export, corpus, cache, run_dir, "max_steps=4", f"pseudo_positives={table_url}"))
    assert second["features"]["extracted"] == 0 and second["features"]["cached"] == 8   # reused, not re-extracted
    assert second["features"]["new_sentences"] == 0
    attempts = records(run_dir)
    assert [[r["step"] for r in a] for a in attempts] == [[1, 2], [3, 4]]                  # resumed after step 2
    assert all(r["loss_crov"] >= 0 and r["crov_rows"] > 0 for a in attempts for r in a)  # L_crov is on
    assert {"loss_bg", "loss_vas", "loss_ins_vas"} <= set(attempts[0][0])
    assert checkpoint.complete_steps(run_dir) == [4]                                       # keep_last 1

    # a re-launch into this run with another optimizer and head is refused before anything is written
    import subprocess
    import sys

    from conftest import ROOT, tree_digest, user_env

    before = tree_digest(run_dir)
    args = [f"checkpoint={export}", f"dataset.root={corpus}", f"features.cache={cache}", f"run={run_dir}",
            "batch_size=4", "max_steps=6", "checkpoint_every=2", "log_every=1", "optim.lr=0.01", "wsra.hidden=32",
            f"pseudo_positives={table_url}"]
    done = subprocess.run([sys.executable, "-m", "finetune.train", *args], cwd=ROOT, env=user_env(),
                          capture_output=True, text=True, timeout=600)
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    import re

    named = re.search(r"stored config in (.*?); a resume", errors[0]).group(1).split(", ")
    assert sorted(named) == ["optim.lr", "wsra.hidden"], errors[0]  # max_steps may change, so it is not named
    assert tree_digest(run_dir) == before
    ev = json.load(open(os.path.join(run_dir, "eval.json")))
    assert ev["counts"]["queries"] == len(SyntheticAdapter(corpus).eval_queries())
    assert ev["counts"]["missing_predictions"] == 0 and 0 <= ev["metrics"]["mIoU"] <= 100

    # the untrained baseline: same seed, same head initialisation, no steps
    base = run(cfg_for(export, corpus, cache, str(tmp_path / "untrained"), "train=false", "features.center=true"))
    assert base["steps"] == 0 and not os.path.exists(os.path.join(tmp_path, "untrained", "checkpoints"))
    trained = torch.load(os.path.join(run_dir, "head.pt"))
    initial = torch.load(os.path.join(tmp_path, "untrained", "head.pt"))
    assert trained.keys() == initial.keys() and any(not torch.equal(trained[k], initial[k]) for k in trained)


def test_end_to_end_mode_trains_the_encoder(export, corpus, tmp_path):
    from finetune.train import run

    out = run(cfg_for(export, corpus, str(tmp_path / "cache"), str(tmp_path / "e2e"), "features.end_to_end=true",
                      "max_steps=2", "features.max_frames=6"))
    assert out["steps"] == 2 and out["features"]["extracted"] == 8
    assert glob.glob(os.path.join(tmp_path, "cache", "pixels", "*", "*.npz"))
    tuned = torch.load(os.path.join(tmp_path, "e2e", "encoder.pt"))
    before = torch.load(os.path.join(export, "model.pt"))
    assert any(not torch.equal(tuned[k], before[k]) for k in before if before[k].is_floating_point())
    assert out["predicted_queries"] == out["eval_queries"]


# --- Ray: a sweep of two seeds from one export -----------------------------------------------------------------------
def test_sweep_under_ray_writes_evaluator_output(ray_cluster, export, corpus, tmp_path):
    from cluster.finetune import run_finetunes

    cfg = cfg_for(export, corpus, str(tmp_path / "cache"), "", "sweep.seeds=[0, 1]", "max_steps=3")
    out = run_finetunes(cfg, ray_cluster)
    assert out["features"][0]["extracted"] == 8                      # extracted once, by Ray tasks
    jobs = out["jobs"]
    assert [j.get("error") for j in jobs] == [None, None]
    # results land next to the pretrain run: <run>/finetune/<name>/<job>/
    base = os.path.join(os.path.dirname(export), "finetune", "wsra")
    assert sorted(os.path.basename(j["run"]) for j in jobs) == ["seed0", "seed1"]
    for j in jobs:
        assert j["run"].startswith(base) and j["steps"] == 3
        ev = json.load(open(os.path.join(j["run"], "eval.json")))
        assert ev["benchmark"] == "charades_sta" and {"R1@0.3", "R1@0.5", "mIoU"} <= set(ev["metrics"])
        preds = json.load(open(os.path.join(j["run"], "predictions.json")))
        assert set(preds) == {q.key for q in SyntheticAdapter(corpus).eval_queries()}
    sweep = json.load(open(out["sweep"]))
    assert [s["seed"] for s in sweep["jobs"]] == [0, 1] and all(s["metrics"] for s in sweep["jobs"])
    heads = [torch.load(os.path.join(j["run"], "head.pt")) for j in jobs]
    assert any(not torch.equal(heads[0][k], heads[1][k]) for k in heads[0])   # the seeds differ


def test_cli_sweep_beside_a_neighbouring_ray_matches_the_in_process_sweep(ray_cluster, export, corpus, tmp_path):
    """`python -m cluster.finetune` with its own local Ray, as a user runs it; a second local Ray head with a
    dashboard starts (same environment, so the same Ray temp dir) once the job's Ray is up (issue 29). Every job
    runs once and ends where the same sweep run in process on the session's Ray ends."""
    from cluster.finetune import run_finetunes
    from conftest import neighbour_ray, user_env

    args = [f"checkpoint={export}", f"dataset.root={corpus}", f"features.cache={tmp_path / 'cache'}", "batch_size=4",
            "max_steps=3", "checkpoint_every=2", "log_every=1", "optim.lr=0.001", "sweep.seeds=[0, 1]"]
    ref = run_finetunes(C.load(FinetuneConfig, None, [*args, f"run={tmp_path / 'ref'}"]), ray_cluster)
    env = user_env()
    with open(tmp_path / "err", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "cluster.finetune", *args, f"run={tmp_path / 'cli'}"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        while proc.poll() is None and "Started a local Ray" not in open(tmp_path / "err").read():
            time.sleep(0.1)
        with neighbour_ray(env):
            stdout, _ = proc.communicate(timeout=900)
        err.seek(0)
        assert proc.returncode == 0, err.read()[-3000:]
    lines = [ln for ln in stdout.splitlines() if ln.startswith('{"')]
    assert lines, stdout[-3000:]
    out = json.loads(lines[-1])
    assert [j.get("error") for j in out["jobs"]] == [None, None]
    for a, b in zip(ref["jobs"], out["jobs"]):
        assert len(records(b["run"])) == 1  # one attempt each
        assert b["metrics"] == pytest.approx(a["metrics"], abs=1e-6)
        ha, hb = (torch.load(os.path.join(j["run"], "head.pt")) for j in (a, b))
        assert all(torch.allclose(ha[k], hb[k], atol=1e-6) for k in ha)


# --- bad input as a user meets it (issue 29): each one line before anything is written or Ray is started ---------
def _one_error_line(done) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr[-3000:]
    return lines[0]


def test_a_corpus_with_one_training_video_is_one_error_line(export, tmp_path):
    from conftest import ROOT, user_env
    from shards.synthetic import SyntheticConfig, generate

    one = str(tmp_path / "one")
    generate(SyntheticConfig(out=one, n_train=1, n_test=1, min_seconds=12, max_seconds=12, seed=3))
    done = subprocess.run([sys.executable, "-m", "finetune.train", f"checkpoint={export}", f"dataset.root={one}",
                           f"run={tmp_path / 'r'}", f"features.cache={tmp_path / 'c'}", "batch_size=2",
                           "max_steps=1"], cwd=ROOT, env=user_env(), capture_output=True, text=True, timeout=600)
    assert "1 training video(s)" in _one_error_line(done) and one in done.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()   # nothing extracted, nothing written


@pytest.mark.parametrize("head", ["vcma", "winner", "fsm"])
def test_tube_heads_on_an_instructional_corpus_say_it_is_not_an_stvg_corpus(export, corpus, tmp_path, head):
    from conftest import ROOT, user_env

    done = subprocess.run([sys.executable, "-m", "finetune.train", "--config",
                           f"configs/finetune/{head}_synthetic.yaml", f"checkpoint={export}",
                           f"dataset.root={corpus}", f"run={tmp_path / 'r'}", f"features.cache={tmp_path / 'c'}"],
                          cwd=ROOT, env=user_env(), capture_output=True, text=True, timeout=600)
    line = _one_error_line(done)
    assert "instructional (temporal) synthetic corpus, not an STVG corpus" in line and "detections" not in line
    assert not (tmp_path / "r").exists()


def test_cluster_finetune_checks_the_dataset_before_ray_starts(export, tmp_path):
    from conftest import ROOT, user_env

    ray_tmp = tmp_path / "ray"
    done = subprocess.run([sys.executable, "-m", "cluster.finetune", f"checkpoint={export}",
                           f"dataset.root={tmp_path / 'missing'}", f"run={tmp_path / 'r'}"], cwd=ROOT,
                          env=user_env(RAY_TMPDIR=str(ray_tmp)), capture_output=True, text=True, timeout=600)
    assert "manifest" in _one_error_line(done) and str(tmp_path / "missing") in done.stderr
    assert not ray_tmp.exists() and not (tmp_path / "r").exists()   # no Ray session was started, nothing written


@pytest.mark.parametrize("kind", ["synthetic", "synthetic_stvg"])
def test_two_corpora_with_the_same_ids_keep_their_own_cached_features(export, tmp_path, kind):
    """Two synthetic corpora made with one seed share their video ids but not their videos (issue 29: the cache was
    keyed by export and id, so the second run rewrote the first's entries, or read them when the sizes matched).
    The second corpus's finetune (a fresh `python -m finetune.train`) extracts its own videos into the shared cache, leaving
    the other corpus's entries byte for byte (text.npz is keyed by sentence, so it only gains the new ones)."""
    from conftest import ROOT, tree_digest, user_env
    from shards.synthetic import SyntheticConfig, generate

    stvg = kind == "synthetic_stvg"
    roots = [str(tmp_path / "a"), str(tmp_path / "b")]
    for root, actions in zip(roots, (2, 3)):   # same seed, other timelines: same ids, other bytes
        generate(SyntheticConfig(out=root, n_train=2, n_test=1, min_seconds=12, max_seconds=12, seed=5,
                                 min_actions=actions, max_actions=actions, **({"mode": "stvg"} if stvg else {})))
    names = [sorted(os.listdir(os.path.join(r, "train", "videos"))) for r in roots]
    assert names[0] == names[1] and len(names[0]) == 2
    cache = tmp_path / "cache"
    extra = (["head=tube_sim", "features.max_frames=12", "tubes.tubes=4"] if stvg else []) + [f"dataset.kind={kind}"]

    args = lambda root, run: [f"checkpoint={export}", f"dataset.root={root}", f"features.cache={cache}",  # noqa: E731
                              f"run={tmp_path / run}", "batch_size=2", "max_steps=1", "evaluate=false", *extra]

    def in_process(root):   # the first corpus's features, extracted as a sweep's driver does
        from finetune.families import build_adapter
        from finetune.train import prepare

        cfg = C.load(FinetuneConfig, None, args(root, "unused"))
        return prepare(cfg, build_adapter(cfg.dataset))

    first = in_process(roots[0])
    assert first["extracted"] == 3 and not first["failed"]
    before = tree_digest(cache)
    done = subprocess.run([sys.executable, "-m", "finetune.train", *args(roots[1], "rb")], cwd=ROOT, env=user_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    second = json.load(open(tmp_path / "rb" / "summary.json"))["features"]
    assert second["extracted"] == 3 and second["cached"] == 0   # none of the first corpus's entries served
    after = tree_digest(cache)
    videos = {k: v for k, v in before.items() if not k.endswith("text.npz")}
    assert {k: after[k] for k in videos} == videos   # not one of the first corpus's entries rewritten
    assert len([k for k in after if not k.endswith("text.npz")]) == 2 * len(videos)
    again = in_process(roots[0])   # and the first corpus's own entries still serve it
    assert again["cached"] == 3 and again["extracted"] == 0
