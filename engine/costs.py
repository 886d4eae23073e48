"""Prices, usage sums and the run budget.

Prices come from `[prices.<model>]` (USD per million input / output tokens). Reasoning tokens are
billed as output tokens, as OpenAI, Anthropic and Google bill them; they are already inside
`completion_tokens` in our usage records.
"""

from __future__ import annotations

import msgspec

from adapters import registry
from engine.config import Config, PriceConfig
from engine.core.records import Usage
from engine.core.rundoc import UNSET, UsageCost


def cost(price: PriceConfig | None, prompt_tokens: float, completion_tokens: float) -> float | None:
    if price is None:
        return None
    return (prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok) / 1e6


def lane_price(cfg: Config, model: str) -> PriceConfig | None:
    """What a request of `model` costs: its batch price when it runs as a batch lane (`batch =
    true`), else the listed one."""
    price = cfg.prices.get(model)
    m = cfg.models.get(model)
    if price is None or m is None or not m.batch:
        return price
    factor = registry.entry(m.adapter).caps.batch_price_factor or 1.0
    return PriceConfig(
        input_per_mtok=price.batch_input_per_mtok if price.batch_input_per_mtok is not None else price.input_per_mtok * factor,
        output_per_mtok=(price.batch_output_per_mtok if price.batch_output_per_mtok is not None
                         else price.output_per_mtok * factor))


class UsageSum(msgspec.Struct):
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0

    def add(self, usage: Usage) -> None:
        self.requests += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.reasoning_tokens += usage.reasoning_tokens or 0
        self.cached_tokens += usage.cached_tokens or 0

    def priced(self, price: PriceConfig | None, listed: PriceConfig | None = None) -> UsageCost:
        """Priced at `price`; with the `listed` price of a batch lane, also what batching saved."""
        c = cost(price, self.prompt_tokens, self.completion_tokens)
        full = cost(listed, self.prompt_tokens, self.completion_tokens) if listed is not price else None
        return UsageCost(requests=self.requests, prompt_tokens=self.prompt_tokens,
                         completion_tokens=self.completion_tokens, reasoning_tokens=self.reasoning_tokens,
                         cached_tokens=self.cached_tokens, cost_usd=round(c, 6) if c is not None else None,
                         batch_saved_usd=round(full - c, 6) if full is not None and c is not None else UNSET)


class UsageTable(msgspec.Struct):
    """model -> role ("target" | "judge") -> pillar -> UsageSum."""

    rows: dict[str, dict[str, dict[str, UsageSum]]] = msgspec.field(default_factory=dict)

    def add(self, model: str, role: str, pillar: str, usage: Usage) -> None:
        self.rows.setdefault(model, {}).setdefault(role, {}).setdefault(pillar, UsageSum()).add(usage)

    def usage(self, cfg: Config) -> dict[str, dict[str, object]]:
        """scores.json `usage`: per model, each role's pillars and the model's total, priced."""
        out: dict[str, dict[str, object]] = {}
        for model, roles in self.rows.items():
            price = lane_price(cfg, model)
            entry: dict[str, object] = {}
            total = UsageSum()
            for role, pillars in roles.items():
                entry[role] = {p: s.priced(price) for p, s in pillars.items()}
                for s in pillars.values():
                    total.requests += s.requests
                    total.prompt_tokens += s.prompt_tokens
                    total.completion_tokens += s.completion_tokens
                    total.reasoning_tokens += s.reasoning_tokens
                    total.cached_tokens += s.cached_tokens
            entry["total"] = total.priced(price, cfg.prices.get(model))
            out[model] = entry
        return out


class Budget:
    """`--budget USD`: dispatch stops cleanly when the next request could take the spend past the
    budget. A request reserves its worst case (prompt estimate + max_tokens at the model's price)
    before it is sent; the reservation is settled with the usage the response reports."""

    def __init__(self, limit_usd: float, spent_before: float = 0.0) -> None:
        self.limit = limit_usd
        self.spent = spent_before
        self.reserved = 0.0
        self.exhausted = False
        self.message: str | None = None

    def reserve(self, amount: float, what: str) -> bool:
        if self.spent + self.reserved + amount > self.limit + 1e-12:
            if not self.exhausted:
                self.exhausted = True
                self.message = (f"budget of ${self.limit:.4f} reached: ${self.spent:.4f} spent, "
                                f"${self.reserved:.4f} in flight, next request ({what}) could cost ${amount:.4f}; "
                                "rerun with a larger --budget to continue (completed work is kept)")
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, actual: float | None) -> None:
        self.reserved -= reserved
        self.spent += reserved if actual is None else actual
