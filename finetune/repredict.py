"""Predict a finished STVG finetune run again under another span rule, without training (span rules act at
prediction time only: docs/stvg.md "The span rule"). Prints one JSON object with the evaluator's metrics.

    python -m finetune.repredict --run RUN [--out DIR] span.rule=activity [span.smooth=5] [span.tube_weight=1]
    python -m finetune.repredict --run RUN vcma.box=tube span.rule=activity  # a head's prediction-only keys too
    python -m finetune.repredict --run RUN --given-span      # the test truth's span given: the boxes alone

`--given-span` is an oracle, never a method: each query gets its true span (from the evaluator's annotation file)
and the head decides only the boxes (a head choosing among tubes chooses over that span), so m_vIoU measures the
head's spatial half, as the zero-shot and ceiling rows "given the true span" do (docs/results/stvg.md).

Reads RUN's config.yaml, head.json and head.pt and the run's feature cache (nothing is extracted or trained);
writes DIR/predictions.json and DIR/eval.json (default DIR: RUN/span-<rule>), never into RUN itself.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys

import torch

from common import cli
from common import fsio
from common.errors import UserError

SPAN_KEYS = ("span.rule", "span.weight", "span.smooth", "span.tube_weight")


@dataclasses.dataclass
class FinishedRun:
    """What a finished STVG finetune run predicts with: its config, head spec and family, the test queries, the
    feature store and the test videos' features (from the run's cache), and the trained head."""
    cfg: object
    spec: object
    family: object
    adapter: object
    queries: list
    store: object
    videos: dict
    head: torch.nn.Module


def run_config(run: str, overrides: list[str]):
    """RUN's finetune config with `overrides`, refused in one line unless RUN is a finished STVG run whose test
    features its cache holds (not an end-to-end one: those come from its trained encoder)."""
    from finetune import config as C
    from finetune.families import family_of

    for name in ("config.yaml", "head.json", "head.pt"):
        if not fsio.exists(fsio.join(run, name)):
            raise UserError(f"--run [{run}]: no {name} (a finished finetune run holds config.yaml, head.json, "
                            "head.pt)")
    cfg = C.resolve(C.load(fsio.join(run, "config.yaml"), overrides))
    C.validate(cfg)
    if family_of(cfg).name != "stvg":
        raise UserError(f"--run [{run}]: head {cfg.head} is not an STVG head (span rules decide tubes' spans)")
    if cfg.features.end_to_end:
        raise UserError(f"--run [{run}]: an end-to-end run's test features come from its trained encoder; "
                        "re-run it with the span rule instead")
    return cfg


def load_run(run: str, cfg) -> FinishedRun:
    """RUN (run_config's `cfg`) loaded: test features from the run's cache (nothing is extracted) and its head."""
    from finetune.families import family_of
    from finetune.heads.registry import spec_of
    from finetune.train import check_dataset

    spec, family = spec_of(cfg.head), family_of(cfg)
    adapter, _, queries = check_dataset(cfg)
    store = family.store(cfg, adapter)
    videos = store.load_all(adapter.videos("test"))
    meta = json.loads(fsio.read_bytes(fsio.join(run, "head.json")))
    head = spec.build(meta["dim"], cfg)
    try:
        state = torch.load(io.BytesIO(fsio.read_bytes(fsio.join(run, "head.pt"))), map_location="cpu")
        head.load_state_dict(state)
    except Exception as e:  # noqa: BLE001 - a cut or foreign file is the user's, named in one line
        raise UserError(f"--run [{fsio.join(run, 'head.pt')}]: not this run's head weights ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
    return FinishedRun(cfg, spec, family, adapter, queries, store, videos, head)


def repredict(run: str, overrides: list[str], out: str = "", given_span: bool = False) -> dict:
    """The metrics of RUN's trained head predicted with `overrides` (span.* keys and the head's prediction-only
    keys, HeadSpec.predict_keys), or with the test truth's spans given (`given_span`), into `out`."""
    from finetune.heads.registry import spec_of
    from finetune.predict import evaluate

    head = run_config(run, []).head
    keys = (*SPAN_KEYS, *(f"{head}.{k}" for k in spec_of(head).predict_keys))
    for o in overrides:
        if o.split("=", 1)[0] not in keys:
            raise UserError(f"override [{o}]: a re-prediction may change only {', '.join(keys)}")
    spans = [o for o in overrides if o.startswith("span.")]
    if given_span and spans:
        raise UserError("--given-span decides every span itself; give it no span.* override")
    cfg = run_config(run, overrides)
    sp = cfg.span
    name = "span-given" if given_span else (f"span-{sp.rule}" + (f"-s{sp.smooth}" if sp.smooth > 1 else "")
                                            + (f"-w{sp.weight:g}" if sp.rule == "mix" else "")
                                            + (f"-t{sp.tube_weight:g}" if sp.rule != "head" and sp.tube_weight else ""))
    name += "".join(f"-{o.split('=', 1)[0].split('.', 1)[1]}-{o.split('=', 1)[1]}" for o in overrides
                    if not o.startswith("span."))
    out = out or fsio.join(run, name)
    if fsio.exists(fsio.join(out, "config.yaml")):
        raise UserError(f"--out [{out}]: a finetune run folder; a re-prediction goes into a folder of its own")
    r = load_run(run, cfg)
    fsio.makedirs(out)
    files = r.adapter.write_eval_files(fsio.join(out, "eval"), r.family.durations(r.videos))
    given = None
    if given_span:
        from grounding.readers.stvg import read_hcstvg, read_vidstg

        read = read_hcstvg if r.adapter.benchmark == "hcstvg" else read_vidstg
        given = {q.key: q.tube for q in read(files["annotations"])}
    preds = r.family.predict(r.head, r.spec, cfg, r.adapter, r.queries, r.videos, r.store.text, given)
    pred_url = fsio.join(out, "predictions.json")
    fsio.write_json_atomic(pred_url, preds)
    metrics, counts = evaluate(r.adapter.benchmark, files, pred_url)
    result = {"run": run, "head": cfg.head, "span": "given" if given_span else dataclasses.asdict(cfg.span),
              "out": out, "metrics": metrics, "counts": counts, "predictions": pred_url}
    fsio.write_json_atomic(fsio.join(out, "eval.json"), result)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished STVG finetune run folder")
    p.add_argument("--out", default="", help="output folder (default RUN/span-<rule>)")
    p.add_argument("--given-span", action="store_true",
                   help="the test truth's span for every query (an oracle: the head's boxes alone)")
    p.add_argument("overrides", nargs="*", help="span.rule=..., span.weight=..., span.smooth=..., span.tube_weight=..., "
                                                "and the head's prediction-only keys (vcma.box=...)")
    a = p.parse_args(argv)
    print(json.dumps(repredict(os.path.abspath(a.run) if fsio.is_local(a.run) else a.run, a.overrides, a.out,
                                a.given_span)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
