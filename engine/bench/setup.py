"""What a benchmark sends and to whom: the target (a server root given as --base-url, or models of
a config file) and the prompts (synthetic of a given length in words, or in tokens of a given
tokenizer; an items file; the pillars' items).

A --base-url target is driven by the registered adapter that declares `caps.chat_completions`
(Chat Completions over HTTP) and `caps.streaming`; a configured model by its own adapter, which
must declare `caps.streaming`. Either way `stream = true` is set, so replies carry TTFT and token
timing. A key is sent only when one is configured: --api-key-env, else the adapter's conventional
variable (its `caps.default_api_key_env`) when that is set, else none.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

import msgspec

from adapters import registry
from engine.config import load_config
from engine.core.adapter import StreamsReplies
from engine.core.config import ModelConfig
from engine.core.errors import ConfigError
from engine.core.records import GenParams, Message
from engine.core.secrets import looks_like_key, remember
from engine.items import custom_items, pillar_source
from engine.spec import resolve_subtasks
from engine.tokens import Tokenizer

__all__ = ["Target", "adapter_base_url", "bodies", "chat_url", "check_base_url", "config_targets", "item_prompts", "pillar_prompts", "sends_ignore_eos",
           "synthetic_prompts", "url_target"]

_CHAT = "/chat/completions"


class Target(NamedTuple):
    label: str  # what the table and result name: the model id, or the models key
    model_id: str
    backend: str  # the adapter that drives it
    built: registry.Built
    client: StreamsReplies


def chat_url(base_url: str, endpoint: str) -> str:
    """The request URL of a server root and an endpoint path; a base URL that already ends in /v1
    takes an endpoint starting with /v1 without doubling it (as `vllm bench serve`)."""
    base = base_url.rstrip("/")
    path = "/" + endpoint.lstrip("/")
    if base.endswith("/v1") and (path == "/v1" or path.startswith("/v1/")):
        path = path[3:]
    return base + path


def adapter_base_url(url: str, flag: str = "--endpoint") -> str:
    """The base_url an OpenAI-compatible adapter takes for a chat completions URL."""
    if not url.endswith(_CHAT):
        raise ConfigError(f"{flag}: {url} is not a chat completions endpoint; bench drives "
                          "…/chat/completions (e.g. --endpoint /v1/chat/completions)")
    return url[: -len(_CHAT)]


def _chat_adapter() -> str:
    for name in registry.names():
        e = registry.entry(name)
        if e.caps.chat_completions and e.caps.streaming and not e.local:
            return name
    raise ConfigError("no registered adapter speaks Chat Completions with streaming; "
                      "check adapters/ (caps.chat_completions)")


def _client(label: str, model_id: str, cfg: ModelConfig) -> Target:
    if not registry.entry(cfg.adapter).caps.streaming:
        raise ConfigError(f"models.{label}: adapter `{cfg.adapter}` cannot stream, and bench measures streamed "
                          "replies (TTFT, ITL); pick a model whose adapter streams")
    built = registry.make_adapter(label, cfg, Path(tempfile.gettempdir()))
    if built.server is not None or not isinstance(built.adapter, StreamsReplies):
        raise ConfigError(f"models.{label}: a model the engine starts itself; start its server and pass "
                          "--base-url http://HOST:PORT --model NAME instead")
    return Target(label, model_id, cfg.adapter, built, built.adapter)


def check_base_url(base_url: str) -> None:
    """--base-url must be an http(s) server root; a ConfigError of one line otherwise."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--base-url {base_url}: expected a server root like http://127.0.0.1:8000 (http or https, "
                          "with a host)")
    try:
        parts.port  # noqa: B018  # reading it validates it
    except ValueError:
        raise ConfigError(f"--base-url {base_url}: the port is not a number from 0 to 65535") from None


def url_target(base_url: str, endpoint: str, model: str, api_key_env: str | None, concurrency: int) -> Target:
    check_base_url(base_url)
    if api_key_env and looks_like_key(api_key_env):
        remember(api_key_env)  # redacted from anything printed later
        raise ConfigError("--api-key-env: holds what looks like a key itself, not the name of an environment variable "
                          "(the value is not shown); export the key in a variable and name that variable")
    if api_key_env and not os.environ.get(api_key_env):
        raise ConfigError(f"--api-key-env: environment variable {api_key_env} is not set; export it, or drop "
                          "--api-key-env to send no key")
    name = _chat_adapter()
    default_env = registry.entry(name).caps.default_api_key_env
    key_env = api_key_env or (default_env if default_env and os.environ.get(default_env) else None)
    cfg = ModelConfig(adapter=name, model=model, base_url=adapter_base_url(chat_url(base_url, endpoint)),
                      api_key_env=key_env, max_concurrency=concurrency, stream=True)
    return _client(model, model, cfg)


def config_targets(path: str, models: Sequence[str] | None, concurrency: int) -> list[Target]:
    cfg = load_config(path)
    names = list(models) if models else list(cfg.models)
    unknown = [n for n in names if n not in cfg.models]
    if unknown:
        raise ConfigError(f"--models: {', '.join(unknown)} not in {path} (its models: {', '.join(cfg.models)})")
    out = []
    for n in names:
        m = msgspec.structs.replace(cfg.models[n], stream=True, max_concurrency=concurrency)
        out.append(_client(n, m.model or n, m))
    return out


# Short common words: about one token each for the usual BPE tokenizers, so --input-len N words
# is close to N prompt tokens without loading a tokenizer.
_WORDS = ("the", "of", "and", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as",
          "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but",
          "not", "what", "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each")


def synthetic_prompts(n: int, input_len: int, seed: int, tokenizer: Tokenizer | None = None) -> list[tuple[Message, ...]]:
    """n distinct prompts (distinct, so no prefix cache serves them) of `input_len` words each, or,
    with a tokenizer, of `input_len` tokens each: the words' first input_len tokens, decoded (as
    `vllm bench serve`'s random prompts; a re-encoding may differ by a token where a cut merges)."""
    rng = random.Random(seed)
    out: list[tuple[Message, ...]] = []
    for _ in range(n):
        text = " ".join(rng.choices(_WORDS, k=max(1, input_len)))
        if tokenizer is not None:
            ids = tokenizer.encode(text)
            while len(ids) < input_len:  # a tokenizer that merges common words: more words
                text += " " + " ".join(rng.choices(_WORDS, k=input_len))
                ids = tokenizer.encode(text)
            text = tokenizer.decode(ids[:input_len])
        out.append((Message(role="user", content=text),))
    return out


def item_prompts(path: Path, n: int) -> list[tuple[Message, ...]]:
    """The messages of the first n items of a JSONL items file, repeated in order when it has fewer."""
    items = [it.messages for it in custom_items(path, 0)]
    if not items:
        raise ConfigError(f"--items: {path} holds no items; give a JSONL file with one item per line")
    return [items[i % len(items)] for i in range(n)]


def pillar_prompts(pillars: Sequence[str], n: int, seed: int) -> list[tuple[Message, ...]]:
    """n prompts drawn (seeded) from the built-in items of these pillars ("all": every pillar),
    each item's messages exactly as a run sends them; repeated when there are fewer items."""
    factory = pillar_source(resolve_subtasks(tuple(pillars)), None, 0)
    pool = [w.item.messages for w in factory()]
    if not pool:
        raise ConfigError(f"--pillars {','.join(pillars)}: no built-in items; name other pillars or pass --items")
    random.Random(seed).shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def sends_ignore_eos(target: Target, wanted: bool | None) -> bool:
    """Whether bodies carry `ignore_eos` and `min_tokens`: --ignore-eos / --no-ignore-eos, else when
    the target's adapter declares that its server takes them (`caps.ignore_eos`). Forcing them on
    is for a Chat Completions server the user knows takes them (a --base-url server: vLLM, SGLang,
    llama.cpp), as with `vllm bench serve --ignore-eos`; another wire format has no such field."""
    caps = registry.entry(target.backend).caps
    if wanted is None:
        return caps.ignore_eos
    if wanted and not (caps.ignore_eos or caps.chat_completions):
        raise ConfigError(f"--ignore-eos: {target.label} (adapter `{target.backend}`) does not speak Chat Completions "
                          "and has no ignore_eos; drop --ignore-eos")
    return wanted


def bodies(target: Target, prompts: Sequence[tuple[Message, ...]], output_len: int,
           ignore_eos: bool = False) -> list[dict[str, object]]:
    """Request bodies as `vllm bench serve` sends them: temperature 0, max tokens = output_len;
    with ignore_eos also `ignore_eos: true` and `min_tokens = output_len`, so that every reply is
    output_len tokens long whatever the model would say."""
    params = GenParams(max_tokens=output_len, temperature=0.0)
    out = [target.built.adapter.build_body(m, params) for m in prompts]
    if ignore_eos:
        for body in out:
            body["ignore_eos"] = True
            body["min_tokens"] = output_len
    return out
