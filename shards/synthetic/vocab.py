"""The synthetic world's words and looks: verbs, object nouns (one silhouette each), colours, textures, and the
phrases the narrator uses. A config picks the first `verbs` / `nouns` / `colours` of each list, so a smaller
vocabulary is a prefix of a larger one and the same seed keeps its meaning."""
from __future__ import annotations

# Verb -> its -ing form (for "keep stirring"). Each verb has its own visual signature in render.py.
VERBS: dict[str, str] = {
    "cut": "cutting",
    "stir": "stirring",
    "pour": "pouring",
    "shake": "shaking",
    "crush": "crushing",
    "wash": "washing",
    "fry": "frying",
    "lift": "lifting",
}

# Noun -> silhouette drawn by render.sprite: distinct outlines so the noun is visible at 32 px.
NOUNS: dict[str, str] = {
    "cube": "square",
    "ball": "circle",
    "bowl": "half-disc",
    "bottle": "tall rectangle with a neck",
    "cup": "trapezoid",
    "carrot": "downward triangle",
}

# Saturated colours: the backgrounds are muted (scene.background), so objects stand out.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 210, 40),
    "purple": (145, 60, 185),
    "orange": (245, 140, 30),
    "pink": (240, 130, 185),
    "brown": (130, 80, 40),
}

TEXTURES = ("solid", "striped", "dotted")

# Key phrases: every one holds "<verb> ... <colour> <noun>" so the action is recoverable from the text.
KEY_PHRASES = (
    "now we {verb} the {colour} {noun}",
    "{verb} the {colour} {noun}",
    "next you {verb} the {colour} {noun}",
    "let's {verb} the {colour} {noun}",
    "i'm going to {verb} this {colour} {noun}",
    "then we {verb} the {colour} {noun} like this",
)

# Follow-up talk while the action goes on (ASR splits a long action into several segments).
FOLLOW_PHRASES = (
    "keep {ing} it",
    "{ing} the {noun} a bit more",
    "just like that",
    "nice and easy",
    "see how it looks",
)

# Talk about nothing visible. No word here is in the verb / noun / colour vocabulary (tests check).
UNRELATED_PHRASES = (
    "don't forget to subscribe",
    "this is my favourite recipe",
    "my grandmother taught me this",
    "link in the description below",
    "thanks for watching",
    "hi everyone welcome back to my channel",
    "let me know in the comments",
    "i got this at the store yesterday",
    "it has been a long week",
    "make sure to hit the like button",
)

FILLERS = ("um", "uh", "so", "okay", "alright", "well")


def vocabulary(verbs: int, nouns: int, colours: int) -> dict[str, list[str]]:
    """The words in use for a config (prefixes of the lists above)."""
    return {
        "verbs": list(VERBS)[:verbs],
        "objects": list(NOUNS)[:nouns],
        "colours": list(COLOURS)[:colours],
        "textures": list(TEXTURES),
    }


def sentence(verb: str, colour: str, noun: str) -> str:
    """The canonical step name written to truth/ ("cut red cube")."""
    return f"{verb} {colour} {noun}"
