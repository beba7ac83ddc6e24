"""Evaluate grounding predictions with the standard protocols.

    python -m grounding.evaluate BENCHMARK --annotations PATH --predictions PATH [--boxes PATH] [--durations PATH]
                                 [--config YAML] [key=value ...]

BENCHMARK: didemo, charades_sta, vidstg, hcstvg, groundingyoutube, youcook_interactions, miningyoutube.
The last line of stdout is one JSON object of metrics in percent (0-100); counts go to the line before it.
Malformed or impossible input exits with status 2 and one line naming the file and the key. Formats and what is
refused: docs/evaluation.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Optional

from common import cli
from common.config import ConfigError, describe_fields, load
from grounding import protocols, readers
from grounding.readers import InputError

BENCHMARKS = ("didemo", "charades_sta", "vidstg", "hcstvg", "groundingyoutube", "youcook_interactions",
              "miningyoutube")


@dataclass
class EvalConfig:
    charades_nms: Optional[float] = 0.5  # 2D-TAN charades conv config; null skips NMS
    charades_iou_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    charades_recalls: list[int] = field(default_factory=lambda: [1, 5])
    stvg_fps: float = 5.0  # TubeDETR: frames sampled at 5 fps ...
    stvg_max_frames: int = 200  # ... at most 200 per video
    viou_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.5])
    map_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5])

    def validate(self) -> "EvalConfig":
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"EvalConfig [{key}]: {what}, got {getattr(self, key)!r}")

        need(self.charades_nms is None or 0 < self.charades_nms <= 1, "charades_nms", "must be in (0, 1] or null")
        for key in ("charades_iou_thresholds", "viou_thresholds", "map_thresholds"):
            need(bool(getattr(self, key)) and all(0 <= t < 1 for t in getattr(self, key)), key,
                 "must be a non-empty list of IoU thresholds in [0, 1)")
        need(bool(self.charades_recalls) and all(k >= 1 for k in self.charades_recalls), "charades_recalls",
             "must be a non-empty list of ranks >= 1")
        need(self.stvg_fps > 0 and self.stvg_fps != float("inf"), "stvg_fps", "must be a positive number")
        need(self.stvg_max_frames >= 1, "stvg_max_frames", "must be >= 1")
        return self


def in_percent(scores: dict[str, float]) -> dict[str, float]:
    """Metric fractions as the CLI prints them (percent, 6 decimals)."""
    return {k: round(100.0 * v, 6) for k, v in scores.items()}


def evaluate(benchmark: str, annotations: str, predictions: str, cfg: EvalConfig | None = None,
             boxes: str | None = None, durations: str | None = None) -> tuple[dict[str, float], dict[str, int]]:
    """(metrics as fractions, counts). Raises InputError on malformed or impossible annotations or predictions."""
    cfg = (cfg or EvalConfig()).validate()
    if benchmark == "didemo":
        return protocols.didemo(readers.read_didemo(annotations),
                                readers.read_moment_predictions(predictions, chunks=readers.didemo.NUM_CHUNKS), predictions)
    if benchmark == "charades_sta":
        queries, dropped = readers.read_charades_sta(annotations, durations)
        return protocols.charades_sta(queries, dropped, readers.read_moment_predictions(predictions),
                                      cfg.charades_nms, cfg.charades_iou_thresholds, cfg.charades_recalls,
                                      predictions)
    if benchmark in ("vidstg", "hcstvg"):
        queries = readers.read_vidstg(annotations, boxes) if benchmark == "vidstg" else readers.read_hcstvg(annotations)
        return protocols.stvg(queries, readers.read_stvg_predictions(predictions), cfg.stvg_fps, cfg.stvg_max_frames,
                              cfg.viou_thresholds, predictions)
    if benchmark == "groundingyoutube":
        return protocols.groundingyoutube(readers.read_groundingyoutube(annotations),
                                          readers.read_per_second_predictions(predictions), cfg.map_thresholds,
                                          predictions)
    if benchmark == "youcook_interactions":
        frames, videos = readers.read_youcook_interactions(annotations)
        return protocols.pointing_frames(frames, readers.read_per_second_predictions(predictions), predictions, videos)
    if benchmark == "miningyoutube":
        return protocols.miningyoutube(readers.read_miningyoutube(annotations),
                                       readers.read_per_second_predictions(predictions), predictions)
    raise InputError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m grounding.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="key=value overrides set EvalConfig fields, e.g. charades_nms=0.45:\n"
                                       + "\n".join(describe_fields(EvalConfig)))
    p.add_argument("benchmark", choices=BENCHMARKS)
    p.add_argument("--annotations", required=True, help="annotation file or folder (local path or fsspec URL)")
    p.add_argument("--predictions", required=True, help="prediction JSON (docs/evaluation.md)")
    p.add_argument("--boxes", help="vidstg: trajectories file with the ground-truth boxes (TubeDETR's test.json)")
    p.add_argument("--durations", help="charades_sta: Charades_v1_<split>.csv (default: beside the annotations)")
    p.add_argument("--config", help="YAML file with EvalConfig fields")
    p.add_argument("--debug", action="store_true", help="show tracebacks of expected errors too (or STG_DEBUG=1)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of EvalConfig")
    args = p.parse_intermixed_args(argv)
    cfg = load(EvalConfig, args.config, args.overrides)
    scores, counts = evaluate(args.benchmark, args.annotations, args.predictions, cfg, args.boxes, args.durations)
    if counts.get("missing_predictions"):
        print(f"warning: {counts['missing_predictions']} of the annotated items have no prediction and score 0",
              file=sys.stderr)
    print("counts: " + json.dumps(counts, sort_keys=True))
    print(json.dumps(in_percent(scores)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
