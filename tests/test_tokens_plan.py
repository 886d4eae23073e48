"""Token estimates (engine/tokens.py) and the plan built on them: the script-aware estimate against
the embedded model's real tokenizer on the Chinese subtasks, OpenAI's encodings offline, the plan's
item source line, model x pillar pivot, estimator per model and local time from measured throughput."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import aiohttp

from engine.config import parse_config
from engine.core.rundoc import LaneSummary, RunSpec, TokenCounts
from engine.spec import item_factory
from engine.throughput import measured, record
from engine.tokens import ESTIMATE, counter_for, script_aware
from tests.conftest import fake_model, run_cli, write_config, write_items

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "trustmh"
CHINESE = {None: ("reliability/intervention",), "official": ("reliability/intervention", "privacy/leakage")}


def _texts(data_dir: Path | None, key: str) -> list[str]:
    spec = RunSpec(output="x", models=("m",), data_dir=str(data_dir) if data_dir else None, subtasks=(key,), limit=15)
    return ["".join(m.content for m in w.item.messages) for w in item_factory(spec)()]


async def _count(root_url: str, texts: list[str]) -> int:
    async with aiohttp.ClientSession() as s:
        total = 0
        for t in texts:
            async with s.post(f"{root_url}/tokenize", json={"content": t}) as r:
                total += len((await r.json())["tokens"])
        return total


def test_cjk_estimate_is_within_25_percent_of_the_embedded_tokenizer(embedded_server: Any) -> None:
    cases = [(None, k) for k in CHINESE[None]]
    if (SHARED / "cpsycoune").is_dir():  # the official Chinese data, where this checkout has it
        cases += [(SHARED, k) for k in CHINESE["official"]]
    for data_dir, key in cases:
        texts = _texts(data_dir, key)
        assert texts and any(not t.isascii() for t in texts), key
        real = asyncio.run(_count(embedded_server.root_url, texts))
        est = ESTIMATE.tokens(texts)
        assert abs(est - real) <= 0.25 * real, (key, data_dir, est, real)
        if key == "reliability/intervention":  # all Chinese: characters / 4, the estimate before, was far too low
            assert math.ceil(sum(len(t) for t in texts) / 4) < 0.3 * real, key


def test_ascii_counts_as_before() -> None:
    text = "question number 7: how are you today?"
    assert script_aware(text) == len(text) / 4
    assert script_aware("你好") == 3.0


def _models(**bodies: dict[str, Any]) -> dict[str, Any]:
    return parse_config({"models": bodies}, "test").models


def test_openai_ids_are_counted_with_their_encoding_offline() -> None:
    import bpe_openai

    models = _models(mini={"adapter": "openai", "base_url": "http://h/v1", "model": "gpt-4o-mini"},
                     old={"adapter": "openai", "base_url": "http://h/v1", "model": "gpt-4-0613"},
                     local={"adapter": "openai", "base_url": "http://h/v1", "model": "Qwen/Qwen3-8B"},
                     claude={"adapter": "anthropic", "model": "claude-sonnet-4-5"})
    mini = counter_for(models["mini"], "mini")
    text = "我最近总是睡不着 and I feel anxious."
    assert mini.name.startswith("tokenizer o200k_base")
    assert mini.tokens([text]) == len(bpe_openai.get_encoding("o200k_base").encode(text))
    assert counter_for(models["old"], "old").name.startswith("tokenizer cl100k_base")
    assert counter_for(models["local"], "local") is ESTIMATE
    assert counter_for(models["claude"], "claude") is ESTIMATE


def test_plan_says_where_items_come_from_and_pivots(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", {"mini": fake_model("http://127.0.0.1:9/v1", model="gpt-4o-mini"),
                                             "other": fake_model("http://127.0.0.1:9/v1")},
                       run={"output": str(tmp_path / "out"), "limit": 2})
    res = run_cli("plan", cfg, "--pillars", "reliability,crisis")
    assert res.rc == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("items: built-in demo items") and "--limit 2" in lines[0]
    head = lines[2].split()
    assert head == ["requests", "crisis", "reliability", "total"]
    rows = {" ".join(ln.split()[:2]): [int(x) for x in ln.split()[2:]] for ln in lines[3:6]}
    assert set(rows) == {"mini target", "other target", "total"} or "total" in lines[5]
    total = next(ln for ln in lines if ln.startswith("total ")).split()[1:]
    assert int(total[-1]) == int(total[0]) + int(total[1])
    assert any(ln.startswith("mini: ") and "(tokenizer o200k_base (bpe-openai))" in ln for ln in lines)
    assert any(ln.startswith("other: ") and "(script-aware estimate" in ln for ln in lines)
    assert not any(" target " in ln and ln.split()[2] == "crisis" for ln in lines)  # flat rows only with --verbose
    verbose = run_cli("plan", cfg, "--pillars", "reliability,crisis", "--verbose").stdout.splitlines()
    assert any(ln.split()[:3] == ["mini", "target", "crisis"] for ln in verbose)

    items = write_items(tmp_path / "items.jsonl", 7)
    first = run_cli("plan", cfg, "--items", items).stdout.splitlines()[0]
    assert first == f"items: items file {items}: 7 items (every line)"


def _lane(sent: int, tokens: int, wall: float) -> LaneSummary:
    return LaneSummary(state="complete", done=sent, sent=sent, wall_s=wall,
                       tokens=TokenCounts(prompt=tokens // 2, completion=tokens - tokens // 2))


def test_local_throughput_is_recorded_by_a_run_and_read_by_plan(tmp_path: Path) -> None:
    cfg = parse_config({"models": {"emb": {"adapter": "embedded"}, "api": {"adapter": "openai",
                                                                            "base_url": "http://h/v1"}}}, "t")
    store = tmp_path / "throughput.json"
    assert measured(cfg, "emb", {}, store) is None  # never a constant
    record(cfg, {"emb": _lane(40, 8000, 20.0), "api": _lane(40, 8000, 20.0)}, store)
    got = measured(cfg, "emb", {}, store)
    assert got is not None and got.tokens_per_s == 400.0 and got.requests == 40
    assert measured(cfg, "api", {}, store) is None  # API lanes: rate limits, not a measurement
    # An earlier run in the output directory speaks first.
    here = measured(cfg, "emb", {"emb": _lane(10, 1000, 10.0)}, store)
    assert here is not None and here.tokens_per_s == 100.0


def test_items_run_runs_every_line_and_reports_responses(tmp_path: Path, fake_server: Any) -> None:
    items = write_items(tmp_path / "items.jsonl", 5)
    out = tmp_path / "out"
    # The config's limit sizes pillar subtasks; the items file runs whole.
    cfg = write_config(tmp_path / "c.toml", {"a": fake_model(fake_server), "b": fake_model(fake_server)},
                       run={"output": str(out), "limit": 2})
    res = run_cli("run", cfg, "--items", items)
    assert res.rc == 0, res.stderr
    assert len((out / "responses" / "a.jsonl").read_text().splitlines()) == 5
    report = (out / "report.md").read_text()
    assert f"- data: items file {items};" in report
    assert "engine score" not in report
    section = report.split("## Responses", 1)[1].splitlines()
    assert section[4].startswith("| item | prompt | a | b |")
    assert section[6].startswith("| q0 | question number 0: how are you today? | ")
    assert sum(1 for ln in section if ln.startswith("| q")) == 5
    assert "report.html" in res.stderr and "<h2>Responses</h2>" in (out / "report.html").read_text()
    score = run_cli("score", out)
    assert score.rc == 2 and "custom --items run" in score.stderr and "report" in score.stderr
    assert run_cli("run", cfg, "--items", items, "--limit", "2", "--output", tmp_path / "two").rc == 0
    assert len((tmp_path / "two" / "responses" / "a.jsonl").read_text().splitlines()) == 2
