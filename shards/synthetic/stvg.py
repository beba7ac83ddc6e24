"""The STVG mode of the generator (`mode=stvg`, docs/stvg.md): scenes where a noun alone is ambiguous, one referring
query per action, the target's tube at the video's own frame rate, and per-frame detector-like proposals.

A scene holds two or more objects of each noun it uses (two cubes) and colours repeat across nouns (a red cube and
a red ball); a (noun, colour) pair stays unique, so "the red cube" names one object. Each action's query names its
target by one of four kinds (the mix is a config parameter, realised counts go to corpus.json):
- attribute: "the red cube is cut" (the colour separates the cubes),
- relation:  "the cube left of the blue bowl is cut" (a relation to an object of another noun, true in every frame
  of the tube and false there for every other cube),
- action:    "the cube is cut" (only what happens to it, and when, tells the cubes apart),
- same_noun: "the red cube left of the blue cube is cut" (the subject's noun twice: WINNER Sec. 4.3's interference).
Interrogative forms ask for the subject ("what is cut left of the blue bowl?"). Relations are computed on the
rendered boxes of every frame of the tube, so they hold exactly where the truth says.

Most main actions get a concurrent distractor action inside their span on an object of the target's noun or
colour (`stvg_concurrent`), with its own query and tube, so "the object that changes now" does not name the
target; a kind whose words would fit another object then (or another action of the video) falls back, so every
query's words fit its target alone.

Files per split, beside the instructional ones (which are written too, so the corpus can be sharded and pretrained
on): `queries.json` (visible: key, video, sentence, qtype), `detections.json` (proposals in the detections-file
format of docs/stvg.md, no identities), `truth/vidstg.json` (TubeDETR's preprocessed VidSTG file, read by
`grounding.readers.stvg.read_vidstg` and `python -m grounding.evaluate vidstg`) and `truth/parses.json` (each
query's kind and parse: subject, attributes, relation triplets; target and reference object ids).
"""
from __future__ import annotations

import numpy as np

from common import fsio
from shards.synthetic import vocab
from shards.synthetic.config import SyntheticConfig
from shards.synthetic.render import Box
from shards.synthetic.scene import Action, VideoPlan, place, plan_video

KINDS = ("attribute", "relation", "action", "same_noun")
PREDICATES = ("left of", "right of", "above", "below", "next to")
PARTICIPLES = {"cut": "cut", "stir": "stirred", "pour": "poured", "shake": "shaken", "crush": "crushed",
               "wash": "washed", "fry": "fried", "lift": "lifted"}
DETECTIONS_FORMAT = "stground-detections/1"


def layout(rng: np.random.Generator, cfg: SyntheticConfig, margin: int, count: int):
    """count objects in noun groups of two or more (three of one noun when count is 3 or odd), colours distinct
    within a group and drawn from a pool smaller than count, so colours repeat across nouns."""
    words = vocab.vocabulary(cfg.verbs, cfg.nouns, cfg.colours)
    groups = max(1, min(count // 2, len(words["objects"])))
    nouns = [str(n) for n in rng.permutation(words["objects"])[:groups]]
    sizes = [count // groups + (1 if g < count % groups else 0) for g in range(groups)]
    pool_size = min(len(words["colours"]), max(max(sizes), (count + 1) // 2 + 1))
    pool = [str(c) for c in rng.permutation(words["colours"])[:pool_size]]
    obj_nouns, obj_colours = [], []
    for noun, size in zip(nouns, sizes):
        obj_nouns += [noun] * size
        obj_colours += [pool[int(i)] for i in rng.permutation(pool_size)[:size]]
    order = rng.permutation(count)
    return place(rng, cfg, margin, [obj_nouns[i] for i in order], [obj_colours[i] for i in order])


def holds(pred: str, a: Box, b: Box, near: float) -> bool:
    """Spatial predicate of box a relative to box b (x1, y1, x2, y2; x2/y2 exclusive; y grows downwards)."""
    if pred == "left of":
        return a[2] <= b[0]
    if pred == "right of":
        return a[0] >= b[2]
    if pred == "above":
        return a[3] <= b[1]
    if pred == "below":
        return a[1] >= b[3]
    if pred == "next to":
        gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
        return 0 <= gap <= near
    raise ValueError(f"unknown predicate {pred!r}")


def holds_in(pred: str, subj: int, ref: int, frames: range, boxes: list[list[Box | None]], near: float) -> bool:
    return all(boxes[f][subj] is not None and boxes[f][ref] is not None
               and holds(pred, boxes[f][subj], boxes[f][ref], near) for f in frames)


def _relations(plan: VideoPlan, target: int, frames: range, boxes, near: float, same_noun: bool):
    """(reference, predicate) pairs true for the target in every tube frame and false in every tube frame for each
    other object of the target's noun (so the relation alone picks the target among them)."""
    objs = plan.objects
    noun = objs[target].noun
    rivals = [j for j, o in enumerate(objs) if o.noun == noun and j != target]
    out = []
    for ref, o in enumerate(objs):
        if ref == target or (o.noun == noun) != same_noun:
            continue
        for pred in PREDICATES:
            if not holds_in(pred, target, ref, frames, boxes, near):
                continue
            if all(not any(boxes[f][r] is not None and holds(pred, boxes[f][r], boxes[f][ref], near) for f in frames)
                   for r in rivals if r != ref):
                out.append((ref, pred))
    return out


def _words(kind: str, qtype: str, subj) -> tuple[str | None, str | None]:
    """(noun, colour) the sentence names for its subject (None: not said)."""
    named = not (qtype == "interrogative" and kind in ("attribute", "relation"))
    return (subj.noun if named else None), (subj.colour if kind in ("attribute", "same_noun") else None)


def _sentence(kind: str, qtype: str, verb: str, subj, ref, pred: str | None) -> str:
    pp = PARTICIPLES[verb]
    rel = f" {pred} the {ref.colour} {ref.noun}" if pred else ""
    if qtype == "declarative":
        head = {"attribute": f"the {subj.colour} {subj.noun}", "relation": f"the {subj.noun}{rel}",
                "action": f"the {subj.noun}", "same_noun": f"the {subj.colour} {subj.noun}{rel}"}[kind]
        return f"{head} is {pp}"
    return {"attribute": f"what {subj.colour} thing is {pp}?", "relation": f"what is {pp}{rel}?",
            "action": f"which {subj.noun} is {pp}?", "same_noun": f"which {subj.colour} {subj.noun}{rel} is {pp}?"
            }[kind]


def _parse(kind: str, qtype: str, verb: str, subj, ref, pred: str | None) -> dict:
    """What a parser should recover: the subject (noun None when the question asks for it), its attributes, the
    action, and subject-predicate-object triplets of phrases."""
    noun, colour = _words(kind, qtype, subj)
    subject = {"noun": noun, "attributes": [colour] if colour else []}
    phrase = " ".join(subject["attributes"] + [noun or "what"])
    relations = [[phrase, pred, f"{ref.colour} {ref.noun}"]] if pred else []
    return {"subject": subject, "action": verb, "relations": relations}


def acted_on(plan: VideoPlan, frames: range, verb: str | None = None) -> set[int]:
    """Objects an action (of `verb`, or any) is done to in some frame of `frames`, concurrent actions included."""
    fps = plan.fps
    return {a.target for a in plan.all_actions
            if (verb is None or a.verb == verb) and a.start * fps < frames.stop and a.end * fps > frames.start}


def fitting(plan: VideoPlan, boxes, frames: range, verb: str, noun: str | None, colour: str | None,
            ref: int | None, pred: str | None, near: float) -> list[int]:
    """The objects a query's words fit during its span: the verb done to them then, the noun and colour said,
    the relation true in every frame. A query is decided when this is its target alone."""
    objs = plan.objects
    return sorted(j for j in acted_on(plan, frames, verb)
                  if (noun is None or objs[j].noun == noun) and (colour is None or objs[j].colour == colour)
                  and (pred is None or (j != ref and holds_in(pred, j, ref, frames, boxes, near))))


def concurrent(plan: VideoPlan, cfg: SyntheticConfig) -> list[Action]:
    """With probability stvg_concurrent per main action, a distractor action on another object inside its span
    (at least half of it), so "the object that changes now" no longer names the target. The distractor shares
    the target's noun or colour (the object the query's words must rule out) and its verb with probability
    stvg_same_verb (then the colour or a relation decides; otherwise the verb does). A (verb, object) pair is
    never done twice in a video, so "the red cube is cut" still names one time."""
    rng = np.random.default_rng([*plan.seed_key, 23])
    verbs = vocab.vocabulary(cfg.verbs, cfg.nouns, cfg.colours)["verbs"]
    objs = plan.objects
    used = {(a.verb, a.target) for a in plan.actions}
    out = []
    for a in plan.actions:
        if rng.uniform() >= cfg.stvg_concurrent:
            continue
        t = objs[a.target]
        alike = [j for j, o in enumerate(objs) if j != a.target and (o.noun == t.noun or o.colour == t.colour)]
        pool = alike or [j for j in range(len(objs)) if j != a.target]
        if not pool:
            continue
        j = pool[int(rng.integers(len(pool)))]
        others = [str(v) for v in verbs if v != a.verb and (v, j) not in used]
        if rng.uniform() < cfg.stvg_same_verb and (a.verb, j) not in used:
            verb = a.verb
        elif others:
            verb = others[int(rng.integers(len(others)))]
        else:
            continue
        used.add((verb, j))
        seconds = int(rng.integers((a.seconds + 1) // 2, a.seconds + 1))
        start = a.start + int(rng.integers(0, a.seconds - seconds + 1))
        out.append(Action(verb, j, start, seconds, vocab.sentence(verb, objs[j].colour, objs[j].noun)))
    return out


def stvg_plan(cfg: SyntheticConfig, split: str, index: int) -> VideoPlan:
    """An STVG video's plan: the shared-noun layout, the main timeline, then the concurrent distractor actions
    (their own random stream, so the scene and the main timeline are those of plan_video)."""
    p = plan_video(cfg, split, index, layout)
    p.concurrent = concurrent(p, cfg)
    return p


def _frames(plan: VideoPlan, a: Action) -> range:
    return range(a.start * plan.fps, a.end * plan.fps)


FALLBACKS = {"same_noun": ("same_noun", "relation", "attribute"), "relation": ("relation", "attribute"),
             "action": ("action", "attribute"), "attribute": ("attribute",)}


def queries(plan: VideoPlan, boxes: list[list[Box | None]], cfg: SyntheticConfig) -> list[dict]:
    """One query per action (main and concurrent) whose target is visible in every frame of the action; kind by
    the configured mix, falling back (same_noun -> relation -> attribute, action -> attribute) when no unique
    relation holds or the words would also fit another object acted on during the span, or another action of the
    video over its own frames. The last resort, the declarative attribute form, decides whenever the action's
    (verb, object) pair is the video's only one; an action without it (a repeated main sentence: rare) gets none."""
    rng = np.random.default_rng([*plan.seed_key, 17])
    weights = np.asarray([cfg.stvg_attribute, cfg.stvg_relation, cfg.stvg_action, cfg.stvg_same_noun], float)
    near = cfg.stvg_near * min(plan.width, plan.height)
    out = []
    for k, a in enumerate(plan.all_actions):
        frames = _frames(plan, a)
        if any(boxes[f][a.target] is None for f in frames):
            continue  # an evaluator needs a box in every frame of the tube (never with the defaults)
        wanted = KINDS[int(rng.choice(len(KINDS), p=weights / weights.sum()))]
        drawn = qtype = "interrogative" if rng.uniform() < cfg.stvg_interrogative else "declarative"
        subj = plan.objects[a.target]

        def decided(kind: str, ref: int | None = None, pred: str | None = None) -> bool:
            noun, colour = _words(kind, qtype, subj)
            if fitting(plan, boxes, frames, a.verb, noun, colour, ref, pred, near) != [a.target]:
                return False
            return not any(b.target in fitting(plan, boxes, _frames(plan, b), a.verb, noun, colour, ref, pred, near)
                           for b in plan.all_actions if b is not a and b.verb == a.verb)

        chosen = None
        for kind in FALLBACKS[wanted]:
            if kind in ("relation", "same_noun"):
                found = [(r, p) for r, p in _relations(plan, a.target, frames, boxes, near, kind == "same_noun")
                         if decided(kind, r, p)]
                if found:
                    chosen = (kind, *found[int(rng.integers(len(found)))])
                    break
            elif decided(kind):
                chosen = (kind, None, None)
                break
        if chosen is None:
            qtype = "declarative"
            if not decided("attribute"):
                continue
            chosen = ("attribute", None, None)
        kind, ref, pred = chosen
        robj = plan.objects[ref] if ref is not None else None
        out.append({"action": k, "kind": kind, "wanted": wanted, "qtype": qtype, "drawn_qtype": drawn,
                    "target": a.target, "reference": ref, "predicate": pred, "verb": a.verb,
                    "concurrent": sorted(acted_on(plan, frames) - {a.target}),
                    "sentence": _sentence(kind, qtype, a.verb, subj, robj, pred),
                    "parse": _parse(kind, qtype, a.verb, subj, robj, pred),
                    "tube": [frames.start, frames.stop]})
    return out


def proposals(plan: VideoPlan, boxes: list[list[Box | None]], cfg: SyntheticConfig) -> dict:
    """Per native frame: every visible object's box jittered (missed with prob stvg_miss), Poisson false
    positives; true boxes score 0.5-1, false ones 0.05-0.6; best score first, no object identities."""
    rng = np.random.default_rng([*plan.seed_key, 19])
    W, H = plan.width, plan.height
    frames = {}
    for f, row in enumerate(boxes):
        found = []
        for b in row:
            if b is None or rng.uniform() < cfg.stvg_miss:
                continue
            w, h = b[2] - b[0], b[3] - b[1]
            n = rng.normal(0.0, cfg.proposal_jitter, 4) * np.asarray([w, h, w, h])
            found.append(_clip_box(b[0] + n[0], b[1] + n[1], b[2] + n[2], b[3] + n[3], W, H)
                         + [float(rng.uniform(0.5, 1.0))])
        for _ in range(int(rng.poisson(cfg.stvg_false_positives))):
            w, h = rng.uniform(0.1, 0.4) * W, rng.uniform(0.1, 0.4) * H
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            found.append(_clip_box(x, y, x + w, y + h, W, H) + [float(rng.uniform(0.05, 0.6))])
        found.sort(key=lambda r: -r[4])
        frames[str(f)] = {"boxes": [r[:4] for r in found], "scores": [round(r[4], 3) for r in found]}
    return {"fps": float(plan.fps), "width": W, "height": H, "frames": frames}


def _clip_box(x1, y1, x2, y2, W, H) -> list[float]:
    x1, x2 = sorted((min(max(x1, 0.0), W - 1.0), min(max(x2, 1.0), float(W))))
    y1, y2 = sorted((min(max(y1, 0.0), H - 1.0), min(max(y2, 1.0), float(H))))
    return [round(x1, 1), round(y1, 1), round(max(x2, x1 + 1), 1), round(max(y2, y1 + 1), 1)]


def trajectories(plan: VideoPlan, boxes: list[list[Box | None]]) -> dict[str, dict[str, dict]]:
    """{object id: {frame: {"bbox": [x, y, w, h]}}} for every object in every frame it is visible: TubeDETR's
    preprocessed layout exactly (its evaluator indexes `["bbox"]`)."""
    out: dict[str, dict[str, dict]] = {}
    for j in range(len(plan.objects)):
        out[str(j)] = {str(f): {"bbox": [b[j][0], b[j][1], b[j][2] - b[j][0], b[j][3] - b[j][1]]}
                       for f, b in enumerate(boxes) if b[j] is not None}
    return out


def record(plan: VideoPlan, boxes: list[list[Box | None]], cfg: SyntheticConfig) -> dict:
    """The STVG part of a video's record (generate.make_video adds it in stvg mode)."""
    return {"queries": queries(plan, boxes, cfg), "detections": proposals(plan, boxes, cfg),
            "concurrent_actions": len(plan.concurrent), "stvg_actions": len(plan.all_actions),
            "trajectories": trajectories(plan, boxes),
            "objects": [{"noun": o.noun, "colour": o.colour, "texture": o.texture} for o in plan.objects]}


def write_split(cfg: SyntheticConfig, split: str, records: list[dict], dumps) -> dict:
    """queries.json, detections.json, truth/vidstg.json, truth/parses.json; returns the realised mix."""
    root = fsio.join(cfg.out, split)
    videos, visible, parses = [], [], {}
    kinds = {k: 0 for k in KINDS}
    qtypes = {"declarative": 0, "interrogative": 0}
    fallbacks = qtype_fallbacks = concurrent_queries = 0
    for r in records:
        for q in r["queries"]:
            key = str(len(videos))
            videos.append({"video_id": key, "original_video_id": r["vid"], "caption": q["sentence"],
                           "qtype": q["qtype"], "fps": float(cfg.fps), "width": r["wh"][0], "height": r["wh"][1],
                           "frame_count": r["frames"], "start_frame": 0, "end_frame": r["frames"],
                           "tube_start_frame": q["tube"][0], "tube_end_frame": q["tube"][1],
                           "target_id": q["target"], "video_path": f"videos/{r['vid']}.mp4"})
            visible.append({"key": key, "video": r["vid"], "sentence": q["sentence"], "qtype": q["qtype"]})
            parses[key] = {k: q[k] for k in ("kind", "wanted", "parse", "target", "reference", "predicate", "verb",
                                             "action", "concurrent")}
            kinds[q["kind"]] += 1
            qtypes[q["qtype"]] += 1
            fallbacks += q["kind"] != q["wanted"]
            qtype_fallbacks += q["qtype"] != q["drawn_qtype"]
            concurrent_queries += bool(q["concurrent"])
    fsio.write_bytes_atomic(fsio.join(root, "truth", "vidstg.json"), dumps(
        {"videos": videos, "trajectories": {r["vid"]: r["trajectories"] for r in records},
         "objects": {r["vid"]: r["objects"] for r in records}}))
    fsio.write_bytes_atomic(fsio.join(root, "truth", "parses.json"), dumps(parses))
    fsio.write_bytes_atomic(fsio.join(root, "detections.json"), dumps(
        {"format": DETECTIONS_FORMAT, "box_format": "xyxy", "videos": {r["vid"]: r["detections"] for r in records}}))
    fsio.write_bytes_atomic(fsio.join(root, "queries.json"), dumps(visible))
    return {"queries": len(videos), "kinds": kinds, "qtypes": qtypes, "fallbacks": fallbacks,
            "qtype_fallbacks": qtype_fallbacks, "concurrent_queries": concurrent_queries,
            "concurrent_actions": sum(r["concurrent_actions"] for r in records),
            "actions_without_query": sum(r["stvg_actions"] for r in records) - len(videos)}


def corpus_section(cfg: SyntheticConfig) -> dict:
    w = np.asarray([cfg.stvg_attribute, cfg.stvg_relation, cfg.stvg_action, cfg.stvg_same_noun], float)
    return {"mix": dict(zip(KINDS, (w / w.sum()).round(4).tolist())), "interrogative": cfg.stvg_interrogative,
            "concurrent": cfg.stvg_concurrent, "same_verb": cfg.stvg_same_verb,
            "predicates": list(PREDICATES), "near_px": cfg.stvg_near * min(cfg.width, cfg.height),
            "files": {"queries": "queries.json", "detections": "detections.json", "truth": "truth/vidstg.json",
                      "parses": "truth/parses.json"}}
