"""Query parsing for VCMA (docs/vcma.md): entity phrases (noun + attributes) and relation triplets
(subject, predicate, object) of an English grounding query, with character spans so a head can pool the export's
word features over each phrase.

`parse(sentence)` is a small rule-based parser: a closed-class lexicon (determiners, auxiliaries, wh-words,
prepositions including multi-word ones such as "left of" / "in front of"), a lexicon of common verbs with
inflection rules (and a fallback for unknown -s verbs), chunking into noun phrases, and a handful of clause
patterns: declaratives ("[there is] NP [aux] VERB [NP] PP*", "NP is PREP NP"), subject questions ("what/who VP",
"which NP VP", "what ATTR thing VP") and object questions ("who/what does NP VERB", "what is NP PREP"). It is exact
on the synthetic STVG grammar (tested against the generator's truth/parses.json) and reasonable on VidSTG's
sentences (benchmarks.diagnostics.vcma_parser counts how many yield a subject and a relation). No model is downloaded;
`parser=spacy` (finetune/heads/vcma.py) uses a spaCy model only when the user has one installed.

What the parse holds:
- entities: each noun phrase, with its head noun (None for a wh-word or "thing"), its attributes (adjectives,
  noun modifiers, and "in/with/wearing" phrases of colours or clothes: "an adult in black clothes"), its span;
- relations: (subject entity, predicate, object entity or None). An active verb with an object gives
  (subj, verb [+ particle], obj) ("rides a skateboard", "leans on a toy"), a copula or passive followed by a
  preposition gives (subj, prep, obj) ("is above a sofa", "is cut left of the bowl"), a prepositional phrase after
  a noun (not an attribute) gives (noun, prep, obj); a verb without an object stays the `action` and also
  becomes a unary relation (subj, verb, None), so a sentence such as "the cube is cut" still has something to
  reconstruct (VCMA Eq. 15);
- subject: the grammatical subject; target: the entity the query grounds (the subject, or the wh-object of
  "who does the adult lift?").
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from common.errors import UserError

DETERMINERS = {"a", "an", "the", "another", "this", "that", "these", "those", "some", "his", "her", "their", "its",
               "my", "your", "our", "one", "two", "three", "four", "other", "each", "every", "any"}
WH = {"what", "who", "whom", "which", "whose"}
BE = {"is", "are", "was", "were", "be", "been", "being", "am"}
DO = {"do", "does", "did"}
CONJ = {"and", "or", "but", "while", "as", "then", "when"}
ADVERBS = {"outdoors", "indoors", "outside", "inside", "together", "away", "up", "down", "again", "now", "here",
           "there", "slowly", "quickly", "also", "still", "closely", "nearby", "around", "back", "forward", "off"}
PLACEHOLDERS = {"thing", "object", "one", "something", "someone", "somebody", "person"}
# multi-word prepositions first (longest match wins)
PREPS_MULTI = ["to the left of", "to the right of", "on the left of", "on the right of", "in front of",
               "on top of", "in back of", "in the middle of", "left of", "right of", "next to", "away from",
               "close to", "out of", "ahead of", "far from", "on the side of", "in the back of"]
PREPS = {"above", "below", "beneath", "under", "over", "behind", "beside", "besides", "near", "on", "in", "at",
         "inside", "outside", "with", "without", "towards", "toward", "to", "from", "into", "onto", "by", "along",
         "across", "around", "through", "against", "past", "underneath", "beyond", "among", "between", "within",
         "upon", "of", "for", "off", "via", "like"}
ATTRIBUTE_PREPS = {"in", "with", "wearing", "without"}
COLOURS = {"red", "green", "blue", "yellow", "purple", "orange", "pink", "white", "black", "gray", "grey", "brown",
           "beige", "silver", "gold", "golden", "cyan", "magenta", "violet", "dark", "light", "khaki", "navy",
           "maroon", "colorful", "colourful", "striped", "plaid", "blond", "blonde"}
CLOTHES = {"clothes", "clothing", "shirt", "shirts", "t-shirt", "tshirt", "hat", "hats", "cap", "glasses",
           "sunglasses", "hair", "dress", "jacket", "coat", "shoes", "jeans", "pants", "trousers", "diaper",
           "helmet", "uniform", "skirt", "suit", "shorts", "sweater", "hoodie", "vest", "scarf", "gloves", "top",
           "mask", "beard", "apron", "costume", "swimsuit", "bikini", "overalls", "boots", "socks", "tie",
           "backpack", "bag", "stripes", "pajamas", "sleeves", "collar", "headphones", "earrings", "necklace"}
IRREGULAR = {"shaken": "shake", "taken": "take", "given": "give", "eaten": "eat", "driven": "drive",
             "ridden": "ride", "written": "write", "bitten": "bite", "held": "hold", "caught": "catch",
             "thrown": "throw", "blown": "blow", "drawn": "draw", "seen": "see", "done": "do", "gone": "go",
             "broken": "break", "chosen": "choose", "fallen": "fall", "hidden": "hide", "beaten": "beat",
             "stood": "stand", "sat": "sit", "led": "lead", "fed": "feed", "hit": "hit", "put": "put",
             "cut": "cut", "set": "set", "shut": "shut", "spun": "spin", "swung": "swing", "stuck": "stick",
             "hung": "hang", "brought": "bring", "bought": "buy", "kept": "keep", "left": "leave", "lost": "lose",
             "made": "make", "met": "meet", "paid": "pay", "read": "read", "run": "run", "sent": "send",
             "told": "tell", "thought": "think", "won": "win", "worn": "wear", "flown": "fly", "grown": "grow",
             "known": "know", "shown": "show", "has": "have", "had": "have", "goes": "go", "does": "do",
             "flies": "fly", "carries": "carry", "cries": "cry", "lies": "lie", "ties": "tie", "dies": "die"}
# lemmas: the verbs of VidSTG's relation set and of instructional / everyday scenes (an unknown verb is still
# found by position when it ends in -s, -ing or -ed)
VERBS = set("""
ride watch hold use play lean push pull carry grab hug chase bite kick lift caress speak walk touch drive sit
stand run jump throw catch feed kiss look squat shake cut stir pour crush wash fry wave point talk hit press
pat open close eat drink wear climb follow lie swim fly sleep stop move turn dance sing cook clean fight hold
take give put place drop raise lower cross enter leave approach meet pass fall stand get help smell sniff lick
pick reach slide roll spin swing bend rub scratch wipe mix chop slice peel fill empty dip spread beat whisk
grill bake boil serve hand show make build draw paint write read type call bring send keep hang stick tie
bump touch hit knock tap step kneel crawl hop skate ski surf row paddle bounce toss pour lay rest sit
""".split())
NOUN_S = {"glasses", "clothes", "jeans", "pants", "shorts", "trousers", "scissors", "sunglasses", "bus", "grass",
          "glass", "dress", "class", "gas", "canvas", "lens", "news", "physics", "species", "series", "overalls",
          "headphones", "stripes", "pajamas", "boots", "shoes", "gloves", "socks", "fruits", "toys", "cars",
          "dogs", "cats", "children", "people", "adults", "balls", "cups", "bowls", "things", "others", "kids"}

NOUN_ING = {"thing", "something", "nothing", "anything", "ring", "king", "string", "building", "ceiling",
            "clothing", "painting", "morning", "evening", "wedding", "swing", "wing", "spring", "railing", "living",
            "dining", "sibling", "pudding", "stuffing", "frosting", "icing", "parking", "ping", "sling", "earring"}

TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")


@dataclass
class Entity:
    noun: str | None                   # head noun; None for a wh-word or a placeholder ("what red thing")
    attributes: list[str]              # modifiers in sentence order (colours, adjectives, attribute phrases' words)
    start: int                         # characters [start, end) of the whole phrase in the sentence
    end: int
    wh: str | None = None              # the wh-word when the entity is the one asked for

    @property
    def phrase(self) -> str:
        """The generator's notation: attributes then the noun (or the wh-word)."""
        return " ".join(self.attributes + [self.noun or self.wh or "what"])


@dataclass
class Relation:
    subject: int                       # entity index
    predicate: str                     # lemma words ("left of", "lean on", "cut")
    object: int | None                 # entity index, None for a verb without an object
    start: int                         # characters [start, end) of the predicate's words
    end: int


@dataclass
class Parse:
    sentence: str
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    subject: int | None = None         # the grammatical subject
    target: int | None = None          # the entity the query grounds
    action: str | None = None          # the main verb's lemma

    def as_truth(self) -> dict:
        """The generator's truth/parses.json notation: subject (noun, attributes), action, and the triplets that
        have an object as [subject phrase, predicate, object phrase]."""
        subj = self.entities[self.subject] if self.subject is not None else None
        return {"subject": {"noun": subj.noun if subj else None, "attributes": list(subj.attributes) if subj else []},
                "action": self.action,
                "relations": [[self.entities[r.subject].phrase, r.predicate, self.entities[r.object].phrase]
                              for r in self.relations if r.object is not None]}


def hashed_ids(words: list[str], vocab: int) -> list[int]:
    """Word ids of a fixed hashed vocabulary (2 .. vocab-1; 0 pad, 1 BOS): nothing to build from the training
    sentences, the same ids on every rank and after a resume."""
    return [2 + zlib.crc32(w.lower().encode()) % (vocab - 2) for w in words]


def lemma(word: str) -> str:
    """Verb lemma from an inflected form (-s, -es, -ies, -ed, -ied, doubled consonants, -ing, irregulars)."""
    w = word.lower()
    if w in IRREGULAR:
        return IRREGULAR[w]
    if w in VERBS:
        return w
    for suffix in ("ing", "ed"):
        if w.endswith(suffix) and len(w) > len(suffix) + 2:
            stem = w[: -len(suffix)]
            if suffix == "ed" and stem.endswith("i"):
                return stem[:-1] + "y"                                   # fried -> fry
            if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
                return stem[:-1]                                         # stirred -> stir, running -> run
            if stem + "e" in VERBS or (stem not in VERBS and stem[-1] in "cvz"):
                return stem + "e"                                        # placed -> place, shaking -> shake
            return stem
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    if w.endswith("es") and (w[:-2] in VERBS or w[:-2].endswith(("sh", "ch", "ss", "x", "z", "o"))):
        return w[:-2]
    if w.endswith("s") and not w.endswith("ss") and len(w) > 2:
        return w[:-1]
    return w


def _is_verb_form(w: str) -> bool:
    """A known verb in any inflection (not a bare noun-like lemma: 'cut' and 'play' count, 'ball' does not)."""
    return w in IRREGULAR or lemma(w) in VERBS


@dataclass
class _Tok:
    text: str
    low: str
    start: int
    end: int


class _Parser:
    def __init__(self, sentence: str):
        self.s = sentence
        self.toks = [_Tok(m.group(), m.group().lower(), m.start(), m.end()) for m in TOKEN.finditer(sentence)]
        self.i = 0
        self.out = Parse(sentence)

    # --- token helpers --------------------------------------------------------------------------------------------
    def low(self, k: int = 0) -> str:
        j = self.i + k
        return self.toks[j].low if j < len(self.toks) else ""

    def prep_at(self, i: int) -> int:
        """Length in tokens of the (multi-word) preposition starting at token i, 0 if none."""
        words = [t.low for t in self.toks[i:i + 5]]
        for p in PREPS_MULTI:
            n = len(p.split())
            if words[:n] == p.split():
                return n
        return 1 if words and words[0] in PREPS else 0

    def closed(self, w: str) -> bool:
        return (w in DETERMINERS or w in WH or w in BE or w in DO or w in CONJ or w in PREPS or not w
                or not w[0].isalnum() or w == "there" or w == "wearing")

    # --- noun phrases ---------------------------------------------------------------------------------------------
    def noun_phrase(self, head_needed: bool = True, verb_next: bool = False) -> int | None:
        """Chunk a noun phrase at the cursor (determiners, modifiers, head), then its attribute phrases; returns
        the entity index or None when no content word is there."""
        start = self.i
        while self.low() in DETERMINERS:
            self.i += 1
        words: list[_Tok] = []
        while self.i < len(self.toks):
            w = self.low()
            if self.closed(w) or w in ADVERBS and words or self.prep_at(self.i):
                break
            # a verb after a complete phrase ends it ("a dog with a rope walks ..."): a known verb form, or an
            # unknown -s word followed by a phrase, a preposition or the end
            if words and self._verb_here(self.i, verb_next):
                break
            words.append(self.toks[self.i])
            self.i += 1
        if not words:
            self.i = start
            return None
        head = words[-1]
        noun = None if head.low in PLACEHOLDERS else head.low
        ent = Entity(noun, [t.low for t in words[:-1]], self.toks[start].start, head.end)
        idx = len(self.out.entities)
        self.out.entities.append(ent)
        self._attribute_phrases(ent)
        return idx

    def _verb_here(self, i: int, verb_next: bool) -> bool:
        w = self.toks[i].low
        nxt = self.toks[i + 1].low if i + 1 < len(self.toks) else ""
        follows_phrase = (not nxt or nxt in DETERMINERS or self.prep_at(i + 1) > 0 or not nxt[0].isalnum()
                          or nxt in COLOURS or nxt in ADVERBS or nxt in WH)
        if w in COLOURS or w in CLOTHES or w in NOUN_S:
            return False
        if verb_next and _is_verb_form(w):
            return True
        if w.endswith("ing") and len(w) > 4 and w not in NOUN_ING:
            return True
        if _is_verb_form(w) and (w.endswith("s") or w in IRREGULAR) and follows_phrase:
            return True
        return w.endswith("s") and not w.endswith("ss") and follows_phrase and len(w) > 3

    def _attribute_phrases(self, ent: Entity) -> None:
        """'in black clothes', 'with glasses', 'wearing red shoes' after a noun: attributes, not entities."""
        while self.i < len(self.toks) and self.low() in ATTRIBUTE_PREPS:
            j = self.i + 1
            while j < len(self.toks) and self.toks[j].low in DETERMINERS:
                j += 1
            k = j
            while k < len(self.toks) and (self.toks[k].low in COLOURS or self.toks[k].low in CLOTHES
                                          or (self.toks[k].low not in PREPS and not self.closed(self.toks[k].low)
                                              and k + 1 < len(self.toks) and self.toks[k + 1].low in CLOTHES)):
                k += 1
            content = self.toks[j:k]
            if not content or not any(t.low in COLOURS or t.low in CLOTHES for t in content):
                return
            ent.attributes += [t.low for t in content]
            ent.end = content[-1].end
            self.i = k

    def wh_entity(self, tok: _Tok) -> int:
        self.out.entities.append(Entity(None, [], tok.start, tok.end, wh=tok.low))
        return len(self.out.entities) - 1

    # --- clauses --------------------------------------------------------------------------------------------------
    def relate(self, subj: int, pred: str, obj: int | None, start: int, end: int) -> None:
        self.out.relations.append(Relation(subj, pred, obj, start, end))

    def prep_phrases(self, anchor: int) -> None:
        """PREP NP ... after a clause: relations of `anchor` (the subject), chained to the last noun for 'of'."""
        while self.i < len(self.toks):
            while self.low() in ADVERBS or self.low() in CONJ or (self.low() and not self.low()[0].isalnum()):
                self.i += 1
                if self.i >= len(self.toks):
                    return
            n = self.prep_at(self.i)
            if n == 0:
                # an object without a preposition (the second object of "shakes hand with"): skip a word
                self.i += 1
                continue
            p0, p1 = self.toks[self.i], self.toks[self.i + n - 1]
            pred = " ".join(t.low for t in self.toks[self.i:self.i + n])
            self.i += n
            obj = self.noun_phrase()
            if obj is not None:
                self.relate(anchor, pred, obj, p0.start, p1.end)

    def noun_modifiers(self, ent: int) -> None:
        """Relations inside a noun phrase: 'the cube left of the blue bowl', 'a sink beneath a rat'."""
        while self.i < len(self.toks):
            n = self.prep_at(self.i)
            if n == 0:
                return
            save = self.i
            p0, p1 = self.toks[self.i], self.toks[self.i + n - 1]
            pred = " ".join(t.low for t in self.toks[self.i:self.i + n])
            self.i += n
            obj = self.noun_phrase()
            if obj is None:
                self.i = save
                return
            self.relate(ent, pred, obj, p0.start, p1.end)

    def verb_phrase(self, subj: int, object_asked: int | None = None) -> None:
        """[aux] VERB [particle] [NP] PP* after the subject (the cursor on the aux or the verb)."""
        out = self.out
        copula = False
        while self.low() in BE or self.low() in DO or self.low() in ("has", "have", "had", "not"):
            copula = copula or self.low() in BE
            self.i += 1
        n = self.prep_at(self.i)
        if copula and n:                                        # "is above a sofa", "is left of the bowl"
            p0, p1 = self.toks[self.i], self.toks[self.i + n - 1]
            pred = " ".join(t.low for t in self.toks[self.i:self.i + n])
            self.i += n
            obj = self.noun_phrase() if object_asked is None else object_asked
            if obj is not None:
                self.relate(subj, pred, obj, p0.start, p1.end)
            self.prep_phrases(subj)
            return
        if self.i >= len(self.toks) or self.closed(self.low()):
            return
        vt = self.toks[self.i]
        verb = lemma(vt.low)
        out.action = verb
        self.i += 1
        if copula:                                              # passive / progressive: PPs are the relations
            if not (vt.low.endswith("ing") and self.low() in DETERMINERS or self.low() and
                    not self.closed(self.low()) and vt.low.endswith("ing")):
                if object_asked is not None:
                    self.relate(subj, verb, object_asked, vt.start, vt.end)
                else:
                    self.relate(subj, verb, None, vt.start, vt.end)
                self.prep_phrases(subj)
                return
        # active: particle, object
        n = self.prep_at(self.i)
        pend = vt.end
        pred = verb
        if n and object_asked is not None and self.i + n < len(self.toks) and self.toks[self.i + n].low[0].isalnum():
            n = 0                # "what does the adult hold outside the room?": a place, not a stranded particle
        if n:
            p1 = self.toks[self.i + n - 1]
            pred = verb + " " + " ".join(t.low for t in self.toks[self.i:self.i + n])
            pend = p1.end
            self.i += n
        obj = object_asked if object_asked is not None else self.noun_phrase()
        if obj is None and n:                                   # "walks in front of" with no phrase: keep the verb
            pred = verb
            pend = vt.end
        if obj is not None and object_asked is None and self.low() == "of" and self.toks[self.i - 1].low == "hand":
            # "holds hand of an adult": the person is the object
            self.i += 1
            second = self.noun_phrase()
            if second is not None:
                pred, obj = pred + " hand of", second
        self.relate(subj, pred, obj, vt.start, pend)
        self.prep_phrases(subj)

    def run(self) -> Parse:
        out = self.out
        if not self.toks:
            return out
        first = self.low()
        if first == "there" and self.low(1) in BE:              # "there is a sink beneath a rat"
            self.i += 2
            subj = self.noun_phrase()
            out.subject = out.target = subj
            if subj is None:
                return out
            self.noun_modifiers(subj)
            if self.i < len(self.toks) and not self.closed(self.low()) and self.low() not in ADVERBS:
                self.verb_phrase(subj)                          # "there is a dog biting a ball"
            else:
                self.prep_phrases(subj)
            return out
        if first in WH:
            return self.question()
        subj = self.noun_phrase(verb_next=False)
        out.subject = out.target = subj
        if subj is None:
            return out
        self.noun_modifiers(subj)
        self.verb_phrase(subj)
        return out

    def question(self) -> Parse:
        out = self.out
        wh_tok = self.toks[0]
        self.i = 1
        # "which red cube ... is stirred?", "what red thing is cut?", "whose ... ": the wh-word determines a phrase
        if (wh_tok.low in ("which", "what", "whose") and self.low() and not self.closed(self.low())
                and not self._verb_here(self.i, False)):
            subj = self.noun_phrase()
            if subj is not None:
                ent = out.entities[subj]
                ent.wh = wh_tok.low
                ent.start = wh_tok.start
                out.subject = out.target = subj
                self.noun_modifiers(subj)
                self.verb_phrase(subj)
                return out
        asked = self.wh_entity(wh_tok)
        if self.low() in DO:                                    # "who does the adult lift outdoors?"
            self.i += 1
            subj = self.noun_phrase(verb_next=True)
            out.subject, out.target = subj, asked
            if subj is None:
                return out
            self.noun_modifiers(subj)
            self.verb_phrase(subj, object_asked=asked)
            return out
        if self.low() in BE:
            j = self.i + 1
            nxt = self.toks[j].low if j < len(self.toks) else ""
            if nxt in DETERMINERS:                              # "what is the adult in white towards?"
                self.i = j
                subj = self.noun_phrase()
                out.subject, out.target = subj, asked
                if subj is None:
                    return out
                n = self.prep_at(self.i)
                if n:
                    p0, p1 = self.toks[self.i], self.toks[self.i + n - 1]
                    pred = " ".join(t.low for t in self.toks[self.i:self.i + n])
                    self.i += n
                    obj = self.noun_phrase()
                    if obj is None:                             # the asked entity is the preposition's object
                        self.relate(subj, pred, asked, p0.start, p1.end)
                    else:
                        self.relate(subj, pred, obj, p0.start, p1.end)
                    self.prep_phrases(subj)
                else:
                    self.verb_phrase(subj, object_asked=asked)
                return out
        out.subject = out.target = asked                        # subject question: "what is cut left of ...?"
        self.verb_phrase(asked)
        return out


def parse(sentence: str) -> Parse:
    return _Parser(sentence).run()


# --- spaCy, when the user has a model installed -------------------------------------------------------------------
class SpacyUnavailable(UserError):
    """parser=spacy (vcma.parser, fsm.parser) without spaCy or an installed English model (one `error:` line at the
    entry points)."""


def spacy_parser(model: str = "", key: str = "vcma.parser"):
    """A parse function backed by an installed spaCy pipeline (`model`, or the first installed en_core_web_*);
    SpacyUnavailable, naming the setting `key`, when spaCy or a model is missing (nothing is downloaded)."""
    try:
        import spacy  # noqa: F401
        from spacy.util import get_installed_models
    except ImportError:
        raise SpacyUnavailable(f"{key}=spacy needs spaCy and an installed English model (pip install spacy "
                               f"and an en_core_web_* package); use {key}=rules") from None
    names = [model] if model else sorted(m for m in get_installed_models() if m.startswith("en_"))
    if not names:
        raise SpacyUnavailable(f"{key}=spacy: no English spaCy model is installed (nothing is downloaded at "
                               f"run time); install one or use {key}=rules")
    try:
        nlp = spacy.load(names[0])
    except OSError as e:
        raise SpacyUnavailable(f"{key}=spacy: cannot load spaCy model {names[0]!r}: {e}") from None

    def run(sentence: str) -> Parse:
        doc = nlp(sentence)
        out = Parse(sentence)
        index = {}
        for chunk in doc.noun_chunks:
            head = chunk.root
            noun = None if head.lower_ in WH | PLACEHOLDERS or head.pos_ == "PRON" else head.lemma_.lower()
            attrs = [t.lower_ for t in chunk if t.i != head.i and t.dep_ not in ("det", "poss") and t.lower_ not in WH]
            index[head.i] = len(out.entities)
            out.entities.append(Entity(noun, attrs, chunk.start_char, chunk.end_char,
                                       wh=head.lower_ if head.lower_ in WH else None))
        for tok in doc:
            if tok.dep_ in ("nsubj", "nsubjpass") and tok.i in index:
                out.subject = out.target = out.subject if out.subject is not None else index[tok.i]
                verb = tok.head
                out.action = out.action or verb.lemma_.lower()
                objs = [c for c in verb.children if c.dep_ in ("dobj", "obj") and c.i in index]
                for c in objs:
                    out.relations.append(Relation(index[tok.i], verb.lemma_.lower(), index[c.i], verb.idx,
                                                  verb.idx + len(verb)))
                for prep in (c for c in verb.children if c.dep_ in ("prep", "agent")):
                    for p in (c for c in prep.children if c.dep_ == "pobj" and c.i in index):
                        out.relations.append(Relation(index[tok.i], prep.lower_, index[p.i], prep.idx,
                                                      prep.idx + len(prep)))
                if not objs:
                    out.relations.append(Relation(index[tok.i], verb.lemma_.lower(), None, verb.idx,
                                                  verb.idx + len(verb)))
        for tok in doc:                                         # noun modifiers: "the cube left of the bowl"
            if tok.dep_ == "prep" and tok.head.i in index:
                for p in (c for c in tok.children if c.dep_ == "pobj" and c.i in index):
                    out.relations.append(Relation(index[tok.head.i], tok.lower_, index[p.i], tok.idx,
                                                  tok.idx + len(tok)))
        if out.subject is None and out.entities:
            out.subject = out.target = 0
        return out

    return run


def parser_of(kind: str, model: str = ""):
    """The parse function for vcma.parser (rules | spacy)."""
    if kind == "rules":
        return parse
    if kind == "spacy":
        return spacy_parser(model)
    raise ValueError(f"unknown parser {kind!r}")


class CachedParser:
    """parser_of(kind, model) applied once per distinct sentence for as long as this object lives (a run's batcher
    or predictor), the parser built on first use: a spaCy model loads only where sentences are. The heads' text
    preps (VCMA's phrases, FSM's verbs) parse through it."""

    def __init__(self, kind: str = "rules", model: str = ""):
        self.kind, self.model = kind, model
        self._parse = None
        self._parses: dict[str, Parse] = {}

    def __call__(self, sentence: str) -> Parse:
        if sentence not in self._parses:
            if self._parse is None:
                self._parse = parser_of(self.kind, self.model)
            self._parses[sentence] = self._parse(sentence)
        return self._parses[sentence]


__all__ = ["CachedParser", "Entity", "Parse", "Relation", "SpacyUnavailable", "hashed_ids", "lemma", "parse",
           "parser_of", "spacy_parser"]
