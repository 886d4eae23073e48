"""Batch lanes (issue 20): a lane's requests as OpenAI Batch API jobs against the batch fake
(engine/testing/fake_batches.py), exactly once across failures and kill -9."""

from __future__ import annotations

import re
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.registry import make_adapter
from engine.config import load_config
from engine.items import custom_source
from engine.run.units import lane_units
from engine.testing.fake_anthropic_batches import AnthropicBatchFake
from engine.testing.fake_batches import OpenAIBatchFake
from engine.testing.fake_gemini_batches import GeminiBatchFake
from engine.testing.fake_providers import AnthropicFake, GeminiFake, reply_text, run_in_thread
from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import (
    check_complete,
    expected_texts,
    fake_model,
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


def test_mixed_run_scores_as_the_same_run_without_batching(tmp_path: Path, batch_fake: tuple[OpenAIBatchFake, str],
                                                            fake_server: FakeServerProcess) -> None:
    """One batch lane, one ordinary lane and a judge in batch mode score exactly as the same run
    with every request sent directly (the batch fake answers what the chat fake does)."""
    fake, url = batch_fake
    judge = "\n[judge]\nmodels = [\"judge\"]\n"
    direct = fake_model(fake_server, max_concurrency=4)
    args = ["--pillars", "crisis", "--limit", "3", "--no-progress"]
    ref_cfg = write_config(tmp_path / "ref.toml", {"direct": direct, "batched": fake_model(fake_server),
                                                   "judge": fake_model(fake_server, model="judge-model")},
                           run={"output": str(tmp_path / "ref")}, extra=judge)
    res = run_cli("run", ref_cfg, *args)
    assert res.rc == 0, res.stderr
    cfg = write_config(tmp_path / "b.toml", {"direct": direct, "batched": batch_model(url),
                                             "judge": batch_model(url, model="judge-model")},
                       run={"output": str(tmp_path / "out")}, extra=judge)
    res = run_cli("run", cfg, *args, env=KEY_ENV)
    assert res.rc == 0, res.stderr
    ref, out = tmp_path / "ref", tmp_path / "out"
    for name in ("direct", "batched"):
        got = {r["key"]: r["response"]["text"] for r in read_jsonl(out / "responses" / f"{name}.jsonl")}
        assert got == {r["key"]: r["response"]["text"] for r in read_jsonl(ref / "responses" / f"{name}.jsonl")}
    judged = read_jsonl(out / "judgments" / "judge.jsonl")
    assert judged and {j["key"] for j in judged} == {j["key"] for j in read_jsonl(ref / "judgments" / "judge.jsonl")}
    assert any(set(e["custom_ids"]) & {j["key"] for j in judged} for e in fake.events if e["event"] == "created")
    scored = orjson.loads((out / "scores.json").read_bytes())["subtasks"]
    assert "crisis/escalation" in scored
    assert scored == orjson.loads((ref / "scores.json").read_bytes())["subtasks"]
    assert not fake.completed_twice()


@pytest.mark.parametrize("fault", ["request_5xx", "expire_requests", "fail_batches", "poll_5xx", "truncate_downloads"])
def test_provider_failures_end_in_one_record_per_unit(tmp_path: Path, batch_fake: tuple[OpenAIBatchFake, str],
                                                      fault: str) -> None:
    """Per-request 5xx and expired requests go again in a later batch (errors/ says why), a failed
    batch is sent again after a backoff, a 5xx while polling and a results download cut halfway
    are retried; every unit ends with exactly one response."""
    fake, url = batch_fake
    setattr(fake, fault, 3 if fault in ("request_5xx", "expire_requests") else 1)
    items = write_items(tmp_path / "items.jsonl", 10)
    cfg = write_config(tmp_path / "c.toml", {"b": batch_model(url, batch_max_requests=10)})
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert res.rc == 0, res.stderr
    recs = check_complete(out, "b", expected_texts(cfg, items, "b"))
    created = [e for e in fake.events if e["event"] == "created"]
    errors = read_jsonl(out / "errors" / "b.jsonl")
    if fault in ("request_5xx", "expire_requests"):
        assert len(created) == 2 and len(created[1]["custom_ids"]) == 3  # only the failed ones again
        assert len(errors) == 3 and not any(e.get("final") for e in errors)
        assert sorted(r["attempts"] for r in recs) == [1] * 7 + [2] * 3
    elif fault == "fail_batches":
        assert len(created) == 2 and set(created[0]["custom_ids"]) == set(created[1]["custom_ids"])
    else:
        assert len(created) == 1
        assert fake.calls.count("download" if fault == "truncate_downloads" else "poll") >= 2
    assert fake.__dict__[fault] == 0
    assert not fake.completed_twice()
    verify_clean(out)


def test_a_bad_request_in_a_batch_is_its_final_outcome(tmp_path: Path, batch_fake: tuple[OpenAIBatchFake, str]) -> None:
    fake, url = batch_fake
    items = write_items(tmp_path / "items.jsonl", 5)
    cfg = write_config(tmp_path / "c.toml", {"b": batch_model(url)})
    expected = expected_texts(cfg, items, "b")
    bad = sorted(expected)[0]
    fake.fatal_ids = {bad}
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert res.rc in (0, 1), res.stderr
    recs = {r["key"]: r for r in read_jsonl(out / "responses" / "b.jsonl")}
    assert set(recs) == set(expected)
    assert recs[bad]["error"]["kind"] == "fatal" and recs[bad]["error"]["status"] == 400
    assert len([e for e in fake.events if e["event"] == "created"]) == 1  # never sent again


def test_batch_on_an_adapter_without_a_batch_api_is_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", {"r": {"adapter": "replay", "path": str(tmp_path / "rec.jsonl"),
                                                   "batch": True}})
    res = run_cli("run", cfg, "--items", write_items(tmp_path / "items.jsonl", 1), "--output", tmp_path / "out")
    assert res.rc == 2, res.stderr
    assert "models.r.batch: adapter `replay` has no batch API" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()



def test_a_window_the_provider_does_not_take_is_refused_before_the_run(tmp_path: Path) -> None:
    """`batch_window = "48h"`: `validate` and `run` refuse it in one line (exit 2), before anything
    is written; the windows come from the adapter's registry entry (`caps.batch_windows`)."""
    cfg = write_config(tmp_path / "c.toml", {"b": batch_model("http://127.0.0.1:9", batch_window="48h")})
    for args in (("validate", cfg), ("run", cfg, "--items", write_items(tmp_path / "items.jsonl", 1),
                                     "--output", tmp_path / "out")):
        res = run_cli(*args, env=KEY_ENV)
        assert res.rc == 2, res.stderr
        assert "models.b.batch_window: adapter `openai` accepts '24h', got '48h'" in res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists()


def test_a_batch_refused_as_a_whole_stops_the_lane_without_outcomes(tmp_path: Path,
                                                                    batch_fake: tuple[OpenAIBatchFake, str]) -> None:
    """A 400 on the create call is the config's problem, not each request's: the lane stops in one
    line, no unit gets a final record (errors/ says why, not final), and a rerun sends them all."""
    fake, url = batch_fake
    fake.reject_creates = 1
    items = write_items(tmp_path / "items.jsonl", 5)
    cfg = write_config(tmp_path / "c.toml", {"b": batch_model(url)})
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--items", items, "--output", out, "--no-progress", env=KEY_ENV)
    assert res.rc != 0 and "Traceback" not in res.stderr
    assert "lane b stopped: batch submission refused (HTTP 400: The batch was refused (injected).)" in res.stderr
    assert "0 out of retries" in res.stderr  # stopped, not out of retries
    assert read_jsonl(out / "responses" / "b.jsonl") == []
    errors = read_jsonl(out / "errors" / "b.jsonl")
    assert len(errors) == 5 and not any(e.get("final") for e in errors)
    res = run_cli("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert res.rc == 0, res.stderr
    check_complete(out, "b", expected_texts(cfg, items, "b"))


# -- Anthropic Message Batches ----------------------------------------------------------------------


@pytest.fixture
def anthropic_fake() -> Iterator[tuple[AnthropicBatchFake, str]]:
    fake = AnthropicBatchFake(complete_after_s=0.3)
    with run_in_thread(fake) as url:
        yield fake, url


def anthropic_model(url: str, **kw: Any) -> dict[str, Any]:
    return batch_model(url, adapter="anthropic", base_url=url, model="claude-fake", **kw)


def provider_expected(cfg: Path, items: Path, model: str, provider: str) -> dict[str, str]:
    """Each unit's key -> the text the `provider` fake answers it with."""
    conf = load_config(cfg)
    adapter, _ = make_adapter(model, conf.models[model], Path(tempfile.gettempdir()), with_secrets=False)
    return {u.key: reply_text(provider, u.item.messages[-1].content)
            for u in lane_units(model, conf.models[model], adapter, custom_source(items, 0), 1)}


def test_anthropic_batch_lane_and_its_failures(tmp_path: Path, anthropic_fake: tuple[AnthropicBatchFake, str]) -> None:
    fake, url = anthropic_fake
    fake.request_5xx, fake.expire_requests, fake.poll_5xx, fake.truncate_downloads = 2, 2, 1, 1
    items = write_items(tmp_path / "items.jsonl", 12)
    cfg = write_config(tmp_path / "c.toml", {"a": anthropic_model(url, batch_max_requests=8)})
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert res.rc == 0, res.stderr
    check_complete(out, "a", provider_expected(cfg, items, "a", AnthropicFake.provider))
    assert len(read_jsonl(out / "errors" / "a.jsonl")) == 4  # 2 errored + 2 expired, each sent again
    assert not fake.completed_twice()
    verify_clean(out)


@pytest.mark.parametrize("phase", ["create_before", "create_after", "poll", "download"])
def test_anthropic_kill9_then_resume_is_exactly_once(tmp_path: Path, anthropic_fake: tuple[AnthropicBatchFake, str],
                                                     engine_procs: Any, phase: str) -> None:
    """Without metadata to carry the local id, a batch whose create answer was lost is found by
    its requests' custom_ids (once it has ended) and re-attached, not bought again."""
    fake, url = anthropic_fake
    items = write_items(tmp_path / "items.jsonl", 6)
    cfg = write_config(tmp_path / "c.toml", {"a": anthropic_model(url, batch_max_requests=6)})
    out = tmp_path / "out"
    fake.hold = phase
    p = engine_procs("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert fake.held.wait(60), p.stderr()
    p.kill9()
    res = run_engine("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert res.rc == 0, res.stderr
    check_complete(out, "a", provider_expected(cfg, items, "a", AnthropicFake.provider))
    assert not fake.completed_twice(), fake.events
    created = [e for e in fake.events if e["event"] == "created"]
    assert len(created) == 1  # the held create never made one; the others are re-attached
    verify_clean(out)


def test_batch_price_in_plan_budget_scores_and_status(tmp_path: Path, batch_fake: tuple[OpenAIBatchFake, str]) -> None:
    """A batch lane is priced at half the listed price (OpenAI documents a 50% discount) in
    `plan`, --budget and scores.json, which says what batching saved; status lines show batches."""
    fake, url = batch_fake
    extra = "\n[judge]\nmodels = [\"b\"]\n[prices.b]\ninput_per_mtok = 100.0\noutput_per_mtok = 200.0\n"
    out = tmp_path / "out"
    direct = write_config(tmp_path / "d.toml", {"b": batch_model(url, batch=False)}, extra=extra)
    cfg = write_config(tmp_path / "c.toml", {"b": batch_model(url)}, run={"output": str(out)}, extra=extra)
    args = ["--pillars", "crisis", "--limit", "2"]
    listed = run_cli("plan", direct, *args)
    halved = run_cli("plan", cfg, *args)

    def cost_of(text: str) -> float:
        m = re.search(r"estimated cost \$([0-9.]+)", text)
        assert m is not None, text
        return float(m.group(1))

    assert cost_of(halved.stdout) == pytest.approx(cost_of(listed.stdout) / 2, rel=1e-2)
    assert "batch lane: each batch within its 24h completion window" in halved.stdout
    flagged = run_cli("plan", direct, *args, "--batch")  # the same as run --batch: batch = true on each
    assert flagged.rc == 0, flagged.stderr
    assert cost_of(flagged.stdout) == pytest.approx(cost_of(halved.stdout), rel=1e-6)
    assert "batch lane: each batch within its 24h completion window" in flagged.stdout
    res = run_cli("run", cfg, *args, "--status-every", "0.05", "--no-progress", "--budget", "1000", env=KEY_ENV)
    assert res.rc == 0, res.stderr
    assert re.search(r"batches [a-z_ ,0-9]+\([0-9]+/[0-9]+ requests\)", res.stderr), res.stderr
    total = orjson.loads((out / "scores.json").read_bytes())["usage"]["b"]["total"]
    recs = read_jsonl(out / "responses" / "b.jsonl") + read_jsonl(out / "judgments" / "b.jsonl")
    tokens_in = sum(r["response"]["usage"]["prompt_tokens"] for r in recs)
    tokens_out = sum(r["response"]["usage"]["completion_tokens"] for r in recs)
    full = (tokens_in * 100.0 + tokens_out * 200.0) / 1e6
    assert total["cost_usd"] == pytest.approx(full / 2, abs=1e-5)
    assert total["batch_saved_usd"] == pytest.approx(full / 2, abs=1e-5)
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["budget"]["spent_usd"] == pytest.approx(full / 2, abs=1e-5)
    report = run_cli("report", out)
    assert report.rc == 0, report.stderr
    assert f"(batch; saved {total['batch_saved_usd']:.4f})" in (out / "report.md").read_text()


# -- Gemini batch mode ------------------------------------------------------------------------------


@pytest.fixture
def gemini_fake() -> Iterator[tuple[GeminiBatchFake, str]]:
    fake = GeminiBatchFake(complete_after_s=0.3)
    with run_in_thread(fake) as url:
        yield fake, url


def gemini_model(url: str, **kw: Any) -> dict[str, Any]:
    return batch_model(url, adapter="gemini", base_url=url, model="gemini-fake", **kw)


def test_gemini_batch_lane_and_its_failures(tmp_path: Path, gemini_fake: tuple[GeminiBatchFake, str]) -> None:
    fake, url = gemini_fake
    fake.request_5xx, fake.poll_5xx, fake.fail_batches = 2, 1, 1
    items = write_items(tmp_path / "items.jsonl", 9)
    cfg = write_config(tmp_path / "c.toml", {"g": gemini_model(url)})
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert res.rc == 0, res.stderr
    check_complete(out, "g", provider_expected(cfg, items, "g", GeminiFake.provider))
    assert not fake.completed_twice()
    verify_clean(out)


@pytest.mark.parametrize("phase", ["create_after", "poll"])
def test_gemini_kill9_then_resume_is_exactly_once(tmp_path: Path, gemini_fake: tuple[GeminiBatchFake, str],
                                                  engine_procs: Any, phase: str) -> None:
    """The display name carries the local batch id: a batch whose create answer was lost is found
    by it and re-attached."""
    fake, url = gemini_fake
    items = write_items(tmp_path / "items.jsonl", 5)
    cfg = write_config(tmp_path / "c.toml", {"g": gemini_model(url)})
    out = tmp_path / "out"
    fake.hold = phase
    p = engine_procs("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert fake.held.wait(60), p.stderr()
    p.kill9()
    res = run_engine("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert res.rc == 0, res.stderr
    check_complete(out, "g", provider_expected(cfg, items, "g", GeminiFake.provider))
    assert len([e for e in fake.events if e["event"] == "created"]) == 1
    assert not fake.completed_twice()


def test_shards_journal_their_own_batches_and_merge_combines_them(tmp_path: Path, batch_fake: tuple[OpenAIBatchFake, str],
                                                                   engine_procs: Any) -> None:
    """Shard 2 is killed while its batch is polled; merge adds both shards' journals to
    batches/<model>.jsonl; the rerun of shard 2 re-attaches the batch from it, not buying it again."""
    fake, url = batch_fake
    items = write_items(tmp_path / "items.jsonl", 12)
    cfg = write_config(tmp_path / "c.toml", {"b": batch_model(url, batch_max_requests=20)})
    out = tmp_path / "out"
    args: list[str | Path] = ["run", cfg, "--items", items, "--output", out]
    assert run_cli(*args, "--shard", "1/2", env=KEY_ENV).rc == 0
    fake.hold = "poll"
    p = engine_procs(*args, "--shard", "2/2", env=KEY_ENV)
    assert fake.held.wait(60), p.stderr()
    p.kill9()
    assert (out / "batches" / "b.shard-2-of-2.jsonl").exists()
    assert run_cli("merge", out).rc == 1  # shard 2 did not complete
    assert (out / "batches" / "b.jsonl").exists() and not (out / "batches" / "b.shard-2-of-2.jsonl").exists()
    res = run_cli(*args, "--shard", "2/2", env=KEY_ENV)
    assert res.rc == 0, res.stderr
    assert run_cli("merge", out).rc == 0
    check_complete(out, "b", expected_texts(cfg, items, "b"))
    assert len([e for e in fake.events if e["event"] == "created"]) == 2  # one batch per shard, none again
    assert not fake.completed_twice()
    journal = _journal(out, "b")
    assert {j["local_id"] for j in journal if j["event"] == "intent"} == \
        {j["local_id"] for j in journal if j["event"] == "ended"}


def test_a_server_without_batch_endpoints_stops_the_lane_and_scores_nothing(tmp_path: Path,
                                                                             fake_server: FakeServerProcess) -> None:
    """`batch = true` against an OpenAI-compatible server that serves only chat (404 on /v1/files):
    the lane stops with one line saying so; no unit gets an error as its outcome (the next run,
    without batch = true, sends them all)."""
    items = write_items(tmp_path / "items.jsonl", 3)
    cfg = write_config(tmp_path / "c.toml", {"b": fake_model(fake_server, batch=True, batch_wait_s=0.1)})
    out = tmp_path / "out"
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc != 0
    assert "this server has no batch API" in res.stderr and "Traceback" not in res.stderr
    assert "(HTTP 404 Not Found)" in res.stderr and "404: 404" not in res.stderr  # the status said once
    assert "0 out of retries" in res.stderr  # stopped, not out of retries
    assert read_jsonl(out / "responses" / "b.jsonl") == []


def test_a_corrupt_journal_is_one_line_before_anything_is_sent(tmp_path: Path,
                                                                batch_fake: tuple[OpenAIBatchFake, str]) -> None:
    fake, url = batch_fake
    items = write_items(tmp_path / "items.jsonl", 3)
    cfg = write_config(tmp_path / "c.toml", {"b": batch_model(url)})
    out = tmp_path / "out"
    (out / "batches").mkdir(parents=True)
    (out / "batches" / "b.jsonl").write_bytes(b'{"event": "intent", "local_id": "x"}\nnot json\n{"event": "ended"}\n')
    res = run_cli("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert res.rc != 0
    assert "b.jsonl line 2: not a batch journal line" in res.stderr and "Traceback" not in res.stderr
    assert fake.calls == []


def test_sigint_while_a_batch_runs_leaves_it_journalled_and_resume_collects_it(
        tmp_path: Path, batch_fake: tuple[OpenAIBatchFake, str], engine_procs: Any) -> None:
    fake, url = batch_fake
    fake.complete_after_s = 3600.0  # the batch stays in progress
    items = write_items(tmp_path / "items.jsonl", 4)
    cfg = write_config(tmp_path / "c.toml", {"b": batch_model(url)}, run={"grace_period_s": 5})
    out = tmp_path / "out"
    p = engine_procs("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    deadline = time.monotonic() + 60
    while not any(j["event"] == "created" for j in _journal(out, "b")):
        assert p.alive() and time.monotonic() < deadline, p.stderr()
        time.sleep(0.05)
    p.signal(signal.SIGINT)
    res = p.wait(timeout=30)
    assert res.rc == 130, res.stderr
    assert "Traceback" not in res.stderr
    assert not any(j["event"] == "ended" for j in _journal(out, "b"))
    fake.complete_after_s = 0.1
    res = run_engine("run", cfg, "--items", items, "--output", out, env=KEY_ENV)
    assert res.rc == 0, res.stderr
    check_complete(out, "b", expected_texts(cfg, items, "b"))
    assert len([e for e in fake.events if e["event"] == "created"]) == 1  # re-attached, not bought again


def test_a_rejected_key_while_looking_up_a_journalled_batch_stops_the_lane(
        tmp_path: Path, batch_fake: tuple[OpenAIBatchFake, str]) -> None:
    """Re-attaching a batch whose id never reached the journal asks the provider for it; a rejected
    key there stops the lane (as it does when polling), rather than asking again forever."""
    fake, url = batch_fake
    items = write_items(tmp_path / "items.jsonl", 3)
    cfg = write_config(tmp_path / "c.toml", {"b": batch_model(url)})
    out = tmp_path / "out"
    (out / "batches").mkdir(parents=True)
    keys = sorted(expected_texts(cfg, items, "b"))  # every unit waits for that batch: nothing new is submitted
    (out / "batches" / "b.jsonl").write_bytes(orjson.dumps({"event": "intent", "local_id": "x", "keys": keys,
                                                            "at": 1.0}) + b"\n")
    res = run_cli("run", cfg, "--items", items, "--output", out, "--no-progress",
                  env={"BATCH_FAKE_KEY": "wrong-key-0123456789"})
    assert res.rc != 0 and "Traceback" not in res.stderr
    assert "lane b stopped: looking up batch x refused (HTTP 401: Incorrect API key provided); " \
           "check the API key and rerun" in res.stderr, res.stderr
    assert fake.calls.count("list") == 3  # auth_failures_to_stop
