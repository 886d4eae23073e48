"""`ast` extraction of prompt templates from a code archive (engine/datasets/prompts.py), on a small
zip written here in our own words; nothing in the archive is executed."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import msgspec
import pytest

from engine.core.errors import DataError
from engine.datasets.prompts import Archive, PromptsManifest, TemplateSource, check_pins, extract, load_manifest
from pillars.common.prompts import load_prompts

SOURCE = '''\
import sys

class Maker:
    def build(self, rows):
        for r in rows:
            r['input'] = "{}\\nReply: ".format(r['text'])
        sys.exit("never run")


def judge(case, reply):
    scale = (
        "Scale: 1 low,\\n"
        "5 high."
    )
    prompt = (
        "Grade the case.\\n"
        f"Case:\\n{case}\\n"
        "{\\n  \\"score\\": <1-5>\\n}\\n"
        f"{scale}\\n"
        f"Reply:\\n{reply}"
    )
    return prompt
'''


def _archive(tmp_path: Path) -> Path:
    path = tmp_path / "own.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pkg/mod.py", SOURCE)
    return path


def _manifest(**over: object) -> PromptsManifest:
    templates = [
        TemplateSource(file="t__item.txt", size=0, sha256="-", archive="own.zip", path="pkg/mod.py", function="Maker.build",
                       line=6, placeholders=["{}"]),
        TemplateSource(file="t__judge.txt", size=0, sha256="-", archive="own.zip", path="pkg/mod.py", function="judge",
                       line=16, placeholders=["{case}", "{reply}"], inline=["scale"]),
    ]
    return PromptsManifest(archives={"own.zip": Archive(url="-", size=0, sha256="-")},
                           template=[msgspec_replace(t, **over) for t in templates] if over else templates)


def msgspec_replace(t: TemplateSource, **over: object) -> TemplateSource:
    return msgspec.structs.replace(t, **over) if t.file == "t__judge.txt" else t


def test_literals_and_fstrings_extracted(tmp_path: Path) -> None:
    written = extract({"own.zip": _archive(tmp_path)}, tmp_path / "data", _manifest())
    folder = tmp_path / "data" / "official-prompts"
    assert {p.name for p in written} == {"t__item.txt", "t__judge.txt", "manifest.json"}
    assert (folder / "t__item.txt").read_bytes() == b"{}\nReply: "
    # f-string: constant parts joined, fields written back as {expr}, the inlined constant's value
    # in place of {scale}, and the literal JSON braces kept.
    assert (folder / "t__judge.txt").read_text() == (
        'Grade the case.\nCase:\n{case}\n{\n  "score": <1-5>\n}\nScale: 1 low,\n5 high.\nReply:\n{reply}')
    entries = json.loads((folder / "manifest.json").read_text())
    assert [e["placeholders"] for e in entries] == [["{}"], ["{case}", "{reply}"]]
    prompts = load_prompts(tmp_path / "data")  # what the engine reads at run time
    assert prompts is not None
    assert prompts["t__judge.txt"].fill(case="C {reply}", reply="R").endswith("Case:\nC {reply}\n{\n  \"score\": <1-5>\n}\nScale: 1 low,\n5 high.\nReply:\nR")


@pytest.mark.parametrize("over, message", [
    ({"line": 3}, "no string literal"),
    ({"function": "Maker.judge"}, "no Maker.judge"),
    ({"placeholders": ["{missing}"]}, "lacks placeholder"),
    ({"inline": ["nope"]}, "no string constant nope"),
    ({"path": "pkg/other.py"}, "no pkg/other.py"),
])
def test_a_changed_archive_is_an_error(tmp_path: Path, over: dict[str, object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        extract({"own.zip": _archive(tmp_path)}, tmp_path / "data", _manifest(**over))


def test_engine_manifest_names_only_locations() -> None:
    m = load_manifest()
    assert set(m.archives) == {"privacy.zip", "Ethics.zip"}
    assert len(m.template) == 18 and all(t.archive in m.archives for t in m.template)
    assert all(len(a.sha256) == 64 for a in m.archives.values())
    assert all(len(t.sha256) == 64 and t.size > 0 for t in m.template)


def test_pins_are_checked(tmp_path: Path) -> None:
    extract({"own.zip": _archive(tmp_path)}, tmp_path / "data", _manifest())
    with pytest.raises(DataError, match="differs"):
        check_pins(tmp_path / "data" / "official-prompts", _manifest())


def test_data_list_shows_the_prompt_templates(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "engine", "data", "list", "--to", str(tmp_path), "--only",
                          "official-prompts"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "official-prompts: 18 prompt templates, 0/18 verified" in out.stdout
