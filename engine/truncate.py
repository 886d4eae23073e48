"""Fitting a prompt into a model's context window, by one documented rule, instead of sending a
request that the server rejects (llama.cpp and vLLM answer a too-long prompt with HTTP 400).

Token counts are estimated without the model's tokenizer, on the safe side: ASCII text at ~3.5
characters a token, other characters (Chinese, emoji, accents) at 2 tokens each, plus 8 tokens of
chat-template overhead per message. The rule, applied until the prompt fits `context - max_tokens`:

1. Drop the oldest history turns (never the system message, never the last message), in pairs
   where possible, so a dialogue keeps its most recent context.
2. Then shorten the longest remaining message by cutting out its middle (head and tail kept, joined
   by " [...] "), so instructions at the start and the question at the end survive.

The truncated item keeps its id (it is the same item, asked within the model's limits) and records
`metadata["truncated"] = {"dropped_turns": n, "cut_chars": m}`; lanes count truncated requests.
"""

from __future__ import annotations

import math

import msgspec

from engine.core.records import Item, Message

PER_MESSAGE = 8
MARK = " [...] "


def estimate(text: str) -> int:
    ascii_n = sum(1 for ch in text if ord(ch) < 128)
    return math.ceil(ascii_n / 3.5) + 2 * (len(text) - ascii_n)


def prompt_tokens(messages: tuple[Message, ...]) -> int:
    return sum(estimate(m.content) + PER_MESSAGE for m in messages)


def _cut_middle(text: str, excess_tokens: int) -> str:
    # Remove a bit more than the excess (estimates are per character class) and keep both ends.
    per_char = max(estimate(text) / max(len(text), 1), 1e-6)
    drop = min(len(text) - 2, math.ceil(excess_tokens / per_char * 1.1) + len(MARK))
    if drop <= 0:
        return text
    keep = len(text) - drop
    head = keep * 2 // 3
    tail = keep - head
    return text[:head] + MARK + (text[len(text) - tail:] if tail else "")


def fit(item: Item, context: int, max_tokens: int) -> Item:
    """The item, or a truncated copy whose prompt fits `context - max_tokens` estimated tokens."""
    budget = context - max_tokens
    msgs = list(item.messages)
    if prompt_tokens(tuple(msgs)) <= budget or budget <= PER_MESSAGE * 2:
        return item
    dropped = 0
    first = 1 if msgs and msgs[0].role == "system" else 0
    while prompt_tokens(tuple(msgs)) > budget and len(msgs) - first > 1:
        del msgs[first]
        dropped += 1
        # Keep the history starting on a user turn (some templates require it).
        if len(msgs) - first > 1 and msgs[first].role == "assistant":
            del msgs[first]
            dropped += 1
    cut = 0
    for _ in range(4):
        excess = prompt_tokens(tuple(msgs)) - budget
        if excess <= 0:
            break
        i = max(range(len(msgs)), key=lambda k: len(msgs[k].content))
        before = len(msgs[i].content)
        msgs[i] = Message(role=msgs[i].role, content=_cut_middle(msgs[i].content, excess))
        cut += before - len(msgs[i].content)
    meta = dict(item.metadata)
    meta["truncated"] = {"dropped_turns": dropped, "cut_chars": cut}
    return msgspec.structs.replace(item, messages=tuple(msgs), metadata=meta)
