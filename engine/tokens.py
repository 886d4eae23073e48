"""Prompt token estimates for the limiter's charge, `plan` and `--budget`: a real tokenizer where one
works offline, else an estimate that knows Chinese, Japanese and Korean text is dense. Also the
tokenizer `bench --tokenizer` cuts synthetic prompts to an exact length with (`load_tokenizer`).

- OpenAI's models (an adapter whose registry entry says `tokenizer="tiktoken"`, and a model id that
  OpenAI's encodings know: gpt-4o, gpt-4.1, o3, ...): their tiktoken encoding, from the optional
  `bpe-openai` package, which ships the encodings in its wheel (tiktoken downloads them at first use
  from a host that is not a package registry, so it fails offline and in CI).
- Everything else: ~4 characters a token for other text, and CJK_TOKENS tokens per CJK character.
  Measured on the Chinese subtasks (CPsyCoun dialogues, built-in and official; PsyLeak): the
  embedded SmolLM2 tokenizer (byte-level BPE, mostly English vocabulary) takes 1.6-1.8 tokens per CJK
  character, OpenAI's o200k about 0.7, Qwen's about 0.7; characters / 4 (0.25) undercounted the
  first 7x. 1.5 stays within 25% of the small byte-level tokenizers and errs high, never low, for
  the models with large CJK vocabularies, as a budget must.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable

import msgspec

from adapters import registry
from engine.core.config import ModelConfig
from engine.core.errors import ConfigError

CJK_TOKENS = 1.5
# CJK ideographs (with extension A and compatibility), kana, hangul, and the fullwidth/CJK punctuation
# that their text is written with.
_CJK = "[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
SCRIPT_AWARE = "script-aware estimate (4 chars/token, CJK 1.5 tokens/char)"


def script_aware(text: str) -> float:
    cjk = len(_cjk().findall(text)) if not text.isascii() else 0
    return (len(text) - cjk) / 4 + cjk * CJK_TOKENS


@functools.cache
def _cjk() -> re.Pattern[str]:
    """Compiled at the first text that is not ASCII: the class of wide ranges takes 10-20 ms of CPU
    to compile, which every process paid at import, most never meeting such a text."""
    return re.compile(_CJK)


class TokenCounter(msgspec.Struct, frozen=True):
    """How one model's prompts are counted, and the name `plan` shows for it."""

    name: str
    count: Callable[[str], float]

    def tokens(self, texts: list[str]) -> int:
        return math.ceil(sum(map(self.count, texts)))


ESTIMATE = TokenCounter(SCRIPT_AWARE, script_aware)


def counter_for(model: ModelConfig, key: str) -> TokenCounter:
    """The counter for `[models.<key>]`: OpenAI's encoding of its model id where its adapter
    speaks for OpenAI's ids and bpe-openai is installed, else the script-aware estimate."""
    if registry.entry(model.adapter).caps.tokenizer != "tiktoken":
        return ESTIMATE
    return _openai(model.model or key)


# OpenAI's model families by id prefix (as tiktoken maps them; the first match wins). bpe-openai's
# own model table lags (no o3, gpt-5) and refuses some it lists (gpt-4).
_PREFIXES = (("gpt-4o", "o200k_base"), ("gpt-4.1", "o200k_base"), ("gpt-4.5", "o200k_base"),
             ("gpt-5", "o200k_base"), ("chatgpt-4o", "o200k_base"), ("o1", "o200k_base"), ("o3", "o200k_base"),
             ("o4", "o200k_base"), ("gpt-4", "cl100k_base"), ("gpt-3.5", "cl100k_base"), ("gpt-35", "cl100k_base"))


@functools.cache
def _openai(model_id: str) -> TokenCounter:
    name = next((enc for prefix, enc in _PREFIXES if model_id.startswith(prefix)), None)
    if name is None:
        return ESTIMATE
    try:
        import bpe_openai  # optional (the `tokens` extra): 40 MB of encodings, loaded only here
    except ImportError:
        return ESTIMATE
    enc = bpe_openai.get_encoding(name)
    return TokenCounter(f"tokenizer {name} (bpe-openai)", lambda text: len(enc.encode(text, disallowed_special=())))


class Tokenizer(msgspec.Struct, frozen=True):
    """A tokenizer that also decodes, for prompts of an exact token length (`bench --tokenizer`)."""

    name: str
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]


_ENCODINGS = ("o200k_base", "cl100k_base")


def load_tokenizer(name: str) -> Tokenizer:
    """`bench --tokenizer NAME`: an OpenAI encoding (o200k_base, cl100k_base) or an OpenAI model id
    through bpe-openai, else a Hugging Face tokenizer (a local folder or a hub id) through
    `transformers` (vLLM installs it). A ConfigError of one line when neither can load it."""
    enc_name = name if name in _ENCODINGS else next((e for p, e in _PREFIXES if name.startswith(p)), None)
    if enc_name is not None:
        try:
            import bpe_openai  # optional (the `tokens` extra), loaded only when asked for
        except ImportError:
            raise ConfigError(f"--tokenizer {name}: OpenAI's encodings need the optional bpe-openai package "
                              "(pip install 'trustmh-engine[tokens]')") from None
        enc = bpe_openai.get_encoding(enc_name)
        return Tokenizer(f"{enc_name} (bpe-openai)", lambda text: list(enc.encode(text, disallowed_special=())),
                         lambda ids: str(enc.decode(ids)))
    try:
        import transformers  # optional (comes with vLLM): only a Hugging Face tokenizer needs it
    except ImportError:
        raise ConfigError(f"--tokenizer {name}: a Hugging Face tokenizer needs the `transformers` package "
                          "(pip install transformers; pip install '.[vllm]' brings it), or name an OpenAI "
                          f"encoding ({', '.join(_ENCODINGS)})") from None
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name)
    except Exception as exc:  # transformers raises OSError, ValueError or hub errors for a bad name
        raise ConfigError(f"--tokenizer {name}: cannot load it ({type(exc).__name__}); give a folder holding "
                          "tokenizer files or a Hugging Face model id") from None
    return Tokenizer(f"{name} (transformers)", lambda text: list(tok.encode(text, add_special_tokens=False)),
                     lambda ids: str(tok.decode(ids)))
