"""`make demo`: the whole system on its embedded default, on a local Ray cluster.

    python -m cluster.demo --out runs/demo [--config configs/demo64.yaml] [key=value ...]

Stages (each skipped when its output is already complete, so a re-run resumes):
  1. synthetic corpus (shards.synthetic): train and test splits of narrated mp4 videos with hidden truth,
  2. sharding of the train split on Ray (cluster/shard.py's distributor),
  3. pretraining on Ray Train with DeepSpeed workers (cluster/pretrain.py),
  4. embedding, FAISS index and pseudo-positive mining (cluster/index.py), then a second pretraining round that
     starts from the first and adds the cross-video term on the mined pseudo-positives,
  5. grounding of the test split (grounding.predict) scored by `python -m grounding.evaluate groundingyoutube`,
     next to chance (random segments) and the same model before training; the final model again with the decoding
     chosen on the train split (grounding.calibrate),
     and a short WSRA finetune (finetune/, cluster/finetune.py) scored with the Charades-STA protocol,
  6. pictures of a few test videos (grounding.visualize).
Prints a table and writes <out>/summary.json.

With mode=stvg (configs/demo_stvg.yaml, `make demo-stvg`) the corpus is the synthetic STVG corpus
(shards.synthetic mode=stvg), stages 1-3 run as above on its train split, and stages 4-6 are instead:
  4s. baselines and ceilings of the export on the test split (tubes.baselines: random, zero-shot, the zero-shot
      tube with its activity span, zero-shot tube given the true span, best tube given the true span),
  5s. the STVG heads (configs/finetune/<head>_synthetic.yaml: VCMA, WINNER weak; FSM supervised) as Ray finetunes,
      each also predicted under `stvg_span_rules` (the tube's activity span), all scored by grounding.evaluate's
      vidstg protocol in one table,
  6s. pictures of predicted vs true tubes for a few test queries (tubes.pictures, <out>/pictures/<query>.png).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli  # noqa: E402
from common import config as C  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
log = logging.getLogger("demo")


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    seed: int = 0
    n_train: int = 800                 # synthetic videos: with 160 the model memorises the clips (L_global -> 0.3)
                                       # instead of learning words, and test pointing stays near chance
    n_test: int = 40
    corpus: list[str] = field(default_factory=list)    # extra SyntheticConfig key=value overrides
    size: int = 64                     # shard frame size: the model's input (stg-micro64); configs/demo32.yaml: 32
    window_frames: int = 8             # U
    videos_per_shard: int = 32
    pretrain: str = "configs/pretrain/demo.yaml"
    pretrain_overrides: list[str] = field(default_factory=list)
    index: bool = True
    second_round: bool = False         # after mining: continue pretraining with the pseudo-positive table. Off: it
                                       # did not beat a matched control (docs/results/pretraining.md)
    second_round_steps: int = 300
    pictures: int = 3
    finetune: bool = True              # a short WSRA finetune from the export (issue 6), trained vs untrained head
    finetune_steps: int = 300
    chance_seeds: int = 5
    tau: float = 0.0                   # background threshold of inference (z-scored similarity)
    calibrate_videos: int = 60         # decoding chosen on this many train videos (grounding.calibrate): the final
                                       # export gains a row with it beside the paper's decoding; 0: off
    ray_address: str = ""
    mode: str = "instructional"        # instructional | stvg (the STVG demo: stages 4s-6s of the docstring)
    # the STVG heads shown, each by configs/finetune/<name>_synthetic.yaml (fsm_when: FSM with its when-score)
    stvg_heads: list[str] = field(default_factory=lambda: ["vcma", "winner", "fsm", "fsm_when"])
    stvg_steps: int = 300              # finetune steps of each STVG head
    stvg_tubes: int = 10               # linked tubes per video (M) for the heads and baselines
    # each head's trained run is also predicted under these span rules (finetune/repredict.py: prediction time
    # only, no training; docs/stvg.md "The span rule"), a row each beside the head's own (paper) rule
    stvg_span_rules: list[str] = field(default_factory=lambda: ["activity"])
    export: str = ""                   # stvg mode: an existing pretrained export; stages 2-3 (shards, pretraining)
                                       # are skipped (the heads of another export, or a short test)

    def validate(self) -> "DemoConfig":
        """The demo's own settings and its corpus' (a bad value is the user's one error line before anything is
        written)."""
        corpus_config(self)
        from pretrain import architecture
        from pretrain.config import PretrainConfig

        model = C.load(PretrainConfig, os.path.join(ROOT, self.pretrain), self.pretrain_overrides).model
        if model.pretrained:  # the weights file opened and fitted to the backbone now, not after corpus and shards
            architecture.check(model)
        if self.mode not in ("instructional", "stvg"):
            raise C.ConfigError(f"DemoConfig [mode]: must be instructional or stvg, got {self.mode!r}")
        for head in self.stvg_heads if self.mode == "stvg" else ():
            if not os.path.isfile(stvg_head_config(head)):
                raise C.ConfigError(f"DemoConfig [stvg_heads]: no config {stvg_head_config(head)} for head {head!r}")
        if self.export and (self.mode != "stvg" or not os.path.isfile(os.path.join(self.export, "model.pt"))):
            raise C.ConfigError(f"DemoConfig [export]: {self.export!r} must be an export folder (model.pt) and is "
                                f"used in mode=stvg only")
        if self.stvg_steps < 0 or self.stvg_tubes < 1:
            raise C.ConfigError(f"DemoConfig [stvg_steps/stvg_tubes]: must be >= 0 and >= 1, got {self.stvg_steps}, "
                                f"{self.stvg_tubes}")
        from finetune.config import SPAN_RULES

        bad = [r for r in self.stvg_span_rules if r not in SPAN_RULES or r == "head"]
        if bad:
            raise C.ConfigError(f"DemoConfig [stvg_span_rules]: each must be one of {SPAN_RULES[1:]} (the heads' "
                                f"own rule is always shown), got {bad}")
        if self.calibrate_videos < 0:
            raise C.ConfigError(f"DemoConfig [calibrate_videos]: must be >= 0 (0: off), got {self.calibrate_videos}")
        if self.calibrate_videos > self.n_train:
            raise C.ConfigError(f"DemoConfig [calibrate_videos]: the train split has {self.n_train} videos, got "
                                f"{self.calibrate_videos}")
        return self


# what the demo's stages made in an existing --out depends on these; the others (steps of later stages, table
# options) may change on a re-run
_MADE_WITH = ("seed", "n_train", "n_test", "corpus", "size", "window_frames", "videos_per_shard", "pretrain",
              "pretrain_overrides", "second_round_steps", "mode", "export")


def refuse_other_settings(cfg: DemoConfig) -> None:
    """A re-run into an --out made with other settings is refused before anything is written (it used to rewrite
    demo.yaml and the shards' config, then stop at the stage whose output disagreed)."""
    path = os.path.join(cfg.out, "demo.yaml")
    if not os.path.exists(path):
        return
    old = C.to_dict(C.load(DemoConfig, path, []))
    new = C.to_dict(cfg)
    differ = [k for k in _MADE_WITH if old.get(k) != new.get(k)]
    if differ:
        raise C.ConfigError(f"--out [{cfg.out}]: made with other settings ({', '.join(differ)} differ from its "
                            f"demo.yaml); give another --out")


def _step(name: str):
    print(f"\n=== {name} ===", flush=True)
    return time.time()


def corpus_config(cfg: DemoConfig):
    """The synthetic corpus' config, validated (a bad value is the user's one error line before anything is written)."""
    from shards.synthetic import SyntheticConfig

    scfg = C.load(SyntheticConfig, None, [f"seed={cfg.seed}", f"n_train={cfg.n_train}", f"n_test={cfg.n_test}",
                                          "workers=2", f"mode={cfg.mode}", *cfg.corpus])
    scfg.out = os.path.join(cfg.out, "corpus")
    return scfg.validate()


def corpus(cfg: DemoConfig) -> str:
    from shards.synthetic import generate

    scfg = corpus_config(cfg)
    if os.path.exists(os.path.join(scfg.out, "corpus.json")):
        print(f"corpus exists: {scfg.out}")
        return scfg.out
    print(json.dumps(generate(scfg)))
    return scfg.out


def shard(cfg: DemoConfig, corpus_dir: str, ray) -> str:
    from cluster.shard import RayDistributor
    from shards.config import ShardConfig
    from shards.pipeline import run

    out = os.path.join(cfg.out, "shards")
    scfg = ShardConfig(manifest=os.path.join(corpus_dir, "train", "manifest.csv"), output=out, fps=1.0,
                       size=cfg.size, window_frames=cfg.window_frames, videos_per_shard=cfg.videos_per_shard)
    summary = run(scfg.validate(), RayDistributor(ray))
    print(json.dumps({k: summary[k] for k in ("shards_built", "shards_skipped", "total_samples", "failures",
                                              "seconds_decoded", "wall_seconds")}))
    if summary["shards_failed"]:
        raise RuntimeError(f"shard tasks failed: {summary['shards_failed']}")
    return out


def pretrain(cfg: DemoConfig, shards: str, name: str = "pretrain", extra: tuple[str, ...] = ()) -> str:
    from cluster.pretrain import run_pretrain
    from pretrain.config import load

    run = os.path.join(cfg.out, name)
    export = os.path.join(run, "export")
    if os.path.exists(os.path.join(export, "model.pt")):
        print(f"pretrained model exists: {export}")
        return export
    pcfg = load(os.path.join(ROOT, cfg.pretrain),
                [f"run={run}", f"data.shards={shards}", f"model.frames_in={cfg.window_frames}",
                 f"seed={cfg.seed}", *([f"cluster.address={cfg.ray_address}"] if cfg.ray_address else []),
                 *cfg.pretrain_overrides, *extra])
    result = run_pretrain(pcfg)
    if result.error:
        raise RuntimeError(f"pretraining failed: {result.error}")
    m = result.metrics
    print(json.dumps({k: m.get(k) for k in ("step", "loss", "loss_local", "loss_global", "loss_crossvideo",
                                            "crossvideo_frac", "samples_per_s", "data_wait_frac", "skipped_total")
                      if k in m}))
    return export


def untrained(cfg: DemoConfig, export: str) -> str:
    """The same architecture at its initialisation (the trainer's seed): the no-training baseline."""
    import torch

    from pretrain.export_ref import Export
    from pretrain.model import ModelConfig, build_model, save_export

    out = os.path.join(cfg.out, "untrained")
    if not os.path.exists(os.path.join(out, "model.pt")):
        mcfg = C.from_dict(ModelConfig, Export.of(export).model_config)
        torch.manual_seed(cfg.seed)
        save_export(build_model(mcfg), out)
    return out


def index(cfg: DemoConfig, shards: str, export: str, ray) -> dict:
    from cluster.index import run_build, run_embed, run_mine, run_search
    from index.config import IndexConfig

    icfg = C.load(IndexConfig, None, [f"shards={shards}", "model_tag=demo", "embed.batch_size=64"])
    icfg.embed.checkpoint = export
    icfg.build.rebuild = True
    report = {"embed": run_embed(icfg, ray), "build": run_build(icfg, incremental=False, ray=ray),
              "mine": run_mine(icfg, ray), "table": os.path.abspath(icfg.table_url())}
    icfg.search.text = "cut the red cube"
    print(run_search(icfg))
    return report


def _evaluate(annotations: str, predictions: str) -> dict:
    """GroundingYouTube metrics in percent, from grounding.evaluate in process."""
    from grounding import evaluate as G

    return G.in_percent(G.evaluate("groundingyoutube", annotations, predictions)[0])


def score(model, test: str, pdir: str, name: str, tau: float = 0.0, inference: list[str] = ()) -> dict:
    """One model on one test split as the demo scores it: grounding over each video's pool, evaluated with the
    GroundingYouTube protocol (percent), plus pointing with the true step as the query. Writes the predictions to
    pdir/<name>.json and pdir/<name>-pointing.json. `inference`: inference.key=value overrides (a calibration's)."""
    from grounding.predict import PredictConfig, list_videos, predict_videos, read_pools
    from grounding.readers.groundingyoutube import read_groundingyoutube

    truth = read_groundingyoutube(test)
    truth_steps = {vid: {t: step for t, (step, _) in v.boxes.items()} for vid, v in truth.items()}
    videos = list_videos([test])
    pools, _ = read_pools(None, [test])
    pcfg = C.load(PredictConfig, None, [f"inference.tau={tau}", *inference]).validate()
    preds, _ = predict_videos(model, videos, pools, None, pcfg)
    path = os.path.join(pdir, f"{name}.json")
    json.dump(preds, open(path, "w"))
    row = _evaluate(test, path)
    points, _ = predict_videos(model, videos, None, None, pcfg, truth_steps)
    ppath = os.path.join(pdir, f"{name}-pointing.json")
    json.dump(points, open(ppath, "w"))
    row["pointing_game"] = _evaluate(test, ppath)["pointing_game"]
    return row


def evaluate(cfg: DemoConfig, corpus_dir: str, models: dict[str, str]) -> dict:
    from grounding.baselines import random_segments
    from grounding.readers.groundingyoutube import read_groundingyoutube
    from pretrain.export_ref import Export

    test = os.path.join(corpus_dir, "test")
    truth = read_groundingyoutube(test)
    pdir = os.path.join(cfg.out, "predictions")
    os.makedirs(pdir, exist_ok=True)
    table: dict[str, dict] = {}
    chance: list[dict] = []
    for s in range(cfg.chance_seeds):
        path = os.path.join(pdir, f"chance-{s}.json")
        json.dump(random_segments(truth, seed=s), open(path, "w"))
        chance.append(_evaluate(test, path))
    table["chance (random segments)"] = {k: round(sum(c[k] for c in chance) / len(chance), 2) for k in chance[0]}
    for name, export in models.items():
        table[name] = score(Export.of(export).load_model(), test, pdir, name, cfg.tau)
    return table


def calibrated_row(cfg: DemoConfig, corpus_dir: str, name: str, export: str) -> tuple[dict, dict]:
    """(the decoding chosen on the train split's hidden truth, the final export's test row with it): never tuned
    on the test split. The paper's decoding stays the model's own row."""
    from grounding.calibrate import calibrate, encode_split
    from grounding.inference import InferenceConfig
    from pretrain.export_ref import Export

    model = Export.of(export).load_model()
    base = InferenceConfig(tau=cfg.tau)
    truth, encoded = encode_split(model, os.path.join(corpus_dir, "train"), cfg.calibrate_videos, base)
    cal = calibrate(truth, encoded, base)
    report = {k: cal[k] for k in ("objective", "videos", "chosen", "overrides")}
    report["train"] = {"chosen": cal["best"], "paper": cal["paper"]}
    pdir = os.path.join(cfg.out, "predictions")
    slug = name.replace(" ", "_").replace("+", "").replace("__", "_") + "-calibrated"
    return report, score(model, os.path.join(corpus_dir, "test"), pdir, slug, cfg.tau, cal["overrides"])


def pictures(cfg: DemoConfig, corpus_dir: str, export: str) -> list[str]:
    from grounding.query import ground_query
    from grounding.readers.groundingyoutube import read_groundingyoutube
    from grounding.visualize import render
    from pretrain.export_ref import Export

    test = os.path.join(corpus_dir, "test")
    truth = read_groundingyoutube(test)
    model = Export.of(export).load_model()
    out = os.path.join(cfg.out, "pictures")
    written = []
    for vid in sorted(truth)[: cfg.pictures]:
        s, e, step = truth[vid].segments[0]
        res = ground_query(None, os.path.join(test, "videos", f"{vid}.mp4"), step, model=model)
        w = render(res["frames"], res["times"], res["predictions"], step, res["geometry"], [(s, e + 1)],
                   os.path.join(out, f"{vid}.png"), os.path.join(out, f"{vid}.mp4"))
        written += list(w.values())
    return written


def finetune_wsra(cfg: DemoConfig, corpus_dir: str, export: str, ray) -> dict:
    """WSRA on the synthetic corpus (weak labels: train ASR captions; evaluation: Charades-STA protocol on the test
    split's true steps), the trained head next to the same head untrained."""
    from cluster.finetune import run_finetunes
    from finetune.config import FinetuneConfig

    rows = {}
    for name, extra in (("WSRA trained", []), ("WSRA untrained head", ["train=false"])):
        fcfg = C.load(FinetuneConfig, os.path.join(ROOT, "configs", "finetune", "wsra_synthetic.yaml"),
                      [f"dataset.root={os.path.abspath(corpus_dir)}", f"max_steps={cfg.finetune_steps}",
                       f"name=wsra-{'trained' if not extra else 'untrained'}", *extra])
        fcfg.checkpoint = os.path.abspath(export)
        job = run_finetunes(fcfg, ray)["jobs"][0]
        if "error" in job:
            raise RuntimeError(f"finetune failed: {job['error']}")
        rows[name] = {k: round(v, 2) for k, v in job.get("metrics", {}).items()}
    return rows


def stvg_head_config(head: str) -> str:
    return os.path.join(ROOT, "configs", "finetune", f"{head}_synthetic.yaml")


# the STVG table: baseline rows of tubes.baselines (its names) as the demo labels them
STVG_BASELINES = (("random", "random span + random tube"),
                  ("zero_shot", "zero-shot (Sec. 3.5 span + best word-region tube)"),
                  ("zero_shot_activity", "zero-shot tube + its activity span"),
                  ("zero_shot_true_span", "zero-shot tube given the true span"),
                  ("ceiling_true_span", "best tube given the true span (ceiling)"))
STVG_KEYS = ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5")


def stvg_baselines(cfg: DemoConfig, corpus_dir: str, export: str) -> tuple[dict, dict]:
    """({label: row in percent}, {label: predictions file}) of the baselines on the test split."""
    from tubes import baselines

    pdir = os.path.join(cfg.out, "predictions")
    b = baselines.measure(os.path.abspath(corpus_dir), "test", os.path.abspath(export),
                          os.path.join(os.path.abspath(cfg.out), "cache", "baselines"), cfg.stvg_tubes, cfg.seed,
                          smooth=1, predictions_dir=pdir)
    return ({label: b["rows"][name] for name, label in STVG_BASELINES},
            {label: os.path.join(pdir, f"{name}.json") for name, label in STVG_BASELINES})


def stvg_heads(cfg: DemoConfig, corpus_dir: str, export: str, ray) -> tuple[dict, dict]:
    """({head: its test row in percent}, {head: its predictions file}): each head's finetune as Ray tasks
    (cluster/finetune.py), into <out>/finetune/<head>; a head whose run finished there is read, not re-run."""
    from cluster.finetune import run_finetunes
    from finetune.config import FinetuneConfig
    from finetune.heads.registry import spec_of
    from finetune.repredict import repredict

    rows, files = {}, {}
    for head in cfg.stvg_heads:
        run = os.path.join(os.path.abspath(cfg.out), "finetune", head)
        done = os.path.join(run, "summary.json")
        job = json.load(open(done)) if os.path.exists(done) else {}
        if "metrics" not in job:
            fcfg = C.load(FinetuneConfig, stvg_head_config(head),
                          [f"dataset.root={os.path.abspath(corpus_dir)}", f"max_steps={cfg.stvg_steps}",
                           f"checkpoint_every={max(1, cfg.stvg_steps)}", f"run={run}", f"name={head}",
                           f"seed={cfg.seed}", f"tubes.tubes={cfg.stvg_tubes}",
                           f"features.cache={os.path.join(os.path.abspath(cfg.out), 'cache', 'finetune')}"])
            fcfg.checkpoint = os.path.abspath(export)
            job = run_finetunes(fcfg, ray)["jobs"][0]
            if "error" in job:
                raise RuntimeError(f"STVG finetune {head} failed: {job['error']}")
        kind = C.load(FinetuneConfig, stvg_head_config(head), []).head
        label = (f"{kind.upper()}{' with ' + head.split('_', 1)[1] + '-score' if '_' in head else ''} "
                 f"({'supervised' if spec_of(kind).supervised else 'weak'})")
        rows[label] = {k: round(v, 2) for k, v in job.get("metrics", {}).items()}
        files[label] = job["predictions"]
        for rule in cfg.stvg_span_rules:
            folder = os.path.join(run, f"span-{rule}")
            done = os.path.join(folder, "eval.json")
            again = json.load(open(done)) if os.path.exists(done) else repredict(run, [f"span.rule={rule}"], folder)
            rows[f"{label} + {rule} span"] = {k: round(v, 2) for k, v in again["metrics"].items()}
            files[f"{label} + {rule} span"] = again["predictions"]
    return rows, files


def stvg_stages(cfg: DemoConfig, corpus_dir: str, export: str, ray, summary: dict, timings: dict) -> dict:
    from tubes.pictures import tube_sheets

    t = _step("4s. STVG baselines and ceilings (tubes.baselines)")
    table, files = stvg_baselines(cfg, corpus_dir, export)
    timings["baselines"] = time.time() - t
    t = _step(f"5s. STVG heads ({', '.join(cfg.stvg_heads)}) as Ray finetunes, vidstg protocol")
    rows, head_files = stvg_heads(cfg, corpus_dir, export, ray)
    # heads between the baselines that decide their own span and those given the true span, as in
    # docs/results/stvg.md
    given = {label for name, label in STVG_BASELINES if name.endswith("true_span")}
    own = [k for k in table if k not in given]
    table = {k: table[k] for k in own} | rows | {k: table[k] for k in table if k in given}
    timings["finetune"] = time.time() - t
    t = _step("6s. pictures of predicted vs true tubes")
    shown = {k: files[k] for k in own if k != STVG_BASELINES[0][1]} | head_files   # all but random
    summary["pictures"] = tube_sheets(os.path.join(corpus_dir, "test"), shown, os.path.join(cfg.out, "pictures"),
                                      cfg.pictures)
    timings["pictures"] = time.time() - t
    return table


KEYS = ("IoU+Point", "mAP@0.3", "mAP@0.5", "mAP@0.1:0.5", "pointing_game", "action_acc", "action_chance")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = C.parser(DemoConfig, __doc__.splitlines()[0])
    p.add_argument("--out", help="run folder (default runs/demo)")
    args = p.parse_args(argv)
    cfg = C.load(DemoConfig, args.config, args.overrides)
    if args.out:
        cfg.out = args.out
    cfg.validate()
    refuse_other_settings(cfg)
    os.makedirs(cfg.out, exist_ok=True)
    C.dump(cfg, os.path.join(cfg.out, "demo.yaml"))
    timings = {}
    from cluster.runtime import init_ray

    t = _step("1. synthetic corpus")
    corpus_dir = corpus(cfg)
    timings["corpus"] = time.time() - t
    ray = init_ray(cfg.ray_address or None)
    if cfg.export:
        shards, export = "", os.path.abspath(cfg.export)
        print(f"\nexport given: {export} (no sharding, no pretraining)")
    else:
        t = _step("2. sharding on Ray")
        shards = shard(cfg, corpus_dir, ray)
        timings["shard"] = time.time() - t
        t = _step("3. pretraining (Ray Train + DeepSpeed)")
        export = pretrain(cfg, shards)
        timings["pretrain"] = time.time() - t
    summary: dict = {"corpus": corpus_dir, "shards": shards, "export": export}
    if cfg.mode == "stvg":
        table = stvg_stages(cfg, corpus_dir, export, ray, summary, timings)
        return report(cfg, summary, table, timings, STVG_KEYS)
    models = {"untrained": untrained(cfg, export), "pretrained": export}
    if cfg.index:
        t = _step("4. embeddings, FAISS index, pseudo-positive mining")
        rep = index(cfg, shards, export, ray)
        summary["index"] = {"vectors": rep["build"].get("count"), "factory": rep["build"].get("factory"),
                            "pseudo_positive_clips": rep["mine"].get("clips_in_table")}
        timings["index"] = time.time() - t
        if cfg.second_round:
            t = _step("4b. second pretraining round with cross-video pseudo-positives")
            export = pretrain(cfg, shards, "pretrain_pp",
                              (f"init={os.path.abspath(export)}", f"data.pseudo_positives={rep['table']}",
                               f"max_steps={cfg.second_round_steps}", "checkpoint_every=100",
                               "optim.warmup_steps=10"))
            summary["export"] = export
            models["pretrained + pseudo-positives"] = export
            timings["pretrain_pp"] = time.time() - t
    t = _step("5. grounding evaluation on the synthetic test split")
    table = evaluate(cfg, corpus_dir, models)
    timings["evaluate"] = time.time() - t
    if cfg.calibrate_videos > 0:
        t = _step("5a. decoding chosen on the train split (grounding.calibrate)")
        final = list(models)[-1]
        summary["calibration"], table[f"{final}, decoding chosen on train"] = calibrated_row(
            cfg, corpus_dir, final, models[final])
        print("chosen on train:", " ".join(summary["calibration"]["overrides"]), flush=True)
        timings["calibrate"] = time.time() - t
    if cfg.finetune:
        t = _step("5b. WSRA finetune (Charades-STA protocol on the synthetic test split)")
        summary["finetune"] = finetune_wsra(cfg, corpus_dir, export, ray)
        timings["finetune"] = time.time() - t
    t = _step("6. pictures")
    summary["pictures"] = pictures(cfg, corpus_dir, export)
    timings["pictures"] = time.time() - t
    return report(cfg, summary, table, timings, KEYS)


def report(cfg: DemoConfig, summary: dict, table: dict, timings: dict, keys: tuple[str, ...]) -> int:
    """summary.json, the table and the one JSON line the demo ends with."""
    summary["metrics"] = table
    summary["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    with open(os.path.join(cfg.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    w = max(32, *(len(n) + 2 for n in table))
    print("\n" + " " * w + "".join(f"{k:>14s}" for k in keys))
    for name, row in table.items():
        print(f"{name:{w}s}" + "".join(f"{row.get(k, float('nan')):14.2f}" for k in keys))
    for name, row in summary.get("finetune", {}).items():
        print(f"{name:{w}s}" + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    print(f"\npictures: {os.path.join(cfg.out, 'pictures')}   summary: {os.path.join(cfg.out, 'summary.json')}")
    print(json.dumps({"metrics": table, "finetune": summary.get("finetune"), "seconds": summary["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
