"""Robustness / Emotional Support: supporter replies to perturbed seeker text (PROTOCOL.md §3.6).

Items are the reliability/emotional_support items (same rows, same turn selection, same ids)
rewritten by ``pillars.perturb`` at each (level, intensity), id ``<dialogue>#<turn>~<level>@<p>``
and group {"level", "intensity"}. Only the seeker's (user) messages are perturbed; the system
prompt and the supporter's (assistant) turns stay as they are.

Options (``make_subtask(**options)``):
- ``levels`` / ``intensities`` / ``seed``: default char, word, sent x 0.05, 0.1, 0.2, seed 0.
- ``perturb_turns`` [I]: "all" (default: every seeker message, as a noisy typist would write all
  of them) | "last" (only the message being answered). Each seeker message is keyed by
  (dialogue, message index), so a message reads the same in every item of one dialogue. At the
  sentence level the distractor goes only in front of the message being answered.
- the dialogue options of reliability/emotional_support (``turns``, ``system_prompt``, ...);
  keep them equal to that subtask's so the clean and perturbed ids pair up.

Scoring: ``SUPPORT_RUBRIC`` / ``score_support`` (mean of the three 1-5 ratings), exactly as clean.
Metric: relative drop from the clean scores (``pillars.robustness.common``), lower is better.
``metadata["base"]`` is the dialogue id, as for the clean items, so ``limit`` selects the same
dialogues in both subtasks; ``metadata["clean_id"]`` is the clean item id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import msgspec
from msgspec.structs import asdict, replace

from engine.core.records import GenParams, Item, Message
from engine.core.subtask import OfficialSource, Row, Subtask
from pillars.perturb import Variant, perturb
from pillars.reliability.emotional_support import (
    SUPPORT_RUBRIC,
    DialogueOptions,
    dialogue_items,
    load_esconv,
    score_support,
)
from pillars.robustness.common import RobustnessOptions, make_aggregate, variant_group

__all__ = ["perturb_messages", "robust_support_items", "make_subtask", "SUBTASK"]


def perturb_messages(
    messages: Sequence[Message],
    variant: Variant,
    *,
    seed: int,
    key: str,
    turns: str = "all",
) -> tuple[Message, ...]:
    """User messages perturbed (all or only the last); others returned unchanged."""
    user_idx = [i for i, m in enumerate(messages) if m.role == "user"]
    if not user_idx:
        return tuple(messages)
    targets = user_idx if turns == "all" else user_idx[-1:]
    out = list(messages)
    for i in targets:
        out[i] = Message(
            role="user",
            content=perturb(
                messages[i].content, variant.level, variant.intensity, seed=seed,
                key=f"{key}|{i}", distractor=(i == user_idx[-1]),
            ),
        )
    return tuple(out)


def robust_support_items(
    rows: Iterable[Row],
    dopts: DialogueOptions,
    ropts: RobustnessOptions,
    perturb_turns: str = "all",
) -> Iterator[Item]:
    for clean in dialogue_items(rows, dopts, pillar="robustness", subtask="emotional_support"):
        for v in ropts.variants:
            meta = dict(clean.metadata)
            meta.update(group=variant_group(v), clean_id=clean.id)
            yield replace(
                clean,
                id=f"{clean.id}~{v.name}",
                messages=perturb_messages(
                    clean.messages, v, seed=ropts.seed, key=str(clean.metadata["dialogue"]),
                    turns=perturb_turns,
                ),
                metadata=meta,
            )


def make_subtask(
    *,
    levels: Sequence[str] | None = None,
    intensities: Sequence[float] | None = None,
    seed: int = 0,
    perturb_turns: str = "all",
    **dialogue_options: object,
) -> Subtask:
    if perturb_turns not in ("all", "last"):
        raise ValueError(f"perturb_turns must be 'all' or 'last', got {perturb_turns!r}")
    ropts = RobustnessOptions.given(levels, intensities, seed)
    dopts = msgspec.convert(dialogue_options, DialogueOptions)
    return Subtask(
        make=make_subtask,
        pillar="robustness",
        id="emotional_support",
        version="1",
        kind="generation",
        headline="mean_relative_drop",
        direction="lower",
        items=lambda rows: robust_support_items(rows, dopts, ropts, perturb_turns),
        score=score_support,
        aggregate=make_aggregate(ropts.variants),
        official=OfficialSource(dataset="esconv", files=("esconv_test.jsonl",), load=load_esconv),
        rubric=SUPPORT_RUBRIC,
        params=GenParams(temperature=0.0, max_tokens=192),
        doc="Emotional-support replies to perturbed seeker text (char/word/sentence x "
        "intensity); headline = mean relative drop of the support score from clean.",
        clean_source="reliability/emotional_support",
        builtin_source="reliability/emotional_support",
        extra={
            "perturb_turns": perturb_turns,
            **ropts.as_extra(),
            **asdict(dopts),
        },
    )


SUBTASK = make_subtask()
