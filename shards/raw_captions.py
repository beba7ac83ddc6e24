"""HowTo100M's `raw_caption.json`: the same `{video_id: {"start", "end", "text"}}` as `caption.json`, but the ASR
lines as YouTube shows them. Two differences matter (docs/contracts.md section 1):
- the text is unprocessed: stop words kept (caption.json had them removed), line breaks inside a text, empty or
  non-string entries;
- the lines roll: a line often repeats the tail of the one before (shown for real-time reading) and their times
  overlap, so the same words would become two or three training captions.
`from_raw` turns one video's raw entry into caption.json's shape: line breaks become spaces, a line contained in
the previous one is merged into it, a line that extends the previous replaces it, and the words a line repeats
from the end of the previous are cut from its start (deterministic, whole words). Each kept segment records the
index of the raw line it starts at (`index`), so a shard key still traces back to the file. Entries that are not
strings or are blank are passed on untouched, for `clean_segments` to count as `bad_caption_text`.
"""
from __future__ import annotations


def is_raw(url: str) -> bool:
    """By the file's name, as HowTo100M ships it (raw_caption.json; split or renamed copies keep the prefix)."""
    return url.rstrip("/").rsplit("/", 1)[-1].startswith("raw_caption")


def _overlap(prev: list[str], cur: list[str]) -> int:
    """Words at the start of cur that repeat the end of prev (the longest such run)."""
    for n in range(min(len(prev), len(cur)), 0, -1):
        if prev[-n:] == cur[:n]:
            return n
    return 0


def from_raw(entry):
    """One video's raw entry -> {"start", "end", "text", "index"}; anything not of the raw shape is returned as it
    is (clean_segments reports it)."""
    if not isinstance(entry, dict):
        return entry
    starts, ends, texts = entry.get("start"), entry.get("end"), entry.get("text")
    if not all(isinstance(x, list) for x in (starts, ends, texts)) or not len(starts) == len(ends) == len(texts):
        return entry
    out = {"start": [], "end": [], "text": [], "index": []}
    words_of_last: list[str] | None = None   # words of the last kept string line (None: the last kept is not one)
    for i, (s, e, t) in enumerate(zip(starts, ends, texts)):
        words = t.split() if isinstance(t, str) else []
        if not words:
            out["start"].append(s), out["end"].append(e), out["text"].append(t), out["index"].append(i)
            words_of_last = None
            continue
        if words_of_last is not None and _is_number(e) and _is_number(out["end"][-1]):
            n = len(words)
            if words_of_last[-n:] == words:                      # already shown: the previous line lasts longer
                out["end"][-1] = max(out["end"][-1], e)
                continue
            if words[:len(words_of_last)] == words_of_last:       # the previous line, extended
                out["text"][-1], out["end"][-1] = " ".join(words), max(out["end"][-1], e)
                words_of_last = words
                continue
            cut = _overlap(words_of_last, words)
            words_of_last, words = words, words[cut:]
        else:
            words_of_last = words
        out["start"].append(s), out["end"].append(e), out["text"].append(" ".join(words)), out["index"].append(i)
    return out


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
