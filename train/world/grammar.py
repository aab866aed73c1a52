"""Caption semantics to English: the verbs, templates and paraphrases of the world's captions."""

from __future__ import annotations

import numpy as np


# motion -> list of (simple present, gerund); index 0 is the canonical phrase.
_VERBS: dict[str, list[tuple[str, str]]] = {
    "left": [("moves left", "moving left"), ("moves to the left", "moving to the left"),
             ("slides left", "sliding left"), ("goes left", "going left")],
    "right": [("moves right", "moving right"), ("moves to the right", "moving to the right"),
              ("slides right", "sliding right"), ("goes right", "going right")],
    "up": [("moves up", "moving up"), ("rises", "rising"), ("goes up", "going up"),
           ("slides upward", "sliding upward")],
    "down": [("moves down", "moving down"), ("falls", "falling"), ("goes down", "going down"),
             ("drops", "dropping")],
    "grow": [("grows", "growing"), ("gets bigger", "getting bigger"), ("expands", "expanding")],
    "shrink": [("shrinks", "shrinking"), ("gets smaller", "getting smaller"), ("contracts", "contracting")],
    "rotate": [("rotates", "rotating"), ("spins", "spinning"), ("turns around", "turning around")],
    "blink": [("blinks", "blinking"), ("flashes", "flashing"), ("flickers", "flickering")],
    "appear": [("appears", "appearing"), ("shows up", "showing up"), ("pops up", "popping up")],
    "disappear": [("disappears", "disappearing"), ("vanishes", "vanishing"), ("fades away", "fading away")],
    "move": [("moves", "moving"), ("is moving", "moving around")],
    "resize": [("changes size", "changing size"), ("changes its size", "changing its size")],
}


def canonical_verb(motion: str) -> str:
    """The one-word simple present a canonical caption uses for ``motion`` ("grows"); the word of
    a translation's phrase that names it ("left" of "moves left")."""
    return _VERBS[motion][0][0].split()[-1]


_BG_PREPOSITIONS = ["on", "over", "in front of"]
_THEN = ["{a}, then {b}", "{a} and then {b}", "first {a}, then {b}", "{a}, after that {b}"]
_MENTION = [", with a {o} nearby", " next to a {o}", ", and a {o} is also there"]


class Grammar:
    """Turns semantics into English. Canonical phrasing unless ``paraphrase`` fires, so 'easy'
    has a fixed, tiny grammar and 'hard' forces the text tower to learn synonyms."""

    def __init__(self, rng: np.random.Generator, paraphrase: float):
        self.rng = rng
        self.p = paraphrase

    def _pick(self, options: list):
        if len(options) > 1 and self.rng.random() < self.p:
            return options[int(self.rng.integers(1, len(options)))]
        return options[0]

    def noun(self, spec: dict) -> str:
        words = [w for w in (spec.get("size"), spec.get("color")) if w is not None and w != "varying"]
        if spec.get("shape") is None:
            if spec.get("color") is not None and spec.get("size") is None and self.rng.random() < self.p:
                return f"something {spec['color']}"
            words.append("shape")
        else:
            words.append(spec["shape"])
        return "a " + " ".join(words)

    def background(self, bg: str) -> str:
        return f"{self._pick(_BG_PREPOSITIONS)} a {bg} background"

    def clause(self, spec: dict, *, bg: str | None, subject: str | None = None, gerund_ok: bool = True) -> str:
        """One event as a clause. Templates: 0 "S V [on a B background]" (canonical),
        1 "S V-ing [...]" (a noun phrase, as many MSRVTT captions are), 2 "on a B background, S V"."""
        present, gerund = self._pick(_VERBS[spec["motion"]])
        subj = subject or self.noun(spec)
        allowed = [t for t, ok in ((1, gerund_ok), (2, bg is not None)) if ok]
        template = 0
        if allowed and self.rng.random() < self.p:
            template = allowed[int(self.rng.integers(len(allowed)))]
        text = f"{subj} {gerund if template == 1 else present}"
        if bg is None:
            return text
        if template == 2:
            return f"{self.background(bg)}, {text}"
        return f"{text} {self.background(bg)}"

    def sentence(self, semantics: dict) -> str:
        events, bg = semantics["events"], semantics.get("background")
        if not events:  # presence only: "a red circle (on a striped background)"
            text = " and a ".join(self.noun(m)[2:] if i else self.noun(m) for i, m in enumerate(semantics["mentions"]))
            return f"{text} {self.background(bg)}" if bg else text
        if len(events) == 1:
            text = self.clause(events[0], bg=bg)
        else:
            a = self.clause(events[0], bg=bg, gerund_ok=False)
            subj = "it" if semantics.get("same_actor") else None
            b = self.clause(events[1], bg=None, subject=subj, gerund_ok=False)
            text = self._pick(_THEN).format(a=a, b=b)
        for m in semantics["mentions"]:
            text += self._pick(_MENTION).format(o=self.noun(m)[2:])
        return text


