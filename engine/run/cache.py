"""A lane's view of the response cache (engine/store/response_cache.py): the lane asks it before a
unit's attempts (a hit needs no request, so it spends no RPM, TPM or budget) and hands it every
final successful response after. Hits and misses count on the lane's stats (run.json
`lanes.<model>.cache_hits` / `cache_misses`)."""

from __future__ import annotations

import orjson

from adapters import registry
from engine.core.config import ModelConfig
from engine.run.stats import LaneStats
from engine.run.units import Outcome, Unit
from engine.store.response_cache import ResponseCache, cache_key

__all__ = ["LaneCache", "cache_scope"]


def cache_scope(name: str, cfg: ModelConfig) -> bytes:
    """What besides the body and sample decides a response: the adapter, its endpoint, the model id
    (`model`, which is the models key only when `model` is unset, as in the requests) and the
    options its registry entry says shape requests (a local model's weights file, vLLM's dtype)."""
    shaping = registry.entry(cfg.adapter).shaping_values(cfg)
    return orjson.dumps([cfg.adapter, cfg.base_url or "", cfg.model or name, shaping], option=orjson.OPT_SORT_KEYS)


class LaneCache:
    def __init__(self, store: ResponseCache, name: str, cfg: ModelConfig, stats: LaneStats) -> None:
        self.store = store
        self.scope = cache_scope(name, cfg)
        self.label = f"{cfg.adapter}:{cfg.model or name}"
        self.stats = stats
        stats.cache_used = True

    async def lookup(self, unit: Unit) -> Outcome | None:
        """The unit's cached outcome (attempts = 0: no request was made for it), or None."""
        response = await self.store.get(cache_key(self.scope, unit.body, unit.sample))
        if response is None:
            self.stats.cache_misses += 1
            return None
        self.stats.cache_hits += 1
        return Outcome(attempts=0, response=response)

    def keep(self, unit: Unit, outcome: Outcome) -> None:
        """Stores a final successful response; an error is never cached (the next run retries it)."""
        if outcome.response is not None and outcome.error is None:
            self.store.put(cache_key(self.scope, unit.body, unit.sample), self.label, outcome.response)
