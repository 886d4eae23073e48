"""A new adapter is one module: nothing outside it changes. This test module is that module. It
registers two adapters with `@adapter` and the engine, run as a subprocess, imports it through
`[run] adapter_modules`:

  plugin-chat   an OpenAI-compatible-style HTTP adapter (its own client class on the shared HTTP
                helpers), against the fake server;
  plugin-local  a local adapter with its own keys: its server opener starts the fake server as the
                lane's model process under ManagedServer, on the GPUs the run's pool grants.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import orjson

from adapters.http import error_for_status, new_session, post_json
from adapters.openai_compat import openai_body, parse_chat_response
from adapters.registry import BuildContext, Built, Resources, adapter
from adapters.servers.managed import ManagedServer
from engine.core.adapter import Adapter
from engine.core.config import AdapterOptions, ModelConfig
from engine.core.records import GenParams, Message, Response
from engine.testing.fakeserver import FakeServerProcess
from tests.conftest import check_complete, expected_texts, read_jsonl, run_cli, run_engine, verify_clean, write_config, write_items

THIS_MODULE = __name__  # what [run] adapter_modules names


class PluginChat:
    """A minimal chat-completions client: one session per lane, the shared status mapping."""

    def __init__(self, base_url: str, model: str, concurrency: int) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.concurrency = concurrency
        self.session: aiohttp.ClientSession | None = None

    def point_at(self, base_url: str) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"

    def build_body(self, messages: tuple[Message, ...], params: GenParams) -> dict[str, object]:
        return openai_body(self.model, messages, params)

    async def send(self, body: dict[str, object], timeout: float) -> Response:
        if self.session is None:
            self.session = new_session(self.concurrency)
        start = time.perf_counter()
        status, raw, _ = await post_json(self.session, self.url, orjson.dumps(body),
                                         {"Content-Type": "application/json"}, timeout, ())
        if status != 200:
            raise error_for_status(status, raw[:300].decode("utf-8", "replace"))
        return parse_chat_response(raw, time.perf_counter() - start)

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


@adapter("plugin-chat", required={"base_url": "the server's /v1 URL"})
def build_plugin_chat(ctx: BuildContext[AdapterOptions]) -> Built:
    assert ctx.model.base_url
    return Built(PluginChat(ctx.model.base_url, ctx.model_id, ctx.model.concurrency()))


class PluginLocalOptions(AdapterOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    gpus_needed: int = 1  # GPUs the model asks for when [run] gpus is set
    slots: int = 3  # requests in flight by default

    def default_concurrency(self) -> int:
        return self.slots


class FakeModelProcess:
    """Starts the fake server as this lane's model process, with the granted GPUs in its environment."""

    takes_gpus: bool = True

    def __init__(self, name: str, log_dir: Path) -> None:
        self.name = name
        self.log_dir = log_dir
        self.info: dict[str, object] = {}

    @asynccontextmanager
    async def __call__(self, adapter: Adapter, gpus: Sequence[str] | None = None) -> AsyncIterator[ManagedServer]:
        env: dict[str, str | None] = {"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus is not None else {}
        server = ManagedServer(lambda port: [sys.executable, "-m", "engine.testing.fakeserver", "--port", str(port)],
                               log_path=self.log_dir / f"{self.name}.log", env=env, startup_timeout_s=60)
        await server.start()
        self.info.update({"kind": "fake model process", "gpus_given": list(gpus or ())})
        try:
            assert isinstance(adapter, PluginChat)
            adapter.point_at(server.base_url)
            yield server
        finally:
            await server.stop()


def _local_gpus(model: ModelConfig, options: PluginLocalOptions, pinned: bool) -> int:
    return options.gpus_needed if pinned else 0


@adapter("plugin-local", options=PluginLocalOptions, local=True, gpus=_local_gpus,
         resources=lambda o: Resources(cpus=1), shaping=("gpus_needed",))
def build_plugin_local(ctx: BuildContext[PluginLocalOptions]) -> Built:
    # The server's address is known once it runs; build_body never needs it.
    client = PluginChat("http://127.0.0.1:0/v1", ctx.model_id, ctx.model.concurrency())
    return Built(client, FakeModelProcess(ctx.name, ctx.log_dir))


# -- the tests -----------------------------------------------------------------------------------


def test_a_new_http_adapter_runs_from_its_own_module(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    items = write_items(tmp_path / "items.jsonl", 6)
    cfg = write_config(tmp_path / "c.toml", {"p": {"adapter": "plugin-chat", "base_url": fake_server.url,
                                                   "model": "fake-model", "backoff_base_s": 0.05}},
                       run={"adapter_modules": [THIS_MODULE]})
    out = tmp_path / "out"
    res = run_engine("run", cfg, "--items", items, "--output", out, "--no-progress")
    assert res.rc == 0, res.stderr
    check_complete(out, "p", expected_texts(cfg, items, "p"))
    run = orjson.loads((out / "run.json").read_bytes())
    assert run["config"]["run"]["adapter_modules"] == [THIS_MODULE]
    assert run["config"]["models"]["p"]["adapter"] == "plugin-chat"
    verify_clean(out, process=True)  # verify reads the stored config back: the module is imported again
    # A second run resumes: nothing left to send. (In this process: the fresh imports of the module
    # are the first run's and verify's, above.)
    res = run_cli("run", cfg, "--items", items, "--output", out, "--no-progress")
    assert res.rc == 0 and "6 already done" in res.stderr, res.stderr


def test_a_new_local_adapter_runs_from_its_own_module(tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.jsonl", 5)
    cfg = write_config(tmp_path / "c.toml", {"l": {"adapter": "plugin-local", "model": "fake-model", "slots": 2}},
                       run={"adapter_modules": [THIS_MODULE], "gpus": [0]})
    out = tmp_path / "out"
    res = run_engine("run", cfg, "--items", items, "--output", out, "--no-progress")
    assert res.rc == 0, res.stderr
    check_complete(out, "l", expected_texts(cfg, items, "l"))
    run = orjson.loads((out / "run.json").read_bytes())
    started = run["servers"]["models"]["l"]
    assert started["gpus"] == ["0"] and started["gpus_given"] == ["0"] and started["kind"] == "fake model process"
    assert [e[:2] for e in run["servers"]["events"]] == [["acquire", "l"], ["release", "l"]]
    assert run["config"]["models"]["l"]["slots"] == 2 and run["config"]["models"]["l"]["gpus_needed"] == 1
    assert (out / "logs" / "l.log").exists()
    assert read_jsonl(out / "errors" / "l.jsonl") == []
    verify_clean(out, process=True)


def test_an_adapter_module_that_cannot_be_imported_is_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", {"p": {"adapter": "plugin-chat", "base_url": "http://127.0.0.1:9/v1"}},
                       run={"adapter_modules": ["tests.no_such_adapter_module"]})
    res = run_cli("run", cfg, "--items", write_items(tmp_path / "i.jsonl", 1), "--output", tmp_path / "out")
    assert res.rc == 2 and res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert "run.adapter_modules: cannot import `tests.no_such_adapter_module`" in res.stderr
