"""Seeded input perturbations for the Robustness pillar (PROTOCOL.md §3.6).

Three levels, applied cumulatively as in the paper's figure (Character -> Word -> Sentence):

- ``char``: a fraction ``intensity`` of the non-whitespace characters is touched, each by one of
  case flip, symbol insertion, character repetition, deletion, adjacent swap or homoglyph
  substitution (the operations visible in the paper's perturbation figure).
- ``word``: the ``char`` perturbation at the same intensity, then a fraction ``intensity`` of the
  words is touched by an order swap with the next word, a deletion or a replacement by a symbol.
- ``sent``: the ``word`` perturbation at the same intensity, then one irrelevant distractor
  sentence is prepended.

Intensity [I] is the fraction of characters (char) or words (word) touched; the defaults 0.05,
0.1 and 0.2 follow PROTOCOL.md. The number of touched units is ``intensity * n`` rounded
stochastically (floor plus a seeded coin for the remainder) so that short texts are not all
rounded down to no change while the expected fraction stays exactly ``intensity``.

Determinism: every stage draws from its own ``random.Random`` seeded with a string built from
(seed, key, stage, intensity). String seeds are hashed with SHA-512 by ``random`` (not with the
per-process ``hash``), so results are identical across processes and platforms. Because the
stages are seeded separately, ``word@p`` is exactly the word stage applied to ``char@p`` of the
same text, and ``sent@p`` is ``word@p`` with a distractor in front.

Only user text is ever passed here; callers keep system prompts, instructions and answer options
out of it (the subtask modules perturb the post or the seeker turns, then build the prompt).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "LEVELS",
    "DEFAULT_INTENSITIES",
    "DEFAULT_SEED",
    "Variant",
    "variant_name",
    "parse_variant",
    "default_variants",
    "stage_rng",
    "perturb_chars",
    "perturb_words",
    "add_distractor",
    "perturb",
]

LEVELS: tuple[str, ...] = ("char", "word", "sent")
DEFAULT_INTENSITIES: tuple[float, ...] = (0.05, 0.1, 0.2)
DEFAULT_SEED = 0

# Homoglyphs: visually near-identical code points from Greek, Cyrillic and Armenian blocks.
_HOMOGLYPHS: dict[str, str] = {
    "a": "α", "c": "с", "d": "ԁ", "e": "е", "h": "һ", "i": "і", "j": "ј", "l": "ӏ",
    "o": "о", "p": "р", "s": "ѕ", "x": "х", "y": "у",
    "A": "Α", "B": "Β", "C": "С", "E": "Ε", "H": "Η", "I": "Ι", "K": "Κ", "M": "Μ",
    "N": "Ν", "O": "Ο", "P": "Ρ", "T": "Τ", "X": "Χ", "Y": "Υ", "Z": "Ζ",
}
_SYMBOLS = "@#$%&*^~!?."
_WORD_SYMBOLS = ("@", "#", "&", "*", "...", "$")

# Distractors are irrelevant everyday facts (the paper's example is "$2 an apple."). Own text.
_DISTRACTORS_EN: tuple[str, ...] = (
    "Apples are $2 each at the corner shop.",
    "The number 42 bus leaves every ten minutes.",
    "Copper conducts electricity well.",
    "The museum closes at five on Sundays.",
    "A kilometre is a thousand metres.",
    "Tomatoes grow best in full sun.",
    "The library renewed its chess books last spring.",
    "Penguins cannot fly but swim quickly.",
    "The recipe needs two cups of flour.",
    "Parking on Elm Street is free after six.",
    "Saturn has many moons.",
    "The printer on the third floor is out of toner.",
)
_DISTRACTORS_ZH: tuple[str, ...] = (
    "苹果两块钱一个。",
    "公交车每十分钟一班。",
    "铜的导电性很好。",
    "博物馆周日五点闭馆。",
    "一公里等于一千米。",
    "西红柿喜欢充足的阳光。",
    "这个菜谱需要两杯面粉。",
    "土星有很多卫星。",
)

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# A "word" is a run of non-space, non-CJK characters, or a single CJK character (Chinese has no
# spaces, so each character is the unit a word-level edit can move or drop).
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_CJK_CHAR = re.compile(rf"[{_CJK}]")


class Variant(NamedTuple):
    level: str
    intensity: float

    @property
    def name(self) -> str:
        return variant_name(self.level, self.intensity)


def _check(level: str, intensity: float) -> None:
    if level not in LEVELS:
        raise ValueError(f"unknown perturbation level {level!r}; valid: {', '.join(LEVELS)}")
    if not (isinstance(intensity, (int, float)) and 0.0 <= float(intensity) <= 1.0):
        raise ValueError(f"intensity must be a number in [0, 1], got {intensity!r}")


def variant_name(level: str, intensity: float) -> str:
    """The id suffix of a variant: ``char@0.1`` (``:g`` drops trailing zeros)."""
    _check(level, intensity)
    return f"{level}@{float(intensity):g}"


def parse_variant(name: str) -> tuple[str, float] | None:
    """``"word@0.05"`` -> ("word", 0.05); anything else -> None."""
    if not isinstance(name, str) or "@" not in name:
        return None
    level, _, raw = name.partition("@")
    try:
        intensity = float(raw)
    except ValueError:
        return None
    if level not in LEVELS or not math.isfinite(intensity) or not 0.0 <= intensity <= 1.0:
        return None
    return level, intensity


def default_variants(
    levels: Sequence[str] = LEVELS, intensities: Sequence[float] = DEFAULT_INTENSITIES
) -> tuple[Variant, ...]:
    """Every (level, intensity) pair, levels outermost."""
    out = []
    for level in levels:
        for p in intensities:
            _check(level, p)
            out.append(Variant(level, float(p)))
    return tuple(out)


def stage_rng(seed: int, key: str, stage: str, intensity: float) -> random.Random:
    """The generator for one stage of one text; a pure function of its arguments."""
    return random.Random(f"trustmh-perturb|{seed}|{key}|{stage}|{float(intensity)!r}")


def _count(n: int, intensity: float, rng: random.Random) -> int:
    exact = n * intensity
    k = math.floor(exact)
    if rng.random() < exact - k:
        k += 1
    return min(k, n)


def perturb_chars(text: str, intensity: float, rng: random.Random) -> str:
    """Touch ``intensity`` of the non-whitespace characters, one edit operation each."""
    positions = [i for i, ch in enumerate(text) if not ch.isspace()]
    k = _count(len(positions), intensity, rng)
    if k == 0:
        return text
    picked = rng.sample(positions, k)
    chosen = set(picked)
    n = len(text)
    out: list[str] = []
    done = 0  # text[:done] is in `out`
    # Only the chosen characters cost Python steps; the text between them is copied as slices. The
    # draws happen in text order, as a walk over every character would make them.
    for i in sorted(picked):
        out.append(text[done:i])
        done = i + 1
        ch = text[i]
        ops = ["symbol", "repeat", "delete"]
        swapped = ch.swapcase()
        if ch.isalpha() and swapped != ch and len(swapped) == 1:
            ops.append("case")
        if ch in _HOMOGLYPHS:
            ops.append("homoglyph")
        nxt = i + 1
        # Swap only with an untouched neighbour, so one edit never hides another.
        if nxt < n and not text[nxt].isspace() and nxt not in chosen and text[nxt] != ch:
            ops.append("swap")
        op = rng.choice(ops)
        if op == "case":
            out.append(swapped)
        elif op == "homoglyph":
            out.append(_HOMOGLYPHS[ch])
        elif op == "symbol":
            out.append(rng.choice(_SYMBOLS) + ch)
        elif op == "repeat":
            out.append(ch * (1 + rng.randint(1, 2)))
        elif op == "delete":
            pass
        else:  # swap: the neighbour is not chosen, so the next chosen character comes after it
            out.append(text[nxt] + ch)
            done = nxt + 1
    out.append(text[done:])
    return "".join(out)


def perturb_words(text: str, intensity: float, rng: random.Random) -> str:
    """Touch ``intensity`` of the words: swap with the next word, delete, or replace by a symbol."""
    spans = [(m.start(), m.end()) for m in _TOKEN.finditer(text)]
    k = _count(len(spans), intensity, rng)
    if k == 0:
        return text
    toks: list[str | None] = [text[s:e] for s, e in spans]
    gaps = [text[: spans[0][0]]]
    gaps += [text[spans[j][1] : spans[j + 1][0]] for j in range(len(spans) - 1)]
    gaps.append(text[spans[-1][1] :])
    chosen = sorted(rng.sample(range(len(spans)), k))
    chosen_set = set(chosen)
    consumed: set[int] = set()
    for j in chosen:
        if j in consumed:
            continue
        ops = ["delete", "replace"]
        if j + 1 < len(toks) and j + 1 not in chosen_set and toks[j] != toks[j + 1]:
            ops.append("swap")
        op = rng.choice(ops)
        if op == "swap":
            toks[j], toks[j + 1] = toks[j + 1], toks[j]
            consumed.add(j + 1)
        elif op == "delete":
            toks[j] = None
        else:
            toks[j] = rng.choice(_WORD_SYMBOLS)
    out = [gaps[0]]
    for j, tok in enumerate(toks):
        gap = gaps[j + 1]
        if tok is None:
            # Drop the space after a deleted word (keep line breaks: they carry structure).
            if "\n" in gap or j == len(toks) - 1:
                out.append(gap)
            continue
        out.append(tok)
        out.append(gap)
    return "".join(out)


def add_distractor(text: str, rng: random.Random) -> str:
    """Prepend one irrelevant sentence (Chinese when the text is mostly Chinese)."""
    cjk = len(_CJK_CHAR.findall(text))
    letters = sum(1 for ch in text if ch.isalpha())
    if letters and cjk * 2 >= letters:
        return rng.choice(_DISTRACTORS_ZH) + text
    return f"{rng.choice(_DISTRACTORS_EN)} {text}"


def perturb(
    text: str,
    level: str,
    intensity: float,
    *,
    seed: int = DEFAULT_SEED,
    key: str = "",
    distractor: bool = True,
) -> str:
    """The text perturbed at ``level`` (cumulative: char, then word, then sentence).

    Args:
        text: user text only (never instructions or options).
        level: "char", "word" or "sent".
        intensity: fraction of characters / words touched, in [0, 1].
        seed: run seed; the same (seed, key, level, intensity, text) always gives the same output.
        key: distinguishes texts within a run (an item id, a message index), so that two texts
            are not perturbed at the same relative positions.
        distractor: at the sentence level, whether this text gets the distractor sentence (a
            dialogue gets one distractor, on the turn being answered).
    """
    _check(level, intensity)
    text = text if isinstance(text, str) else ""
    out = perturb_chars(text, intensity, stage_rng(seed, key, "char", intensity))
    if level in ("word", "sent"):
        out = perturb_words(out, intensity, stage_rng(seed, key, "word", intensity))
    if level == "sent" and distractor:
        out = add_distractor(out, stage_rng(seed, key, "sent", intensity))
    return out
