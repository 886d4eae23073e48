"""Work units: one request of a lane (an item's sample, or a judge request), with its body and key.

`lane_units` is the pure sequence a lane walks; `verify` and `plan` walk the same sequence to know
what a complete run holds and what it will cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Iterator

import msgspec

from engine.config import ModelConfig
from engine.core.adapter import Adapter, ReplaysItems
from engine.core.records import ErrorInfo, GenParams, Item, Response, request_key
from engine.items import ItemFactory, WorkItem
from engine.tokens import ESTIMATE, TokenCounter, counter_for
from engine.truncate import fit


class JudgeTask(msgspec.Struct, frozen=True):
    """What a judge unit judges: one response under one rubric (try 1 = the retry after an
    unparseable judge output)."""

    response_key: str
    model: str  # the judged (target) model
    rubric: str
    rubric_version: str
    try_: int = 0
    judge: str = ""


class Unit(msgspec.Struct, frozen=True):
    item: Item
    sample: int
    body: dict[str, object]
    key: str
    est_tokens: int
    judge: JudgeTask | None = None
    max_out: int = 0  # completion budget of the request (for cost reservations)


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """A unit's final outcome: its response, or the error that is its result (a refusal is a
    response; a 400 an error); `attempts` it took."""

    attempts: int
    response: Response | None = None
    error: ErrorInfo | None = None


def model_params(cfg: ModelConfig) -> GenParams:
    return GenParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)


def merge_params(base: GenParams, override: GenParams | None) -> GenParams:
    """A subtask's protocol generation values override the model's (None fields keep the model's)."""
    if override is None:
        return base
    changes = {f: getattr(override, f) for f in override.__struct_fields__ if getattr(override, f) is not None}
    return msgspec.structs.replace(base, **changes)


def estimate_tokens(item: Item, params: GenParams, counter: TokenCounter = ESTIMATE) -> int:
    """Charge before the call: the prompt's tokens (engine/tokens.py: the model's tokenizer where
    one works offline, else ~4 characters a token and CJK characters more) plus the completion
    budget, the way OpenAI counts a request against TPM at admission."""
    messages = item.messages
    if len(messages) == 1:  # the same number as the list's sum (0 + x is x), without the list
        return math.ceil(counter.count(messages[0].content)) + (params.max_tokens or 0)
    return counter.tokens([m.content for m in messages]) + (params.max_tokens or 0)


def lane_units(name: str, cfg: ModelConfig, adapter: Adapter, items: ItemFactory, samples: int, *,
               done: Container[str] | None = None, skipped: Callable[[Item], None] | None = None) -> Iterator[Unit]:
    """Every work unit of a lane, in item order (pure given the item source); verify walks the
    same sequence to know what a complete run holds. With `done`, units whose key it holds are
    left out (each reported to `skipped`) before their token estimate is made: a resume of a
    million done units then costs a body and a key each, not a Unit."""
    base = model_params(cfg)
    body_for = adapter.body_for if isinstance(adapter, ReplaysItems) else None  # bodies name items, not prompts
    context = cfg.context_window()
    counter = counter_for(cfg, name)
    for w in items():
        params = base if w.params is None else merge_params(base, w.params)
        if context is not None and body_for is None:
            w = WorkItem(fit(w.item, context, params.max_tokens or 0), w.params)
        item = w.item
        if body_for is not None:
            bodies: Iterable[tuple[int, dict[str, object]]] = (
                (s, b) for s in range(samples) if (b := body_for(item, s)) is not None)
            out = 0  # a replayed body reserves no completion budget
        else:
            body = adapter.build_body(item.messages, params)
            bodies = ((0, body),) if samples == 1 else tuple((s, body) for s in range(samples))
            out = params.max_tokens or 0
        est = -1
        for s, body in bodies:
            key = request_key(name, item.pillar, item.subtask, item.id, s, body)
            if done is not None and key in done:
                if skipped is not None:
                    skipped(item)
                continue
            if est < 0:
                est = estimate_tokens(item, params, counter)
            yield Unit(item, s, body, key, est, max_out=out)
