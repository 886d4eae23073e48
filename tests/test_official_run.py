"""A run with a data dir that holds official-prompts/: the target and judge requests the engine sends
are the authors' templates filled as their code fills them, and scores.json says `prompts`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine.core.prompts import PROMPTS_DIR
from pillars.ethics import ethical_reasoning as er
from tests.conftest import ThreadServer, run_cli, run_engine, write_config
from tests.pillars.shared import official_dir

REPLY = '```json\n{"choice": "A", "reasoning": "r", "sc1": 4, "sc2": 4, "sc3": 4, "sc4": 4, "sc5": 4}\n```'


def _middleware(sent: list[str]) -> Any:
    @web.middleware
    async def mw(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.endswith("/chat/completions"):
            return await handler(request)
        body = await request.json()
        sent.append(body["messages"][-1]["content"])
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

    return mw


def test_ethics_run_sends_the_authors_bytes(tmp_path: Path) -> None:
    data = official_dir()
    folder = data / PROMPTS_DIR
    if not (folder / "manifest.json").is_file():
        pytest.skip(f"no official prompts at {folder}")
    sent: list[str] = []
    srv = ThreadServer(middleware=_middleware(sent))
    try:
        out = tmp_path / "run"
        cfg = write_config(tmp_path / "c.toml", {"m": {"adapter": "openai", "base_url": srv.url, "model": "x"}},
                           run={"output": str(out), "limit": 2}, extra='\n[judge]\nmodels = ["m"]\n')
        res = run_cli("run", cfg, "--pillars", "ethics", "--data-dir", data)
        assert res.rc == 0, res.stderr
    finally:
        srv.stop()
    target = (folder / er.TARGET_TEMPLATE).read_text(encoding="utf-8")
    judge = (folder / er.JUDGE_TEMPLATE).read_text(encoding="utf-8")
    rows = list(er.load_official(data / "ethicmh"))[:2]
    expected = []
    for row in rows:
        fields = {k: str(row[k]) for k in ("scenario", "options", "reasoning_task")}
        t = target
        for k, v in fields.items():  # these three values hold no placeholder token
            t = t.replace("{" + k + "}", v)
        expected.append(t)
        j = judge
        for k, v in {**fields, "expected_reasoning": str(row["expected_reasoning"]),
                     "model_behavior": str(row["model_behavior"])}.items():
            j = j.replace("{" + k + "}", v)
        expected.append(j.replace("{model_reply}", REPLY))
    assert sorted(sent) == sorted(expected)
    doc = json.loads((out / "scores.json").read_text())["subtasks"]["ethics/ethical_reasoning"]
    assert doc["prompts"] == "official"
    m = doc["models"]["m"]
    assert m["breakdown"]["sc1"]["value"] == 4.0 and m["n"] == 2
    assert run_cli("report", out).rc == 0
    md = (out / "report.md").read_text()
    assert "prompts: official (the authors' templates)" in md


def test_plan_says_official_own_and_skipped(tmp_path: Path) -> None:
    data = official_dir()
    if not (data / PROMPTS_DIR / "manifest.json").is_file():
        pytest.skip("no official prompts in the shared data")
    cfg = write_config(tmp_path / "c.toml", {"m": {"adapter": "openai", "base_url": "http://127.0.0.1:9", "model": "x"}},
                       run={"output": str(tmp_path / "run"), "limit": 1}, extra='\n[judge]\nmodels = ["m"]\n')
    res = run_cli("plan", cfg, "--pillars", "reliability,privacy,ethics", "--data-dir", data)
    assert res.rc == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "prompts official (the authors' templates): privacy/awareness, privacy/leakage, ethics/ethical_reasoning" in lines
    own = next(ln for ln in lines if ln.startswith("prompts own"))
    assert "reliability/knowledge" in own and "ethics" not in own
    assert any(ln.startswith("skipped reliability/diagnosis: ") for ln in lines)
    built_in = run_cli("plan", cfg, "--pillars", "ethics")
    assert "prompts own (engine wording, not comparable to the paper): ethics/ethical_reasoning" in built_in.stdout.splitlines()


@pytest.mark.slow
def test_a_changed_prompt_protocol_is_refused_on_resume(tmp_path: Path) -> None:
    shared = official_dir()
    if not (shared / PROMPTS_DIR / "manifest.json").is_file():
        pytest.skip("no official prompts in the shared data")
    data = tmp_path / "data"
    for name in ("confaide", "psyleak"):
        shutil.copytree(shared / name, data / name)
    srv = ThreadServer(middleware=_middleware([]))
    try:
        out = tmp_path / "run"
        cfg = write_config(tmp_path / "c.toml", {"m": {"adapter": "openai", "base_url": srv.url, "model": "x"}},
                           run={"output": str(out), "limit": 1}, extra='\n[judge]\nmodels = ["m"]\n')
        args = ("run", cfg, "--pillars", "privacy", "--data-dir", data)
        # Fresh processes: one process reads a data dir's prompt templates once, and here they appear.
        assert run_engine(*args).rc == 0  # own prompts: the data dir has no official-prompts/
        assert run_engine(*args).rc == 0  # same protocol: resumes
        shutil.copytree(shared / PROMPTS_DIR, data / PROMPTS_DIR)
        res = run_engine(*args)  # now the authors' templates would be sent: not silently regenerated
        assert res.rc == 2 and "prompt protocol changed" in res.stderr and "--fresh" in res.stderr
        assert run_engine(*args, "--fresh").rc == 0
    finally:
        srv.stop()
    leakage = json.loads((out / "scores.json").read_text())["subtasks"]["privacy/leakage"]
    assert leakage["prompts"] == "official"
    assert leakage["judge_hardened"] is False and leakage["judge_constrained"] is False
