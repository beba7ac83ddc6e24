"""How the VCMA query parser (finetune/query_parse.py) does on real sentences: over a VidSTG annotation file
(the original VidSTG json: captions = declarative, questions = interrogative) or TubeDETR's preprocessed one, the
share of sentences that yield a subject and at least one relation (with an object, or any), and the share whose
target entity names a noun. Prints one JSON object, with a few parses of each type for reading.

  python -m benchmarks.diagnostics.vcma_parser --annotations ../shared/benchmarks/vidstg/test_annotations.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from common import cli
from common.errors import UserError
from finetune.query_parse import parser_of


def sentences(path: str) -> list[tuple[str, str]]:
    """(qtype, sentence) pairs of a VidSTG file, original (list of videos) or TubeDETR's (videos + captions)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"--annotations [{path}]: cannot read a VidSTG json: {e}") from None
    if isinstance(data, dict) and "videos" in data:
        return [(v.get("qtype", "declarative"), v["caption"]) for v in data["videos"]]
    out = []
    for v in data:
        out += [("declarative", c["description"]) for c in v.get("captions", [])]
        out += [("interrogative", q["description"]) for q in v.get("questions", [])]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", required=True)
    ap.add_argument("--parser", default="rules", choices=("rules", "spacy"))
    ap.add_argument("--examples", type=int, default=5)
    a = ap.parse_args(argv)
    parse = parser_of(a.parser)
    t0 = time.time()
    rows = {}
    for qtype, s in sentences(a.annotations):
        p = parse(s)
        r = rows.setdefault(qtype, {"sentences": 0, "subject": 0, "subject_and_relation": 0,
                                    "subject_and_object_relation": 0, "target_noun": 0, "examples": []})
        r["sentences"] += 1
        has_subject = p.subject is not None
        r["subject"] += has_subject
        r["subject_and_relation"] += has_subject and bool(p.relations)
        r["subject_and_object_relation"] += has_subject and any(x.object is not None for x in p.relations)
        r["target_noun"] += p.target is not None and p.entities[p.target].noun is not None
        if len(r["examples"]) < a.examples:
            r["examples"].append({"sentence": s, "parse": p.as_truth(),
                                  "target": p.entities[p.target].phrase if p.target is not None else None})
    for r in rows.values():
        n = max(r["sentences"], 1)
        r["share"] = {k: round(100.0 * r[k] / n, 2) for k in ("subject", "subject_and_relation",
                                                               "subject_and_object_relation", "target_noun")}
    print(json.dumps({"annotations": a.annotations, "parser": a.parser, "types": rows,
                      "seconds": round(time.time() - t0, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
