"""pillars.perturb: determinism, measured intensity, cumulative levels, totality."""

from __future__ import annotations

import difflib
import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pillars.perturb import (
    DEFAULT_INTENSITIES,
    LEVELS,
    add_distractor,
    default_variants,
    parse_variant,
    perturb,
    perturb_chars,
    perturb_words,
    stage_rng,
    variant_name,
)

# Own synthetic text, long enough for the measured fractions to be stable.
TEXT = " ".join(
    [
        "I'm really excited about the trip we planned to the coast next month.",
        "We will explore small villages, swim in cold water and eat far too much bread.",
        "My friend booked a cabin near the cliffs, and the photos look wonderful.",
        "Still, I keep worrying that the weather might ruin everything we hoped for.",
        "Maybe I should pack a warm jacket, two books and a spare phone charger.",
        "The train leaves early, so I need to wake up before the sun rises.",
        "Packing lists help me feel calmer when a journey is close.",
        "Tonight I will check the tickets again and then try to sleep.",
    ]
)


def osa_distance(a: str, b: str) -> int:
    """Optimal string alignment distance (Levenshtein plus adjacent transposition): Hyyrö's (2003)
    bit-parallel form of `osa_table`, one column of the table as bit vectors over `a` (each bit the
    +1/-1 step between vertically adjacent cells); ~200x faster on TEXT, where the table took ~0.3 s
    of CPU per call. test_osa_distance_equals_the_table checks the two agree."""
    m = len(a)
    if m == 0:
        return len(b)
    full, last = (1 << m) - 1, 1 << (m - 1)
    peq: dict[str, int] = {}
    for i, ch in enumerate(a):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    vp, vn, d0, pm_old, dist = full, 0, 0, 0, m
    for ch in b:
        pm = peq.get(ch, 0)
        tr = ((~d0 & pm) << 1) & pm_old  # a transposition: a[i-1:i+1] == b[j:j-2:-1]
        d0 = ((((pm & vp) + vp) & full) ^ vp) | pm | vn | tr
        hp, hn = vn | (~(d0 | vp) & full), d0 & vp
        dist += (1 if hp & last else 0) - (1 if hn & last else 0)
        hp, hn = ((hp << 1) | 1) & full, (hn << 1) & full
        vp, vn = hn | (~(d0 | hp) & full), hp & d0
        pm_old = pm
    return dist


def osa_table(a: str, b: str) -> int:
    """The same distance from the full dynamic-programming table (the definition)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def test_osa_distance_equals_the_table() -> None:
    rng = random.Random(5)
    for n in range(2000):
        alphabet = "ab" if n % 3 == 0 else "abc" if n % 3 == 1 else "abcde fg"  # small ones: many transpositions
        a, b = ("".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(2))
        assert osa_distance(a, b) == osa_table(a, b), (a, b)
    out = perturb(TEXT[:120], "char", 0.2, seed=1)
    assert osa_distance(TEXT[:120], out) == osa_table(TEXT[:120], out) > 0


def nonspace(text: str) -> int:
    return sum(1 for ch in text if not ch.isspace())


def test_variant_names_round_trip():
    assert variant_name("char", 0.1) == "char@0.1"
    assert variant_name("word", 0.05) == "word@0.05"
    assert variant_name("sent", 0.2) == "sent@0.2"
    for v in default_variants():
        assert parse_variant(v.name) == (v.level, v.intensity)
    assert len(default_variants()) == len(LEVELS) * len(DEFAULT_INTENSITIES) == 9


@pytest.mark.parametrize("bad", ["", "char", "char@", "char@x", "para@0.1", "word@1.5", "word@-0.1",
                                 "sent@nan", None, 3])
def test_parse_variant_rejects(bad):
    assert parse_variant(bad) is None


@pytest.mark.parametrize("level,intensity", [("para", 0.1), ("char", 1.5), ("word", -0.1)])
def test_invalid_arguments_raise(level, intensity):
    with pytest.raises(ValueError):
        perturb("hello", level, intensity)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("p", DEFAULT_INTENSITIES)
def test_same_seed_same_text_different_seed_differs(level, p):
    a = perturb(TEXT, level, p, seed=7, key="x")
    assert a == perturb(TEXT, level, p, seed=7, key="x")
    assert a != TEXT
    assert perturb(TEXT, level, p, seed=8, key="x") != a
    assert perturb(TEXT, level, p, seed=7, key="y") != a


@pytest.mark.parametrize("p", DEFAULT_INTENSITIES)
def test_char_edit_fraction_close_to_intensity(p):
    # Average over a few seeds: each touched character costs about one edit (repetition a bit
    # more, a swap one transposition), so the measured fraction sits close to p.
    fractions = []
    for seed in range(4):
        out = perturb(TEXT, "char", p, seed=seed)
        fractions.append(osa_distance(TEXT, out) / nonspace(TEXT))
    measured = sum(fractions) / len(fractions)
    assert 0.8 * p <= measured <= 1.35 * p, (p, measured)


def _changed_tokens(a: str, b: str) -> int:
    ta, tb = a.split(), b.split()
    sm = difflib.SequenceMatcher(a=ta, b=tb, autojunk=False)
    return sum(max(i2 - i1, j2 - j1) for op, i1, i2, j1, j2 in sm.get_opcodes() if op != "equal")


@pytest.mark.parametrize("p", DEFAULT_INTENSITIES)
def test_word_stage_fraction_close_to_intensity(p):
    fractions = []
    for seed in range(6):
        base = perturb(TEXT, "char", p, seed=seed)
        out = perturb(TEXT, "word", p, seed=seed)
        fractions.append(_changed_tokens(base, out) / len(base.split()))
    measured = sum(fractions) / len(fractions)
    # A swap changes two tokens for one edit; deletions and replacements change one.
    assert 0.7 * p <= measured <= 1.8 * p, (p, measured)


@pytest.mark.parametrize("p", DEFAULT_INTENSITIES)
def test_levels_are_cumulative(p):
    char = perturb(TEXT, "char", p, seed=3, key="k")
    word = perturb(TEXT, "word", p, seed=3, key="k")
    sent = perturb(TEXT, "sent", p, seed=3, key="k")
    assert word == perturb_words(char, p, stage_rng(3, "k", "word", p))
    assert sent.endswith(" " + word)
    assert sent == add_distractor(word, stage_rng(3, "k", "sent", p))
    assert perturb(TEXT, "sent", p, seed=3, key="k", distractor=False) == word


def test_zero_intensity_is_identity_except_distractor():
    assert perturb(TEXT, "char", 0.0) == TEXT
    assert perturb(TEXT, "word", 0.0) == TEXT
    assert perturb(TEXT, "sent", 0.0).endswith(" " + TEXT)


def test_char_operations_seen():
    out = perturb(TEXT * 3, "char", 0.2, seed=1)
    assert re.search(r"[@#$%&*^~!?]", out)  # symbol insertion
    assert re.search(r"[αсԁеһіјӏорѕхуΑΒСΕΗΙΚΜΝΟΡΤΧΥΖ]", out)  # homoglyph
    assert re.search(r"([a-z])\1\1", out)  # repetition


def test_whitespace_and_newlines_kept():
    text = "first line here\nsecond line there\n\nthird paragraph"
    out = perturb(text, "char", 0.2, seed=0)
    assert out.count("\n") == text.count("\n")
    assert perturb(text, "word", 0.2, seed=0).count("\n") == text.count("\n")


def test_chinese_text():
    text = "最近工作压力很大，我每天都睡不好，也不想和朋友见面。"
    out = perturb(text, "sent", 0.2, seed=0)
    assert out != text
    assert re.match(r"[\u4e00-\u9fff]", out)  # a Chinese distractor in front


def test_short_text_expected_fraction_unbiased():
    # Stochastic rounding: a 10-character word at p=0.05 is touched in about half the seeds.
    touched = sum(perturb_chars("abcdefghij", 0.05, stage_rng(s, "", "char", 0.05)) != "abcdefghij"
                  for s in range(400))
    assert 120 <= touched <= 280


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), level=st.sampled_from(LEVELS),
       p=st.floats(min_value=0.0, max_value=1.0), seed=st.integers(0, 2**31), key=st.text(max_size=10))
def test_total_and_deterministic(text, level, p, seed, key):
    out = perturb(text, level, p, seed=seed, key=key)
    assert isinstance(out, str)
    assert out == perturb(text, level, p, seed=seed, key=key)
