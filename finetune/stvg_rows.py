"""The rows of the STVG heads' experiments (benchmarks/experiments/stvg_heads.py, vcma_rows.py): a head's figures
over seeds (mean and standard deviation per metric and sentence type), whether it beats the zero-shot row, and
what their corpus and export must hold before any run starts."""
from __future__ import annotations

import os

import numpy as np

from finetune.config import SPAN_RULES

METRICS = ("m_tIoU", "m_vIoU", "vIoU@0.3", "vIoU@0.5")
QTYPES = ("", "declarative_", "interrogative_")


def percent(metrics: dict) -> dict:
    """finetune's eval.json holds the evaluator's figures already in percent."""
    return {k: round(v, 2) for k, v in metrics.items() if isinstance(v, (int, float))}


def aggregate(runs: list[dict]) -> dict:
    ok = [percent(r["metrics"]) for r in runs if r.get("metrics")]
    keys = [q + m for q in QTYPES for m in METRICS if ok and q + m in ok[0]]
    return {"seeds_done": len(ok),
            "mean": {k: round(float(np.mean([r[k] for r in ok])), 2) for k in keys},
            "std": {k: round(float(np.std([r[k] for r in ok])), 2) for k in keys}}


def input_error(corpus: str, export: str) -> str | None:
    """Why the corpus or the export cannot be used (checked before any run starts), or None."""
    truth = os.path.join(corpus, "test", "truth", "vidstg.json")
    if not os.path.exists(truth):
        return f"--corpus [{corpus}]: no test/truth/vidstg.json (python -m shards.synthetic --out DIR mode=stvg)"
    if not os.path.exists(os.path.join(export, "model_config.json")):
        return f"--export [{export}]: not a pretrain export (it holds model.pt and model_config.json)"
    return None


def summarise(seeds: list[int], runs: list[dict]) -> dict:
    """A row of the output: the mean/std over its seeds and each seed's run."""
    return {**aggregate(runs),
            "runs": [{"seed": s, "steps": r.get("steps"), "first_loss": r.get("first_loss"), "last": r.get("last"),
                      "seconds": r.get("seconds"), "error": r.get("error"), "exit": r.get("exit"),
                      "metrics": percent(r.get("metrics") or {})} for s, r in zip(seeds, runs)]}


def beats_zero_shot(zero_shot: dict, rows: dict) -> dict:
    """Per row and sentence type: its mean m_vIoU above the baseline zero_shot row's."""
    return {name: {qt.rstrip("_") or "all": h["mean"].get(qt + "m_vIoU", -1) > zero_shot.get(qt + "m_vIoU", 101)
                   for qt in QTYPES} for name, h in rows.items() if h["seeds_done"]}


def span_overrides(text: str) -> tuple[str, list[str]]:
    """`RULE[:WEIGHT][/SMOOTH][@TUBE_WEIGHT]` -> (row suffix, span.* overrides)."""
    rest, _, tube = text.partition("@")
    rest, _, smooth = rest.partition("/")
    rule, _, weight = rest.partition(":")
    if rule not in SPAN_RULES:
        raise ValueError(f"{text!r}: the rule must be one of {', '.join(SPAN_RULES)}")
    try:
        over = [f"span.rule={rule}"] + ([f"span.weight={float(weight)}"] if weight else []) + \
               ([f"span.smooth={int(smooth)}"] if smooth else []) + \
               ([f"span.tube_weight={float(tube)}"] if tube else [])
    except ValueError:
        raise ValueError(f"{text!r}: WEIGHT and TUBE_WEIGHT must be numbers, SMOOTH an integer") from None
    return text, over
