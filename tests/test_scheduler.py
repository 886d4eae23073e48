"""Lanes end to end: `python -m engine run` against the fake server under faults, server-side rate
limits, fatal and auth errors, with the API key kept out of everything written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.testing.fakeserver import FakeServerProcess, token_charge
from tests.conftest import (
    ThreadServer,
    check_complete,
    count_lines,
    expected_texts,
    fake_model,
    item_prompt,
    read_jsonl,
    run_cli,
    verify_clean,
    write_config,
    write_items,
)


def _final_outcomes(out: Path, model: str) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    recs = read_jsonl(out / "responses" / f"{model}.jsonl")
    by_key: dict[str, dict[str, Any]] = {}
    for r in recs:
        assert r["key"] not in by_key, f"duplicate key {r['key']}"
        by_key[r["key"]] = r
    errs: dict[str, list[dict[str, Any]]] = {}
    for e in read_jsonl(out / "errors" / f"{model}.jsonl"):
        errs.setdefault(e["key"], []).append(e)
    return by_key, errs


def test_fault_storm_every_item_accounted_then_completed(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    fake_server.set_config(latency_ms=5, latency_jitter_ms=10, seed=11, p_429=0.10, p_5xx=0.05, p_reset=0.02,
                           p_hang=0.01, p_malformed=0.01, retry_after_s=0.3, hang_s=30)
    n = 400
    items = write_items(tmp_path / "items.jsonl", n)
    out = tmp_path / "out"
    model = fake_model(fake_server, max_concurrency=16, timeout_s=1.0, max_attempts=2, backoff_base_s=0.05,
                       backoff_max_s=0.5)
    cfg = write_config(tmp_path / "c.toml", {"fake": model})
    expected = expected_texts(cfg, items, "fake")
    assert len(expected) == n

    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert "Traceback" not in res.stderr
    by_key, errs = _final_outcomes(out, "fake")
    # Every item ended as a record or, when its retries ran out, as a final line in errors/.
    exhausted = {k for k, es in errs.items() if any(e.get("final") for e in es)}
    assert set(by_key) | exhausted == set(expected)
    assert not (set(by_key) & exhausted), "an item with a record was also reported out of retries"
    for k, r in by_key.items():
        assert r.get("error") is None
        assert r["response"]["text"] == expected[k]
        assert r["attempts"] == len(errs.get(k, [])) + 1  # one error line per failed attempt
    for k in exhausted:
        assert len(errs[k]) == 2 and [e["attempt"] for e in errs[k]] == [1, 2]
    assert exhausted, "with 19% faults and 2 attempts some items must run out of retries"
    assert res.rc == 1 and "incomplete" in res.stderr
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["status"] == "incomplete" and doc["lanes"]["fake"]["exhausted"] == len(exhausted)

    # The next run (same request shape, more patience) completes the rest, faults still on.
    model["max_attempts"] = 8
    cfg = write_config(tmp_path / "c.toml", {"fake": model})
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    recs = check_complete(out, "fake", expected)
    assert len(recs) == n
    # Records written by the first run are untouched and come first.
    assert all(r["key"] in by_key for r in recs[: len(by_key)])
    verify_clean(out)
    st = fake_server.stats()
    assert st["duplicates_ok"] == 0  # no item got two successful answers
    assert st["ok"] == n
    assert st["by_status"].get("429", 0) > 0 and st["by_status"].get("hang", 0) > 0
    assert st["by_status"].get("reset", 0) > 0 and st["by_status"].get("malformed", 0) > 0


def _window_max(times: list[float], weights: list[float]) -> float:
    pts = sorted(zip(times, weights))
    best = acc = 0.0
    j = 0
    for t, w in pts:
        acc += w
        while pts[j][0] <= t - 1.0:
            acc -= pts[j][1]
            j += 1
        best = max(best, acc)
    return best


@pytest.mark.serial
def test_rpm_limit_held_in_every_window_without_429(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    rpm = 2400.0  # 40 per second
    fake_server.set_config(rpm=rpm, latency_ms=2)
    n = 140
    items = write_items(tmp_path / "items.jsonl", n)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, requests_per_minute=rpm,
                                                                max_concurrency=32)})
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    st = fake_server.stats()
    assert st["n_429"] == 0, st
    log = fake_server.log()
    times = sorted(e["t"] for e in log)
    assert len(times) == n
    assert _window_max(times, [1.0] * n) <= rpm / 60.0
    achieved = (n - 1) / (times[-1] - times[0])
    assert achieved >= 0.9 * rpm / 60.0, achieved
    check_complete(out, "fake", expected_texts(cfg, items, "fake"))


@pytest.mark.serial
def test_tpm_limit_held_in_every_window_without_429(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    tpm = 120_000.0  # 2000 tokens per second
    max_tokens = 98
    fake_server.set_config(tpm=tpm, latency_ms=2)
    n = 80
    items = write_items(tmp_path / "items.jsonl", n)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, tokens_per_minute=tpm,
                                                                max_tokens=max_tokens, max_concurrency=32)})
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 0, res.stderr
    st = fake_server.stats()
    assert st["n_429"] == 0, st
    charge = {orjson.dumps(b, option=orjson.OPT_SORT_KEYS): token_charge(b) for b in _bodies(cfg, items)}
    from engine.testing.fakeserver import body_hash

    by_hash = {body_hash(orjson.loads(k)): c for k, c in charge.items()}
    log = sorted(fake_server.log(), key=lambda e: e["t"])
    assert len(log) == n
    times = [e["t"] for e in log]
    weights = [float(by_hash[e["body_hash"]]) for e in log]
    assert _window_max(times, weights) <= tpm / 60.0
    achieved = sum(weights[:-1]) / (times[-1] - times[0])
    assert achieved >= 0.9 * tpm / 60.0, achieved
    check_complete(out, "fake", expected_texts(cfg, items, "fake"))


def _bodies(cfg: Path, items: Path) -> list[dict[str, Any]]:
    import tempfile

    from adapters.registry import make_adapter
    from engine.config import load_config
    from engine.items import custom_source
    from engine.run.units import lane_units

    c = load_config(cfg)
    adapter, _ = make_adapter("fake", c.models["fake"], Path(tempfile.gettempdir()), with_secrets=False)
    return [u.body for u in lane_units("fake", c.models["fake"], adapter, custom_source(items, 0), 1)]


def test_fatal_400_is_a_final_record_not_retried(tmp_path: Path, thread_server: ThreadServer) -> None:
    n = 30
    items = write_items(tmp_path / "items.jsonl", n)
    thread_server.fail_with = b"number 1"  # items 1, 10..19: 11 items
    fatal_ids = {f"q{i}" for i in range(n) if "number 1" in item_prompt(i)}
    assert len(fatal_ids) == 11
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(thread_server.url, max_attempts=5)})
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert "Traceback" not in res.stderr
    assert res.rc == 1 and "11 fatal error(s)" in res.err_lines()[-1], res.stderr
    by_key, errs = _final_outcomes(out, "fake")
    assert len(by_key) == n
    failed = {r["item_id"]: r for r in by_key.values() if r.get("error")}
    assert set(failed) == fatal_ids
    for r in failed.values():
        assert r["error"]["kind"] == "fatal" and r["error"]["status"] == 400 and r["attempts"] == 1
        assert "not allowed" in r["error"]["message"]
        assert [e.get("final") for e in errs[r["key"]]] == [True]
    assert thread_server.fatal_sent == len(fatal_ids)  # sent once each, never retried
    res = run_cli("verify", out)
    assert res.rc == 1 and f"failed {len(fatal_ids)}" in res.stdout


def test_retry_errors_retries_fatal_records_without_duplicates(tmp_path: Path, thread_server: ThreadServer) -> None:
    n = 25
    items = write_items(tmp_path / "items.jsonl", n)
    thread_server.fail_with = b"number 2"  # q2, q20..q24
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(thread_server.url)})
    res = run_cli("run", cfg, "--items", items, "--output", out)
    # Items that ended without a response make the run exit 1, as verify does (issue 16).
    assert res.rc == 1 and "6 fatal error(s), 0 out of retries" in res.err_lines()[-1], res.stderr
    by_key, _ = _final_outcomes(out, "fake")
    failed = {k for k, r in by_key.items() if r.get("error")}
    assert len(failed) == 6
    # A plain rerun keeps fatal outcomes as they are (they are final), and still says they failed;
    # --allow-failures exits 0 on them.
    before = (out / "responses" / "fake.jsonl").read_bytes()
    thread_server.fail_with = None
    res = run_cli("run", cfg, "--items", items, "--output", out)
    assert res.rc == 1 and "6 fatal error(s)" in res.err_lines()[-1], res.stderr
    res = run_cli("run", cfg, "--items", items, "--output", out, "--allow-failures")
    assert res.rc == 0 and "allowed by --allow-failures" in res.err_lines()[-1], res.stderr
    assert (out / "responses" / "fake.jsonl").read_bytes() == before
    # --retry-errors retries exactly those, leaving one record per key.
    sent_before = thread_server.stats()["requests"]
    res = run_cli("run", cfg, "--items", items, "--output", out, "--retry-errors")
    assert res.rc == 0, res.stderr
    assert thread_server.stats()["requests"] - sent_before == len(failed)
    recs = check_complete(out, "fake", expected_texts(cfg, items, "fake"))
    assert len(recs) == n
    verify_clean(out)


def test_auth_failure_stops_only_its_lane_and_names_env_var(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    secret = "sk-live-GOODSECRET-4f9a8b7c6d5e"
    wrong = "sk-live-WRONGSECRET-0a1b2c3d4e5f"
    fake_server.set_config(require_key=secret, latency_ms=5)
    n = 40
    items = write_items(tmp_path / "items.jsonl", n)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.toml", {
        "good": fake_model(fake_server, api_key_env="TRUSTMH_GOOD_KEY", max_concurrency=4),
        "bad": fake_model(fake_server, api_key_env="TRUSTMH_BAD_KEY", max_concurrency=4),
    })
    env = {"TRUSTMH_GOOD_KEY": secret, "TRUSTMH_BAD_KEY": wrong}
    res = run_cli("run", cfg, "--items", items, "--output", out, env=env)
    assert res.rc == 1, res.stderr
    assert "Traceback" not in res.stderr
    # The good lane went on to the end.
    check_complete(out, "good", expected_texts(cfg, items, "good"))
    # The bad lane: no records (retried next run), attempt lines that are not final, one message.
    assert count_lines(out / "responses" / "bad.jsonl") == 0
    errs = read_jsonl(out / "errors" / "bad.jsonl")
    assert errs and all(e["error"]["kind"] == "auth" and not e.get("final") for e in errs)
    assert len(errs) < n  # it stopped instead of trying every item
    msgs = [ln for ln in res.err_lines() if "TRUSTMH_BAD_KEY" in ln]
    assert len(msgs) == 1 and "stopped" in msgs[0], res.stderr
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["lanes"]["bad"]["state"] == "stopped" and doc["lanes"]["good"]["state"] == "complete"
    _assert_no_secret(out, res.stdout + res.stderr, (secret, wrong))

    # With the key fixed, the same command runs the bad lane's items (and skips the good lane's).
    env["TRUSTMH_BAD_KEY"] = secret
    res = run_cli("run", cfg, "--items", items, "--output", out, env=env)
    assert res.rc == 0, res.stderr
    check_complete(out, "bad", expected_texts(cfg, items, "bad"))
    check_complete(out, "good", expected_texts(cfg, items, "good"))
    verify_clean(out)
    _assert_no_secret(out, res.stdout + res.stderr, (secret, wrong))


def _assert_no_secret(out: Path, console: str, secrets: tuple[str, ...]) -> None:
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "run.json" for p in files)
    for s in secrets:
        needles = (s, s[:12], s[-12:])
        assert not any(n in console for n in needles), "a key reached stdout/stderr"
        for p in files:
            data = p.read_bytes()
            assert not any(n.encode() in data for n in needles), f"a key reached {p}"


def test_api_key_never_written_even_when_server_echoes_it(tmp_path: Path) -> None:
    """A server that puts the sent Authorization header into its error bodies (some gateways do),
    whole and abbreviated: the key still reaches no file and no console line."""
    from aiohttp import web

    secret = "sk-proj-ECHOEDSECRET-99887766"

    @web.middleware
    async def echo(request: web.Request, handler: Any) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        key = auth[7:]
        body = await request.read()
        msg = f"Invalid key: {auth}. Also known as {key[:8]}...{key[-4:]}"
        return web.json_response({"error": {"message": msg}}, status=400 if b"number 3" in body else 401)

    srv = ThreadServer(middleware=echo)
    try:
        items = write_items(tmp_path / "items.jsonl", 5)
        out = tmp_path / "out"
        cfg = write_config(tmp_path / "c.toml", {"m": fake_model(srv.url, api_key_env="TRUSTMH_ECHO_KEY",
                                                                 max_concurrency=1, auth_failures_to_stop=10)})
        res = run_cli("run", cfg, "--items", items, "--output", out, env={"TRUSTMH_ECHO_KEY": secret})
        assert "Traceback" not in res.stderr
        recs = read_jsonl(out / "responses" / "m.jsonl")
        assert [r["item_id"] for r in recs] == ["q3"] and recs[0]["error"]["status"] == 400
        assert "Invalid key" in recs[0]["error"]["message"]  # the message is kept, the key is not
        assert len(read_jsonl(out / "errors" / "m.jsonl")) == 5
        _assert_no_secret(out, res.stdout + res.stderr, (secret,))
    finally:
        srv.stop()


def test_request_too_large_for_the_providers_tpm_is_one_fatal_record(tmp_path: Path,
                                                                     fake_server: FakeServerProcess) -> None:
    """OpenAI's 429 "Request too large ... must be reduced" cannot succeed by waiting: one attempt,
    a final error record saying why, and the run goes on."""
    fake_server.set_config(tpm=600)
    items = write_items(tmp_path / "items.jsonl", 3)
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.toml", {"fake": fake_model(fake_server, max_attempts=5)}, run={"output": str(out)})
    res = run_cli("run", cfg, "--items", items)
    # Fatal outcomes are final (the run goes on), but items without a response exit 1 (issue 16).
    assert res.rc == 1 and "3 fatal error(s)" in res.err_lines()[-1], res.stderr
    recs = read_jsonl(out / "responses" / "fake.jsonl")
    assert len(recs) == 3 and all(r["attempts"] == 1 and r["error"]["kind"] == "fatal" for r in recs)
    assert all("tokens per min (TPM): Limit 600" in r["error"]["message"] for r in recs)
    assert fake_server.stats()["requests"] == 3
