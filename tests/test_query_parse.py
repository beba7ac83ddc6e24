"""The VCMA query parser (finetune/query_parse.py): exact on every sentence the synthetic STVG grammar can write
(the generator's own _sentence / _parse, the functions behind truth/parses.json), reasonable on real-style
sentences, spans that point at the words, and the spaCy switch's one error line."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from finetune.query_parse import lemma, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_synthetic_sentence_parses_as_the_generator_says():
    """tests/test_vcma.py also checks a corpus's written truth/parses.json."""
    from shards.synthetic import stvg, vocab

    # every verb, noun and colour in every slot (not their full product: the grammar treats them alike)
    obj = [SimpleNamespace(noun=n, colour=c) for n, c in zip(vocab.NOUNS, itertools.cycle(vocab.COLOURS))]
    obj += [SimpleNamespace(noun=n, colour=c) for n, c in zip(itertools.cycle(vocab.NOUNS), vocab.COLOURS)]
    checked = 0
    for kind, qtype in itertools.product(("attribute", "relation", "action", "same_noun"),
                                         ("declarative", "interrogative")):
        for subj, ref, verb in zip(obj, obj[3:] + obj[:3], itertools.cycle(vocab.VERBS)):
            for pred in (stvg.PREDICATES if kind in ("relation", "same_noun") else (None,)):
                s = stvg._sentence(kind, qtype, verb, subj, ref, pred)
                want = stvg._parse(kind, qtype, verb, subj, ref, pred)
                assert parse(s).as_truth() == want, s
                checked += 1
    assert checked == 2 * len(obj) * (1 + 1 + 2 * len(stvg.PREDICATES)) and len(obj) >= len(vocab.VERBS)


# sentence -> (target phrase, action, relations as (subject phrase, predicate, object phrase or None))
REAL = {
    "an adult pushes a baby walker on the street.":
        ("adult", "push", {("adult", "push", "baby walker"), ("adult", "on", "street")}),
    "a dog with a rope walks in front of a man in white.":
        ("dog", "walk", {("dog", "with", "rope"), ("dog", "walk in front of", "white man")}),
    "there is a sink beneath a rat inside a room.":
        ("sink", None, {("sink", "beneath", "rat"), ("sink", "inside", "room")}),
    "an adult in black clothes is above a beige sofa.":
        ("black clothes adult", None, {("black clothes adult", "above", "beige sofa")}),
    "a child in pink leans on a toy in the children's room.":
        ("pink child", "lean", {("pink child", "lean on", "toy"), ("pink child", "in", "children's room")}),
    "an adult woman in gray holds a baby in white diaper.":
        ("adult gray woman", "hold", {("adult gray woman", "hold", "white diaper baby")}),
    "there is a white dog biting a white sports ball.":
        ("white dog", "bite", {("white dog", "bite", "white sports ball")}),
    "what walks in front of a man in white?":
        ("what", "walk", {("what", "walk in front of", "white man")}),
    "who does the adult in black lift outdoors?":
        ("who", "lift", {("black adult", "lift", "who")}),
    "what does the adult wearing jeans carry?":
        ("what", "carry", {("jeans adult", "carry", "what")}),
    "who is pressing the baby seat?":
        ("who", "press", {("who", "press", "baby seat")}),
    "what is the adult man in white towards to at home?":
        ("what", None, {("adult white man", "towards", "what")}),
    "who holds the gray toy?":
        ("who", "hold", {("who", "hold", "gray toy")}),
    "the glass is lifted slowly":
        ("glass", "lift", {("glass", "lift", None)}),
}


@pytest.mark.parametrize("sentence", sorted(REAL))
def test_real_style_sentences(sentence):
    target, action, relations = REAL[sentence]
    p = parse(sentence)
    ents = p.entities
    got = {(ents[r.subject].phrase, r.predicate, None if r.object is None else ents[r.object].phrase)
           for r in p.relations}
    assert (ents[p.target].phrase, p.action) == (target, action)
    assert relations <= got, got
    assert p.subject is not None


def test_spans_point_at_the_words():
    s = "which red cube left of the blue cube is stirred?"
    p = parse(s)
    assert [s[e.start:e.end] for e in p.entities] == ["which red cube", "the blue cube"]
    assert [s[r.start:r.end] for r in p.relations] == ["left of", "stirred"]
    assert [(r.subject, r.object) for r in p.relations] == [(0, 1), (0, None)]


def test_lemmas():
    assert [lemma(w) for w in ("stirred", "shaken", "fried", "poured", "placed", "rides", "watches", "carries",
                               "running", "cut", "holding", "leans")] == \
        ["stir", "shake", "fry", "pour", "place", "ride", "watch", "carry", "run", "cut", "hold", "lean"]


def test_spacy_without_a_model_is_one_error_line(tmp_path):
    """Here spaCy has no model (none may be downloaded); where a user has one, the switch parses instead."""
    try:
        from spacy.util import get_installed_models
        has_model = any(m.startswith("en_") for m in get_installed_models())
    except ImportError:
        has_model = False
    if has_model:
        from finetune.query_parse import parser_of

        assert parser_of("spacy")("an adult pushes a baby walker").subject is not None
        return
    proc = subprocess.run([sys.executable, "-m", "benchmarks.diagnostics.vcma_parser", "--parser", "spacy",
                           "--annotations", str(tmp_path / "none.json")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "spacy" in lines[0]
