"""The STVG finetune path with real parts: a tiny synthetic STVG corpus of real mp4 videos, a random stg-micro
export, region features through RoI-Align and their cache, linked tubes, DeepSpeed steps, Ray tasks (the session's
local Ray) and grounding.evaluate's vidstg protocol on the written predictions.

Whether a trained STVG head beats the zero-shot row is for benchmarks (docs/stvg.md); these check the plumbing:
one tube type, no truth on the weak path, both kinds of head output scored, a finetune that resumes under Ray."""
from __future__ import annotations

import glob
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from common import config as C
from common.errors import UserError
from finetune import predict as P
from finetune.config import FinetuneConfig
from finetune.datasets_stvg import SyntheticStvgAdapter
from finetune.heads.base import GroundingHead
from finetune.heads.stvg import TubeOutput
from grounding.tube import Tube

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT, "DS_ACCELERATOR": "cpu"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from shards.synthetic import SyntheticConfig, generate

    out = str(tmp_path_factory.mktemp("stvg_corpus"))
    generate(SyntheticConfig(out=out, mode="stvg", seed=1, n_train=4, n_test=2, min_seconds=10, max_seconds=12))
    return out


@pytest.fixture(scope="module")
def weak_corpus(corpus, tmp_path_factory):
    """The same corpus without the train split's truth: a weak finetune must not need it."""
    out = str(tmp_path_factory.mktemp("stvg_weak") / "corpus")
    shutil.copytree(corpus, out)
    shutil.rmtree(os.path.join(out, "train", "truth"))
    return out


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from pretrain_fixtures import tiny_export

    return tiny_export(str(tmp_path_factory.mktemp("pretrain") / "export"))


def cfg_for(export, corpus, cache, run, *extra) -> FinetuneConfig:
    return C.load(FinetuneConfig, None, [f"checkpoint={export}", "dataset.kind=synthetic_stvg",
                                         f"dataset.root={corpus}", "head=tube_sim", f"features.cache={cache}",
                                         f"run={run}", "batch_size=3", "max_steps=2", "checkpoint_every=2",
                                         "log_every=1", "features.max_frames=12", "tubes.tubes=4", *extra])


@pytest.fixture(scope="module")
def features(export, corpus, tmp_path_factory):
    """(cfg, store, train videos, test videos) with the region features extracted once."""
    from finetune.families import build_adapter
    from finetune.train import feature_store, prepare

    cfg = cfg_for(export, corpus, str(tmp_path_factory.mktemp("cache")), "unused")
    adapter = build_adapter(cfg.dataset)
    counts = prepare(cfg, adapter)
    assert counts["extracted"] == 6 and not counts["failed"]
    store = feature_store(cfg, counts["model_key"])
    return cfg, store, store.load_all(adapter.videos("train")), store.load_all(adapter.videos("test"))


# --- one tube type ----------------------------------------------------------------------------------------------------
def test_one_tube_type_everywhere(corpus, tmp_path):
    from grounding import metrics as M
    from grounding.readers import read_stvg_predictions, read_vidstg
    from tubes.linking import link_tubes

    q = read_vidstg(os.path.join(corpus, "test", "truth", "vidstg.json"))[0]
    assert isinstance(q.boxes, Tube) and sorted(q.boxes) == list(range(*q.tube)) and q.boxes.span == q.tube
    assert M.Tube is Tube
    boxes = np.array([[[0, 0, 10, 10]], [[1, 0, 11, 10]], [[2, 0, 12, 10]]], np.float32)
    linked = link_tubes(np.arange(3), np.ones((3, 1, 2), np.float32), boxes, np.ones((3, 1), bool), m=1)
    assert isinstance(linked[0], Tube) and linked[0].index.tolist() == [0, 0, 0] and linked[0].extent == (0, 2)
    # a tube with gaps: interpolated inside, held outside, written and read back as the evaluator reads it
    t = Tube.from_boxes({2: [0, 0, 10, 10], 4: [4, 0, 14, 10]})
    pred = t.with_span((1, 6))
    assert pred.sted == (1, 6) and sorted(pred) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(pred[3], [2, 0, 12, 10])
    np.testing.assert_allclose(pred[1], [0, 0, 10, 10]) and np.testing.assert_allclose(pred[5], [4, 0, 14, 10])
    url = str(tmp_path / "p.json")
    json.dump({q.key: pred.to_json()}, open(url, "w"))
    back = read_stvg_predictions(url)[q.key]
    assert isinstance(back, Tube) and back.sted == (1, 6) and sorted(back) == sorted(pred)
    # the metrics take any Tube: a truth tube predicted as itself scores 1
    frames = M.sample_frame_ids(q.span[0], q.span[1], q.video_fps)
    assert M.stvg_query_metrics(frames, q.tube, q.tube, q.boxes, q.boxes.with_span(q.tube)) == {"tIoU": 1.0,
                                                                                              "vIoU": 1.0}


# --- the weak path holds no truth ---------------------------------------------------------------------------------
def _reachable(obj, seen=None):
    """Every object reachable from obj through attributes, dataclass fields and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, type(None), np.ndarray, torch.Tensor)):
        return
    seen.add(id(obj))
    yield obj
    if hasattr(obj, "__self__"):  # a bound method leads to its object
        yield from _reachable(obj.__self__, seen)
        return
    children = (list(obj.values()) + list(obj.keys()) if isinstance(obj, dict) else
                list(obj) if isinstance(obj, (list, tuple, set)) else list(vars(obj).values())
                if hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module) else [])
    for c in children:
        yield from _reachable(c, seen)


def test_weak_adapter_exposes_no_truth(weak_corpus, corpus, export, tmp_path):
    from common.errors import UserError
    from finetune.datasets import WeakSample
    from finetune.datasets_stvg import StvgAdapter, TrainTruth
    from finetune.features import FeatureStore
    from finetune.stvg_batches import StvgBatcher
    from finetune.stvg_features import tokenizer_of
    from finetune.train import feature_store, prepare
    from grounding.readers.stvg import StvgQuery

    weak = SyntheticStvgAdapter(weak_corpus)
    samples = weak.train_samples()
    queries = json.load(open(os.path.join(corpus, "train", "queries.json")))
    assert [(s.key, s.video, s.sentence) for s in samples] == [(q["key"], q["video"], q["sentence"]) for q in queries]
    assert all(type(s) is WeakSample and set(vars(s)) == {"key", "video", "sentence"} for s in samples)
    with pytest.raises(UserError):  # the truth accessor needs the files the weak path never opened
        weak.train_truth()

    cfg = cfg_for(export, weak_corpus, str(tmp_path / "cache"), "unused")
    counts = prepare(cfg, weak)
    store = feature_store(cfg, counts["model_key"])
    videos = store.load_all(weak.videos("train"))
    batcher = StvgBatcher(cfg, samples, videos, store.text_store.text, tokenizer_of(export))   # as train.run does
    batch, rows, _ = batcher.batch(0)
    assert batch.targets is None and batch.video.geometry is not None
    reachable = list(_reachable((batcher, batch, rows)))
    assert any(isinstance(o, FeatureStore) for o in reachable)                   # the walk follows bound methods
    leaked = [o for o in reachable if isinstance(o, (TrainTruth, StvgQuery, StvgAdapter))]
    assert leaked == [] and batch.said is None
    # a weak head whose spec asks for `said` (winner.when) also gets every training sentence of each batch video,
    # parsed, with its video's group: the video-level labels, and still no truth
    from finetune.heads.when_score import VerbIds
    from finetune.heads.winner import WinnerConfig

    prep = VerbIds(WinnerConfig(when=True))
    with_said = StvgBatcher(cfg, samples, videos, store.text_store.text, tokenizer_of(export), prep=prep, said=True)
    b2, rows2, _ = with_said.batch(0)
    video_of_group = {g: r.video for g, r in zip(b2.groups.tolist(), rows2)}
    want = [(g, s.sentence) for g, v in video_of_group.items() for s in samples if s.video == v]
    assert len(b2.said.groups) == len(want) > len(rows2)
    assert b2.said.groups.tolist() == [g for g, _ in want]
    assert torch.equal(b2.said.parsed.ids, prep([x for _, x in want], None, None).ids)
    assert [o for o in _reachable((with_said, b2, rows2)) if isinstance(o, (TrainTruth, StvgQuery))] == []
    # the same batcher for a supervised head gets the truth, and only through train_truth()
    truth = SyntheticStvgAdapter(corpus).train_truth()
    sup = StvgBatcher(cfg, samples, videos, store.text, tokenizer_of(export), truth=truth).batch(0)[0]
    tg, ids = sup.targets, sup.video.geometry.frame_ids
    for r, s in enumerate(rows):
        t = truth[s.key]
        assert tuple(tg.sted[r].tolist()) == t.sted
        inside = (ids[r] >= t.sted[0]) & (ids[r] < t.sted[1]) & sup.video.mask[r]
        assert tg.box_mask[r].tolist() == inside.tolist()
        for j in np.flatnonzero(inside.numpy()):
            np.testing.assert_allclose(tg.boxes[r, j].numpy(), t.tube[int(ids[r, j])])


def test_text_batch_carries_sentences_and_word_spans(features):
    from finetune.stvg_batches import text_batch
    from finetune.stvg_features import tokenizer_of

    cfg, store, _, _ = features
    s = "The red cube left of the blue bowl is cut"
    store.extract_text([s])
    tb = text_batch(store.text([s]), [s], tokenizer_of(cfg.checkpoint))
    assert tb.sentences == [s]
    spans = tb.token_spans[0]
    assert [s[a:b].lower() for a, b in spans] == s.lower().split()[:len(spans)]
    assert len(spans) == int(tb.word_mask[0].sum())     # one span per word feature row


# --- head outputs -> vidstg predictions -------------------------------------------------------------------------------
class _Oracle(GroundingHead):
    """Answers from the test truth: boxes directly, or region scores = IoU with the truth box, or tube scores."""
    name = "oracle"

    def __init__(self, truth: dict, mode: str):
        super().__init__()
        self.truth, self.mode = truth, mode
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def loss(self, batch):
        raise AssertionError("not trained")

    def frame_scores(self, video, text):
        ids = video.geometry.frame_ids
        return torch.stack([((ids[b] >= self.truth[s].tube[0]) & (ids[b] < self.truth[s].tube[1])).float()
                            for b, s in enumerate(text.sentences)])

    def tube_output(self, video, text):
        from tubes.linking import pairwise_iou

        geo = video.geometry
        if self.mode == "boxes":
            boxes = torch.stack([torch.from_numpy(self.truth[s].boxes.at_frames(geo.frame_ids[b].numpy()))
                                 for b, s in enumerate(text.sentences)]).float()
            sted = torch.tensor([list(self.truth[s].tube) for s in text.sentences])
            return TubeOutput(sted=sted, boxes=boxes)
        iou = torch.zeros(geo.boxes.shape[:3])
        for b, s in enumerate(text.sentences):
            gt = self.truth[s].boxes.at_frames(geo.frame_ids[b].numpy())
            iou[b] = torch.from_numpy(np.stack([pairwise_iou(geo.boxes[b, t].numpy(), gt[t][None])[:, 0]
                                                for t in range(len(gt))]))
        frames = self.frame_scores(video, text)
        if self.mode == "regions":
            return TubeOutput(frame_scores=frames, region_scores=iou)
        from finetune.heads.stvg import tube_pool

        pooled, _ = tube_pool(iou, geo.tube_ids, geo.tube_mask.shape[1], (frames > 0)[..., None].expand_as(iou))
        return TubeOutput(frame_scores=frames, tube_scores=pooled)


def test_boxes_or_scores_become_scored_vidstg_predictions(features, corpus, tmp_path):
    from finetune.stvg_features import tokenizer_of
    from grounding.readers.stvg import read_vidstg

    cfg, store, _, test = features
    adapter = SyntheticStvgAdapter(corpus)
    ann = adapter.write_eval_files(str(tmp_path), {})
    truth = {q.sentence: q for q in read_vidstg(ann["annotations"])}
    out = {}
    for mode in ("boxes", "regions", "tubes"):
        preds = P.predict_stvg(_Oracle(truth, mode), adapter.eval_queries(), test, store.text,
                               tokenizer_of(cfg.checkpoint))
        url = str(tmp_path / f"{mode}.json")
        json.dump(preds, open(url, "w"))
        out[mode], counts = P.evaluate("vidstg", ann, url)
        assert counts["missing_predictions"] == 0
        for key, p in preds.items():   # a box for every frame of the span, so every sampled frame has one
            assert sorted(int(f) for f in p["boxes"]) == list(range(*p["sted"]))
    assert out["boxes"]["m_tIoU"] == 100 and out["boxes"]["m_vIoU"] == pytest.approx(100)
    assert out["regions"]["m_tIoU"] == 100 and out["regions"]["m_vIoU"] > 50     # the best linked tube
    assert out["tubes"] == out["regions"]


# --- a finetune under Ray that resumes ----------------------------------------------------------------------------
def test_stvg_sweep_under_ray_writes_evaluator_output_and_resumes(ray_cluster, export, weak_corpus, tmp_path):
    from cluster.finetune import run_finetunes

    cache, run = str(tmp_path / "cache"), str(tmp_path / "run")
    first = run_finetunes(cfg_for(export, weak_corpus, cache, run, "sweep.seeds=[0, 1]"), ray_cluster)
    assert first["features"][0]["extracted"] == 6                     # region features by Ray tasks
    second = run_finetunes(cfg_for(export, weak_corpus, cache, run, "sweep.seeds=[0, 1]", "max_steps=4"),
                           ray_cluster)
    assert second["features"][0]["extracted"] == 0 and [j.get("error") for j in second["jobs"]] == [None, None]
    heads = []
    for job in second["jobs"]:
        assert job["steps"] == 4 and os.path.basename(job["run"]) in ("seed0", "seed1")
        logs = sorted(glob.glob(os.path.join(job["run"], "logs", "*.jsonl")))
        steps = [[json.loads(x)["step"] for x in open(f) if x.strip()] for f in logs]
        assert sorted(steps) == [[1, 2], [3, 4]]                      # the second attempt resumed after step 2
        ev = json.load(open(os.path.join(job["run"], "eval.json")))
        assert ev["benchmark"] == "vidstg" and {"m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5"} <= set(ev["metrics"])
        assert ev["counts"]["missing_predictions"] == 0
        preds = json.load(open(os.path.join(job["run"], "predictions.json")))
        assert set(preds) == {q.key for q in SyntheticStvgAdapter(weak_corpus).eval_queries()}
        heads.append(torch.load(os.path.join(job["run"], "head.pt"))["proj.weight"])
        assert not torch.equal(heads[-1], torch.eye(heads[-1].shape[0]))   # it trained
    assert not torch.equal(heads[0], heads[1])                                # the seeds differ
    sweep = json.load(open(second["sweep"]))
    assert [s["seed"] for s in sweep["jobs"]] == [0, 1] and all(s["metrics"] for s in sweep["jobs"])


def test_zero_shot_head_picks_the_benchmarks_zero_shot_tube(features, corpus, export):
    """Untrained, tube_sim is the zero-shot row (tubes/zero_shot.py) as a head: given the true span it picks the
    tube with the best mean word-region cosine."""
    from tubes.zero_shot import tube_scores
    from finetune.heads import build_head
    from finetune.stvg_batches import text_batch, tube_ids, video_batch
    from finetune.stvg_features import tokenizer_of
    from grounding.readers.stvg import read_vidstg
    from pretrain.model import load_model

    cfg, store, _, test = features
    head = build_head("tube_sim", next(iter(test.values())).regions.shape[-1], cfg).eval()
    model = load_model(export)
    picks = 0
    queries = read_vidstg(os.path.join(corpus, "test", "truth", "vidstg.json"))
    for q in queries:
        vt = test[q.video]
        with torch.no_grad():
            out = head.tube_output(video_batch([vt]), text_batch(store.text([q.sentence]), [q.sentence],
                                                                 tokenizer_of(export)))
        out.sted = torch.tensor([list(q.tube)])
        chosen = P.stvg_tube(out, 0, vt, vt.proposals.frames, tube_ids(vt))
        expected = vt.tubes[int(np.argmax(tube_scores(model, vt, q.sentence, q.tube)))].with_span(q.tube)
        np.testing.assert_allclose(chosen.boxes, expected.boxes)
        picks += 1
    assert picks == len(queries) >= 2


# --- bad input as a user meets it -------------------------------------------------------------------------------
def test_a_temporal_head_on_an_stvg_dataset_is_one_error_line(tmp_path, export, corpus):
    proc = subprocess.run([sys.executable, "-m", "finetune.train", f"checkpoint={export}",
                           "dataset.kind=synthetic_stvg", f"dataset.root={corpus}", "head=wsra",
                           f"run={tmp_path / 'r'}"], capture_output=True, text=True, env=ENV, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and "[head]" in lines[0], proc.stderr
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("head,zeros", [
    ("wsra", ["wsra.alpha=0", "wsra.beta=0", "wsra.gamma=0", "wsra.delta=0", "wsra.epsilon=0"]),
    ("vcma", ["vcma.w_contra=0", "vcma.w_assign=0", "vcma.w_rec=0"]),
    ("winner", ["winner.mu=0", "winner.recon=0", "winner.temporal=0", "winner.dsa=false"]),
    ("fsm", [f"fsm.{w}=0" for w in ("w_cls", "w_l1", "w_giou", "w_sted", "w_att", "w_mrcl", "w_pointer")]),
])
def test_loss_weights_all_zero_are_one_error_line(tmp_path, head, zeros):
    """A finetune whose loss is a constant would "train" and exit 0 (issue 29): refused for every head with loss
    weights, before the checkpoint is even looked at and before anything is written."""
    kind = "synthetic" if head == "wsra" else "synthetic_stvg"
    proc = subprocess.run([sys.executable, "-m", "finetune.train", f"checkpoint={tmp_path / 'none'}",
                           f"dataset.kind={kind}", f"dataset.root={tmp_path / 'corpus'}", f"head={head}",
                           f"run={tmp_path / 'r'}", *zeros], capture_output=True, text=True, env=ENV, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and "all 0" in lines[0], proc.stderr
    assert not os.path.exists(tmp_path / "r")


def test_vidstg_adapter_reads_tubedetr_files(corpus):
    """The synthetic corpus's truth is TubeDETR's preprocessed VidSTG format, so the VidSTG adapter reads it."""
    from finetune.datasets_stvg import VidstgAdapter

    split = lambda s: os.path.join(corpus, s, "truth", "vidstg.json")  # noqa: E731
    # the truth's video_path is relative to the split folder ("videos/<vid>.mp4"), TubeDETR's to its video folder
    a = VidstgAdapter(split("train"), split("test"), os.path.join(corpus, "test"), "", "")
    syn = SyntheticStvgAdapter(corpus)
    assert a.train_samples() == syn.train_samples() and a.eval_queries() == syn.eval_queries()
    assert a.benchmark == "vidstg" and set(a.videos("test")) == {q.video for q in syn.eval_queries()}
    t, s = a.train_truth(), syn.train_truth()
    assert t.keys() == s.keys() and all(t[k].sted == s[k].sted and dict(t[k].tube.items()).keys() ==
                                        dict(s[k].tube.items()).keys() for k in t)


def test_vidstg_without_detections_is_one_error_line(tmp_path, export, corpus):
    split = lambda s: os.path.join(corpus, s, "truth", "vidstg.json")  # noqa: E731
    (tmp_path / "v" / "videos").mkdir(parents=True)  # one folder holding both splits' videos (a missing one is refused)
    for s in ("train", "test"):
        for name in os.listdir(os.path.join(corpus, s, "videos")):
            os.symlink(os.path.join(corpus, s, "videos", name), tmp_path / "v" / "videos" / name)
    proc = subprocess.run([sys.executable, "-m", "finetune.train", f"checkpoint={export}", "dataset.kind=vidstg",
                           f"dataset.train={split('train')}", f"dataset.test={split('test')}",
                           f"dataset.videos={tmp_path / 'v'}", "head=tube_sim",
                           f"dataset.detections={os.path.join(corpus, 'train', 'detections.json')}",
                           f"run={tmp_path / 'r'}", f"features.cache={tmp_path / 'c'}"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and "[dataset.test_detections]" in lines[0], proc.stderr


def test_span_and_tube_pooling_on_hand_made_cases():
    from finetune.heads.stvg import tube_pool
    from tubes.activity import native_span

    # the best segment of mean-centred scores; a shallow dip inside is bridged, a deep one is not
    assert P.best_segment(np.array([0, 0, 1, 1, 0.6, 1, 0, 0])) == (2, 5)
    assert P.best_segment(np.array([1, 1, -5, 0.2, 0, 0])) == (0, 1)
    # sparse feature frames (every 5th native frame): the last frame of the segment stands until the next one
    ids = np.array([0, 5, 10, 15, 20])
    assert native_span(ids, 1, 2) == (5, 15) and native_span(ids, 3, 4) == (15, 21)
    # tubes average their own regions only, optionally inside a window of frames
    values = torch.tensor([[[1.0, 5.0], [3.0, 7.0], [2.0, 9.0]]])       # (B=1, T=3, N=2)
    tube_ids = torch.tensor([[[0, 1], [0, -1], [1, 0]]])
    mean, counts = tube_pool(values, tube_ids, 3)
    assert mean[0].tolist() == pytest.approx([(1 + 3 + 9) / 3, (5 + 2) / 2, 0.0]) and counts[0].tolist() == [3, 2, 0]
    window = torch.tensor([[[1, 1], [1, 1], [0, 0]]])
    mean, counts = tube_pool(values, tube_ids, 3, window)
    assert mean[0].tolist() == [2.0, 5.0, 0.0] and counts[0].tolist() == [2, 1, 0]


def test_region_cache_is_redone_for_another_roi_size(features):
    import dataclasses

    from finetune.stvg_features import StvgStore

    cfg, store, train, _ = features
    videos = store.adapter.videos("train")
    assert store.missing(videos) == {} and set(train) == set(videos)
    other = StvgStore(dataclasses.replace(cfg, tubes=dataclasses.replace(cfg.tubes, roi_output=1)), store.adapter,
                      store.key)
    assert set(other.missing(videos)) == set(videos)       # features pooled at another size are not reused


def test_tube_features_are_the_mean_of_their_regions():
    from finetune.heads.stvg import tube_pool

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 5, 3, 4, generator=g)                    # (B, T, N, d)
    ids = torch.randint(-1, 4, (2, 5, 3), generator=g)
    pooled, counts = tube_pool(feats, ids, 4)
    for b in range(2):
        for m in range(4):
            mine = feats[b][ids[b] == m]
            assert counts[b, m] == len(mine)
            expected = mine.mean(0) if len(mine) else torch.zeros(4)
            torch.testing.assert_close(pooled[b, m], expected)


# --- VCMA (finetune/heads/vcma.py; its unit tests: tests/test_vcma.py) -------------------------------------------
def test_vcma_parser_recovers_the_corpus_parses_file(corpus):
    from finetune.query_parse import parse

    n = 0
    for split in ("train", "test"):
        truth = json.load(open(os.path.join(corpus, split, "truth", "parses.json")))
        for q in json.load(open(os.path.join(corpus, split, "queries.json"))):
            assert parse(q["sentence"]).as_truth() == truth[q["key"]]["parse"], q["sentence"]
            n += 1
    assert n >= 6


def test_vcma_finetune_under_ray_writes_evaluator_output_and_resumes(ray_cluster, export, weak_corpus, features,
                                                                     tmp_path):
    from cluster.finetune import run_finetunes

    # the module's cache; the weak corpus is a copy at another path, so its entries are its own (issue 29: a cache
    # entry names its video file), extracted by the first run and read by the second
    cache, run = features[0].features.cache, str(tmp_path / "run")
    # with the weak when-score (vcma.when: the batcher adds every training sentence of each batch video, parsed to
    # verbs by VCMA's own text_prep); the default head's EM is in tests/test_vcma.py and the STVG demo's test
    small = ["head=vcma", "vcma.dim=16", "vcma.blocks=1", "vcma.heads=2", "vcma.vocab=64", "vcma.when=true",
             "vcma.when_vocab=64", "vcma.when_dim=8"]
    first = run_finetunes(cfg_for(export, weak_corpus, cache, run, *small), ray_cluster)
    assert [j.get("error") for j in first["jobs"]] == [None] and first["features"][0]["extracted"] == 6
    second = run_finetunes(cfg_for(export, weak_corpus, cache, run, *small, "max_steps=4"), ray_cluster)
    job = second["jobs"][0]
    assert job.get("error") is None and job["steps"] == 4 and second["features"][0]["extracted"] == 0
    logs = sorted(glob.glob(os.path.join(job["run"], "logs", "*.jsonl")))
    records = [[json.loads(x) for x in open(f) if x.strip()] for f in logs]
    assert sorted([r["step"] for r in recs] for recs in records) == [[1, 2], [3, 4]]   # resumed after step 2
    phases = {r["step"]: r["m_step"] for recs in records for r in recs}
    assert phases == {1: 0.0, 2: 1.0, 3: 0.0, 4: 1.0}                                  # E, M, E, M across the resume
    assert all(math.isfinite(r["when_mil"]) for recs in records for r in recs)         # trained in both phases
    ev = json.load(open(os.path.join(job["run"], "eval.json")))
    assert ev["benchmark"] == "vidstg" and {"m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5"} <= set(ev["metrics"])
    assert ev["counts"]["missing_predictions"] == 0
    # the same trained head answered again with a linked tube per query (vcma.box, read at prediction only) chosen
    # with the when-score's peaks, and the when-score's span; a key read in training is refused
    from finetune.repredict import repredict

    own = json.load(open(os.path.join(job["run"], "predictions.json")))
    tube = repredict(job["run"], ["vcma.box=tube", "span.rule=when", "span.tube_weight=1"])
    assert tube["out"] == os.path.join(job["run"], "span-when-t1-box-tube") and tube["counts"]["missing_predictions"] == 0
    again = json.load(open(tube["predictions"]))
    assert again.keys() == own.keys() and any(again[k] != own[k] for k in own)
    with pytest.raises(UserError, match="may change only"):
        repredict(job["run"], ["vcma.dim=32"])


def test_fsm_supervised_finetune_under_ray_resumes_exactly(ray_cluster, features, export, corpus, tmp_path):
    """The supervised FSM head on the train split's truth, as Ray tasks: one run stopped after step 2 and resumed
    to step 4 logs the same per-step losses and ends with the same weights as one run straight to step 4; the same
    for a pair finetuning the backbone end to end on multi-scale input (its own encoder lr), whose extraction adds
    the earlier block's region features to the cache without touching what was there."""
    from cluster.finetune import run_finetunes
    from finetune.families import build_adapter
    from finetune.train import feature_store

    cache, run = features[0].features.cache, str(tmp_path / "run")
    common = ("head=fsm", "fsm.dim=16", "fsm.queries=3", "sweep.seeds=[0]")
    e2e = "features.end_to_end=true, fsm.multiscale=true, optim.encoder_lr=0.00002"
    videos = build_adapter(features[0].dataset).videos("test")
    # the module's cache holds single-scale entries: a miss for a multi-scale run only
    assert feature_store(cfg_for(export, corpus, cache, run, *common, "fsm.multiscale=true")).missing(videos) == videos
    assert feature_store(cfg_for(export, corpus, cache, run, *common)).missing(videos) == {}
    vid = sorted(videos)[0]
    before = features[1]._cache(vid).get(vid, os.path.getsize(videos[vid]), videos[vid])
    first = run_finetunes(cfg_for(export, corpus, cache, run, *common,
                                  "sweep.variants={resumed: [max_steps=2], straight: [max_steps=4], "
                                  f"e2e_resumed: [max_steps=2, {e2e}], e2e_straight: [max_steps=4, {e2e}]}}"),
                          ray_cluster)
    assert [j.get("error") for j in first["jobs"]] == [None] * 4 and first["features"][0]["extracted"] == 0
    after = features[1]._cache(vid).get(vid, os.path.getsize(videos[vid]), videos[vid])
    assert first["features"][1]["extracted"] == first["features"][1]["multiscale_added"] == 6
    assert "regions_mid" in after and "regions_mid" not in before
    assert all(np.array_equal(before[k], after[k]) for k in before)           # the other heads' arrays as they were
    second = run_finetunes(cfg_for(export, corpus, cache, run, *common,
                                   f"sweep.variants={{resumed: [max_steps=4], e2e_resumed: [max_steps=4, {e2e}]}}"),
                           ray_cluster)
    assert [j.get("error") for j in second["jobs"]] == [None, None]
    losses, heads, encoders = {}, {}, {}
    for job in second["jobs"] + first["jobs"][1::2]:
        name = os.path.basename(job["run"])
        assert job["steps"] == 4 and job["head"] == "fsm"
        logs = sorted(glob.glob(os.path.join(job["run"], "logs", "*.jsonl")))
        records = [json.loads(x) for f in logs for x in open(f) if x.strip()]
        steps = [r for r in records if "loss" in r]
        losses[name] = {r["step"]: r["loss"] for r in steps}
        assert sorted(r["step"] for r in steps) == [1, 2, 3, 4]
        assert {"sted", "att", "mrcl", "box", "cls"} <= set(steps[-1])       # every Eq. 11 term was logged
        ev = json.load(open(os.path.join(job["run"], "eval.json")))
        assert ev["benchmark"] == "vidstg" and {"m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5"} <= set(ev["metrics"])
        assert ev["counts"]["missing_predictions"] == 0
        heads[name] = torch.load(os.path.join(job["run"], "head.pt"))
        if name.startswith("e2e"):
            encoders[name] = torch.load(os.path.join(job["run"], "encoder.pt"))
    for pair in ("", "e2e_"):
        resumed = [json.loads(x)["step"] for f in sorted(glob.glob(os.path.join(run, f"{pair}resumed-seed0", "logs",
                                                                                 "*.jsonl")))
                   for x in open(f) if x.strip() and "loss" in json.loads(x)]
        assert resumed == [1, 2, 3, 4]
        assert len(glob.glob(os.path.join(run, f"{pair}resumed-seed0", "logs", "*.jsonl"))) == 2
        a, b = f"{pair}resumed-seed0", f"{pair}straight-seed0"
        assert losses[a] == losses[b]                                             # exactly, step by step
        assert heads[a].keys() == heads[b].keys()
        assert all(torch.equal(heads[a][k], heads[b][k]) for k in heads[b])
    assert "pv_mid.weight" in heads["e2e_straight-seed0"] and "pv_mid.weight" not in heads["straight-seed0"]
    enc_a, enc_b = encoders["e2e_resumed-seed0"], encoders["e2e_straight-seed0"]
    assert all(torch.equal(enc_a[k], enc_b[k]) for k in enc_b)
    from finetune.heads import build_head
    from pretrain.model import load_model

    start = load_model(export).state_dict()
    conv = "backbone.clip.visual.conv1.weight"
    assert not torch.equal(start[conv], enc_b[conv])                              # the backbone trained
    state = torch.load(glob.glob(os.path.join(run, "e2e_straight-seed0", "checkpoints", "*",
                                              "mp_rank_00_model_states.pt"))[0], weights_only=False)
    assert sorted({g["lr"] for g in state["optimizer"]["param_groups"]}) == [0.00002, 0.0001]   # encoder, head
    torch.manual_seed(0)   # as finetune.train.run seeds the head's initial weights
    init = build_head("fsm", 32, cfg_for(export, corpus, cache, run, *common)).state_dict()
    assert not torch.equal(init["queries"], heads["straight-seed0"]["queries"])  # it trained


# --- the span rule at prediction time on a finished run (docs/stvg.md "The span rule") -------------------------------
def test_a_finished_run_predicted_again_under_the_activity_rule(features, export, corpus, tmp_path):
    """`python -m finetune.repredict` from a fresh process: under span.rule=head it reproduces the run's own
    figures exactly; under activity (span.tube_weight 0) each query keeps the tube the head chose and takes that
    tube's activity span (tubes/activity.py); nothing in the run folder is rewritten."""
    from finetune.train import run
    from tubes.activity import activity_span, tube_activity

    cfg, store, _, test = features
    folder = str(tmp_path / "run")
    summary = run(cfg_for(export, corpus, cfg.features.cache, folder, "train=false"))
    before = {f: os.path.getmtime(os.path.join(folder, f)) for f in ("eval.json", "predictions.json", "head.pt")}

    def again(*overrides):
        p = subprocess.run([sys.executable, "-m", "finetune.repredict", "--run", folder, *overrides],
                           capture_output=True, text=True, env=ENV, cwd=str(tmp_path))
        return p

    same = again("span.rule=head")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["metrics"] == summary["metrics"]
    act = again("span.rule=activity")   # span.tube_weight 0: the head's own tube choice
    assert act.returncode == 0, act.stderr
    res = json.loads(act.stdout)
    assert res["out"] == os.path.join(folder, "span-activity") and res["counts"]["missing_predictions"] == 0
    head_preds = json.load(open(os.path.join(folder, "predictions.json")))
    act_preds = json.load(open(res["predictions"]))
    queries = {q.key: q for q in SyntheticStvgAdapter(corpus).eval_queries()}
    changed = 0
    for key, hp in head_preds.items():
        vt = test[queries[key].video]
        chosen = [m for m, t in enumerate(vt.tubes)
                  if np.allclose(t.with_span(tuple(hp["sted"])).boxes,
                                 np.array([hp["boxes"][str(f)] for f in range(*hp["sted"])]), atol=0.01)]
        spans = {activity_span(tube_activity(vt.regions, vt.tubes[m], vt.proposals.frames), vt.proposals.frames)
                 for m in chosen}
        assert tuple(act_preds[key]["sted"]) in spans
        changed += act_preds[key]["sted"] != hp["sted"]
    assert changed > 0
    assert before == {f: os.path.getmtime(os.path.join(folder, f)) for f in before}
    bad = again("max_steps=5")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    # --given-span: the oracle that measures the boxes alone; every query's span is its truth, the head still
    # chooses the tube (over that span), and m_tIoU is 100
    given = again("--given-span")
    assert given.returncode == 0, given.stderr
    res = json.loads(given.stdout)
    assert res["out"] == os.path.join(folder, "span-given") and res["metrics"]["m_tIoU"] == 100.0
    truth = {v["video_id"]: (v["tube_start_frame"], v["tube_end_frame"])
             for v in json.load(open(os.path.join(corpus, "test", "truth", "vidstg.json")))["videos"]}
    given_preds = json.load(open(res["predictions"]))
    assert set(given_preds) == set(truth)
    for key, gp in given_preds.items():
        assert tuple(gp["sted"]) == truth[key]
        boxes = np.array([gp["boxes"][str(f)] for f in range(*truth[key])])
        vt = test[queries[key].video]
        assert any(np.allclose(t.with_span(truth[key]).boxes, boxes, atol=0.01) for t in vt.tubes)
    assert 0 < res["metrics"]["m_vIoU"] <= 100
    both = again("--given-span", "span.rule=activity")
    assert both.returncode == 2 and both.stderr.strip().startswith("error:")
    assert before == {f: os.path.getmtime(os.path.join(folder, f)) for f in before}
