"""Batch lanes (issue 20): a lane's requests as OpenAI Batch API jobs against the batch fake
(engine/testing/fake_batches.py), exactly once across failures and kill -9."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.testing.fake_batches import OpenAIBatchFake
from engine.testing.fake_providers import run_in_thread
from tests.conftest import (
    check_complete,
    expected_texts,
    read_jsonl,
    run_cli,
    run_engine,
    verify_clean,
    write_config,
    write_items,
)

KEY_ENV = {"BATCH_FAKE_KEY": "test-key-0123456789"}


@pytest.fixture
def batch_fake() -> Iterator[tuple[OpenAIBatchFake, str]]:
    fake = OpenAIBatchFake(complete_after_s=0.3)
    with run_in_thread(fake) as url:
        yield fake, url


def batch_model(url: str, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"adapter": "openai", "base_url": url + "/v1", "model": "fake-model",
                            "api_key_env": "BATCH_FAKE_KEY", "batch": True, "batch_wait_s": 0.2,
                            "batch_poll_s": 0.05, "batch_poll_max_s": 0.2, "backoff_base_s": 0.05,
                            "backoff_max_s": 0.2, "batch_max_requests": 7}
    body.update(kw)
    return body


def _journal(out: Path, model: str) -> list[dict[str, Any]]:
    return read_jsonl(out / "batches" / f"{model}.jsonl")


def test_batch_lane_records_what_direct_requests_would(tmp_path: Path, batch_fake: tuple[OpenAIBatchFake, str]) -> None:
    fake, url = batch_fake
    items = write_items(tmp_path / "items.jsonl", 20)
    cfg = write_config(tmp_path / "c.toml", {"b": batch_model(url)})
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert res.rc == 0, res.stderr
    check_complete(out, "b", expected_texts(cfg, items, "b"))
    created = [e for e in fake.events if e["event"] == "created"]
    assert [len(e["custom_ids"]) for e in created] == [7, 7, 6]
    assert not fake.completed_twice()
    journal = _journal(out, "b")
    assert [j["event"] for j in journal].count("ended") == 3
    verify_clean(out)


@pytest.mark.parametrize("phase", ["upload", "create_before", "create_after", "poll", "download"])
def test_kill9_at_each_phase_then_resume_is_exactly_once(tmp_path: Path, batch_fake: tuple[OpenAIBatchFake, str],
                                                         engine_procs: Any, phase: str) -> None:
    """kill -9 after the intent (the upload hangs), after the upload (the create call hangs), after
    the create call but before its journal line (the batch exists, its answer never came), while
    polling, and halfway through the results; the resumed run submits nothing the provider
    already holds and every unit ends exactly once."""
    fake, url = batch_fake
    items = write_items(tmp_path / "items.jsonl", 12)
    cfg = write_config(tmp_path / "c.toml", {"b": batch_model(url, batch_max_requests=5)})
    out = tmp_path / "out"
    fake.hold = phase
    p = engine_procs("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert fake.held.wait(60), p.stderr()
    p.kill9()
    intents = [j for j in _journal(out, "b") if j["event"] == "intent"]
    assert intents, "the intent line comes before anything is uploaded"
    res = run_engine("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert res.rc == 0, res.stderr
    check_complete(out, "b", expected_texts(cfg, items, "b"))
    assert not fake.completed_twice(), fake.events
    created = [e for e in fake.events if e["event"] == "created"]
    if phase in ("upload", "create_before", "create_after"):  # no batch id journalled: looked up first
        assert "list" in fake.calls
    if phase == "create_after":  # found by its metadata and re-attached, not created again
        first = set(created[0]["custom_ids"])
        assert sum(1 for e in created if set(e["custom_ids"]) & first) == 1
    journal = _journal(out, "b")
    ended = {j["local_id"] for j in journal if j["event"] == "ended"}
    assert {j["local_id"] for j in journal if j["event"] == "intent"} == ended  # nothing left open
    verify_clean(out)
