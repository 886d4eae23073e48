"""Fencing untrusted text for a judge: nonce delimiters, lookalike folding, and reading a verdict
from the judge's own words only.

A judged response is attacker-controlled text. It goes between two marker lines that carry a
per-request nonce (``<<<BEGIN RESPONSE 3f9a...>>>`` / ``<<<END RESPONSE 3f9a...>>>``); the
response was written before the nonce existed, so it cannot close the block with the real marker.
The nonce is an HMAC of the judge request under a per-run secret (engine.run.judge keeps it in the
run directory), so a resumed run sends the same judge request body again, byte for byte.

A response is checked for delimiter lookalikes after `normalise` (NFKC, format characters such as
zero-width joiners and soft hyphens removed, Cyrillic/Greek letters and angle-quote lookalikes
folded to ASCII): one that holds a marker-like run or the marker words is sent normalised and
defused (angle runs become brackets, "END RESPONSE" becomes "END-of-RESPONSE"); any other goes
verbatim. A judge that quotes the prompt back quotes the fenced blocks with their markers, so
`strip_quoted` cuts every such block out of a judge output before its verdict is read.
"""

from __future__ import annotations

import hmac
import re
import sys
import unicodedata
from functools import cache

__all__ = ["normalise", "nonce_for", "fence", "strip_quoted", "NONCE_HEX", "PLAN_NONCE"]

NONCE_HEX = 16  # 64 bits: unguessable by a response written before the judge request existed
PLAN_NONCE = "0" * NONCE_HEX  # a stand-in of the right length where only a request's size matters

# Letters and signs that render like ASCII ones and that NFKC leaves alone.
_CONFUSABLES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t",
    "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w",
    "ѵ": "v", "ь": "b", "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P",
    "С": "C", "Т": "T", "У": "Y", "Х": "X", "І": "I", "Ј": "J", "Ѕ": "S", "Ԁ": "D", "Ү": "Y", "Ԛ": "Q",
    "Ԝ": "W", "Ӏ": "I",
    # Greek
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "ο": "o", "ν": "v", "ρ": "p", "ι": "i", "κ": "k", "τ": "t",
    "υ": "u", "χ": "x", "ϲ": "c", "Ϲ": "C",
    # Other scripts' lookalikes of the marker words' letters
    "ɡ": "g", "ı": "i", "ո": "n", "ս": "u", "օ": "o", "Ꭼ": "E", "Ꮢ": "R", "Ꮪ": "S", "Ꭰ": "D", "Ꮯ": "C",
    # Angle brackets and quotes
    "≪": "<<", "≫": ">>", "«": "<<", "»": ">>", "‹": "<", "›": ">", "〈": "<", "〉": ">", "⟨": "<",
    "⟩": ">", "⟪": "<<", "⟫": ">>", "《": "<<", "》": ">>", "❮": "<", "❯": ">", "❬": "<", "❭": ">",
    "ᐸ": "<", "ᐳ": ">", "˂": "<", "˃": ">", "⋘": "<<<", "⋙": ">>>", "⧼": "<", "⧽": ">", "﹤": "<",
    "﹥": ">", "⦉": "<", "⦊": ">", "⊲": "<", "⊳": ">", "⪡": "<<", "⪢": ">>",
    # Dashes and low lines
    "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-", "⁃": "-", "﹘": "-",
    "＿": "_", "‗": "_",
})


@cache
def _format_chars() -> re.Pattern[str]:
    # Built on first need: walking every code point costs ~0.2 s, which ASCII-only runs never pay.
    chars = "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Cf")
    return re.compile(f"[{re.escape(chars)}]")


def normalise(text: str) -> str:
    """``text`` as a reader sees it: NFKC, format characters (Cf: zero-width, soft hyphen, bidi
    controls) removed, confusable letters and angle lookalikes folded to ASCII."""
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKC", text)
    text = _format_chars().sub("", text)
    return unicodedata.normalize("NFKC", text.translate(_CONFUSABLES))


_ANGLE_RUN = re.compile(r"<(?:[\s]*<)+|>(?:[\s]*>)+")
_MARKER_WORDS = r"\b(begin|end|start|stop)([\s\-_:]*)({labels})\b"


def _marker_words(labels: tuple[str, ...]) -> re.Pattern[str]:
    alts = "|".join(r"[\s\-_]*".join(map(re.escape, lab.split())) for lab in labels)
    return re.compile(_MARKER_WORDS.format(labels=alts), re.IGNORECASE)


def _defuse(norm: str, words: re.Pattern[str]) -> str:
    norm = _ANGLE_RUN.sub(lambda m: "".join("[" if c == "<" else "]" if c == ">" else c for c in m.group(0)), norm)
    return words.sub(lambda m: f"{m.group(1)}-of-{m.group(3)}", norm)


def nonce_for(secret: bytes, request: str, text: str) -> str:
    """The nonce of one judge request: an HMAC of the request's identity under the run's secret,
    rerolled (deterministically) in the astronomically rare case that the text already holds it."""
    seen = normalise(text).casefold()
    i = 0
    while True:
        nonce = hmac.new(secret, f"{request}\x1f{i}".encode(), "sha256").hexdigest()[:NONCE_HEX]
        if nonce not in seen:
            return nonce
        i += 1


def fence(label: str, text: str, nonce: str) -> str:
    """``text`` between the nonce marker lines of ``label``; a text that holds something a reader
    could take for a marker goes normalised and defused, any other verbatim."""
    words = _marker_words((label, "RESPONSE"))
    norm = normalise(text)
    if _ANGLE_RUN.search(norm) or words.search(norm) or nonce in norm.casefold():
        text = _defuse(norm, words).replace(nonce, "[nonce]")
    return f"<<<BEGIN {label} {nonce}>>>\n{text}\n<<<END {label} {nonce}>>>"


# A fenced block as a judge quotes it back: our marker lines verbatim (nonce optional: blocks
# written before nonces were sent had none); a block whose end was not quoted runs to the end.
_QUOTED = re.compile(
    rf"<<<BEGIN ([A-Z][A-Z ]{{0,40}}?)(?: ([0-9a-f]{{{NONCE_HEX}}}))?>>>.*?(?:<<<END \1(?: \2)?>>>|\Z)", re.DOTALL)


def strip_quoted(output: str) -> str:
    """A judge output without the fenced blocks it quoted: only the judge's own words are left to
    read a verdict from."""
    if "<<<BEGIN " not in output:
        return output
    return _QUOTED.sub("", output)
