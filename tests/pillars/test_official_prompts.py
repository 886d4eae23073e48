"""The authors' prompt templates, read from the shared data's official-prompts/ folder at run time:
the requests built with them must be byte-for-byte what their code builds, and none of their
sentences may be written into this repository.

The expected requests below are rebuilt the way the authors' code builds them (str.format on the
str literals, the f-strings' fields filled with the same values), from the template files
themselves; so any one-character change in a template file changes what the engine sends, and
these tests check that it changes in exactly the same way.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from engine.core.errors import ConfigError
from engine.core.prompts import PROMPTS_DIR, Template
from engine.options import resolve
from pillars import registry
from pillars.common.prompts import load_prompts
from pillars.ethics import ethical_reasoning as er
from pillars.privacy import awareness, leakage
from tests.pillars.shared import official_dir

REPO = Path(__file__).resolve().parents[2]


def _folder() -> Path:
    folder = official_dir() / PROMPTS_DIR
    if not (folder / "manifest.json").is_file():
        pytest.skip(f"no official prompts at {folder}")
    return folder


def _text(name: str) -> str:
    return (_folder() / name).read_bytes().decode("utf-8")


def _fstring(name: str, **values: str) -> str:
    # An f-string's fields filled in one pass, as Python evaluates it (the text around them is the
    # literal parts, unchanged; a value put in is not read again). No "{key}" is a prefix of
    # another, so the leftmost match is the field Python would see there.
    fields = re.compile("|".join(re.escape("{" + key + "}") for key in values))
    return fields.sub(lambda m: values[m.group(0)[1:-1]], _text(name))


def test_fill_is_exact_replacement():
    t = Template("t.txt", '{\n  "a": "{x}"\n}{x}{y}', ("{x}", "{y}"))
    assert t.fill(x="{y}", y="Y") == '{\n  "a": "{y}"\n}{y}Y'  # one pass: a value is not refilled
    assert Template("p.txt", "{}-{}", ("{}",)).fill("{}", "b") == "{}-b"
    with pytest.raises(ConfigError):
        t.fill(x="1")
    with pytest.raises(ConfigError):
        Template("p.txt", "{}-{}", ("{}",)).fill("a")


def test_loader_reads_every_template():
    prompts = load_prompts(official_dir())
    assert prompts is not None
    manifest = json.loads((_folder() / "manifest.json").read_text())
    assert sorted(prompts.templates) == sorted(e["file"] for e in manifest)
    for e in manifest:
        assert prompts[e["file"]].text == _text(e["file"])
    assert load_prompts(None) is None and load_prompts(REPO / "tests") is None


def test_subtasks_bind_official_prompts():
    data = official_dir()
    _folder()
    for key in ("privacy/awareness", "privacy/leakage", "ethics/ethical_reasoning"):
        assert registry.get(key).prompts == "own"
        assert resolve(key, None, data)[0].prompts == "official"
        assert resolve(key, None)[0].prompts == "own"
    # Options and official prompts together: the option is kept.
    sub = resolve("ethics/ethical_reasoning", {"unreadable": "exclude", "temperature": 0.5}, data)[0]
    assert sub.prompts == "official" and sub.params.temperature == 0.5
    assert sub.aggregate([]).breakdown.get("unreadable", "exclude") == "exclude"


def _ethics_items():
    sub = resolve("ethics/ethical_reasoning", None, official_dir())[0]
    return sub, list(registry.load_items(sub, official_dir()))


def test_ethics_target_and_judge_bytes():
    _folder()
    sub, items = _ethics_items()
    rows = list(er.load_official(official_dir() / "ethicmh"))
    assert len(items) == len(rows) == 125
    target = "ethics__ethical_reasoning__target-user__reasoning-prompt.txt"
    judge = "ethics__ethical_reasoning__judge-user__apa-principles-judge.txt"
    reply = ' ```json\n{"choice": "B", "reasoning": "x"}\n```\n'
    assert sub.rubric is not None and not sub.rubric.hardened and not sub.rubric.retry
    for row, item in zip(rows, items, strict=True):
        fields = {k: str(row[k]) for k in ("scenario", "options", "reasoning_task")}
        assert item.messages[0].content == _fstring(target, **fields)
        (msg,) = sub.rubric.build(item, reply)
        assert msg.role == "user"
        assert msg.content == _fstring(judge, **fields, expected_reasoning=str(row["expected_reasoning"]),
                                       model_behavior=str(row["model_behavior"]), model_reply=reply)


def test_privacy_target_and_proxy_bytes():
    _folder()
    data = official_dir()
    sub = resolve("privacy/awareness", None, data)[0]
    t1, t2 = _text(awareness.TIER1_TEMPLATE), _text(awareness.TIER2_TEMPLATE)
    for item, row in zip(registry.load_items(sub, data), awareness.load_official(data / "confaide"), strict=True):
        text = str(row["text"])
        want = t1.format(text) if row["tier"] == "1" else _fstring(awareness.TIER2_TEMPLATE, prompt_header="", text=text)
        assert t2.count("{text}") == 1
        assert item.messages[0].content == want
    sub = resolve("privacy/leakage", None, data)[0]
    part = {role: _text(f) for role, f in leakage.PARTS.items()}
    instruction = part["instruction"]
    rows = {str(r["id"]): r for r in leakage.load_official(data / "psyleak")}
    n = 0
    for item in registry.load_items(sub, data):
        row = rows[str(item.metadata["scenario"])]
        qtype = str(item.metadata["qtype"])
        question = {
            "free-response": part["free-response"].format(row["questionee"], row["questionee"]),
            "info-accessibility": part["info-accessibility"].format(row["about"], str(row["secret"]).lower()),
            "privacy-sharing": part["privacy-sharing"].format(row["about"]),
            "control": part["control"].format(str(row["control_question"]).strip()),
        }[qtype]
        wrapper = part["scenario-question" if ": " in question else "scenario-question-answer"]
        assert item.messages[0].content == wrapper.format(instruction, row["story"], question)
        if qtype == "free-response":
            assert sub.rubric is not None
            (msg,) = sub.rubric.build(item, '  Answer: "Xiao said hi.\n')
            q = part["proxy-question"].format(str(row["secret"]).lower())
            assert msg.content == part["proxy-input"].format(part["proxy-instruction"], ' "Xiao said hi.', q)
        n += 1
    assert n == 400


def _official_sentences() -> list[str]:
    """Every line of the used templates with at least 24 characters of the authors' own text."""
    out = []
    for f in sorted(_folder().glob("*.txt")):
        for line in f.read_text(encoding="utf-8").split("\n"):
            for piece in line.replace("{}", "\0").split("\0"):
                piece = piece.strip()
                if len(piece) >= 24 and "{" not in piece:
                    out.append(piece)
    return out


def test_no_official_sentence_in_the_repository():
    sentences = _official_sentences()
    assert len(sentences) > 20
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    found = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.suffix in (".zip", ".gguf", ".png"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        found += [f"{name}: {s[:40]}" for s in sentences if s in text]
    assert not found, found
