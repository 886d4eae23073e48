"""The context-fitting rule: oldest turns first, then the middle of the longest message."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.records import Item, Message
from engine.truncate import MARK, fit, prompt_tokens


def _item(*msgs: tuple[str, str]) -> Item:
    return Item(id="x", pillar="p", subtask="s", messages=tuple(Message(role=r, content=c) for r, c in msgs))


def test_short_prompt_untouched() -> None:
    it = _item(("user", "hello"))
    assert fit(it, 2048, 64) is it


def test_drops_oldest_turns_first_keeping_system_and_last() -> None:
    turns = [("system", "You are a counsellor.")]
    for i in range(40):
        turns += [("user", f"client turn {i} " + "word " * 40), ("assistant", f"reply {i} " + "ok " * 40)]
    turns.append(("user", "the current question"))
    out = fit(_item(*turns), 1024, 128)
    assert prompt_tokens(out.messages) <= 1024 - 128
    assert out.messages[0].content == "You are a counsellor."
    assert out.messages[-1].content == "the current question"
    assert out.messages[1].role == "user"
    assert out.metadata["truncated"]["dropped_turns"] > 0
    # What is kept is the most recent history, in order.
    kept = [m.content for m in out.messages[1:-1]]
    assert kept == [c for r, c in turns[1:-1]][-len(kept):]


def test_cuts_middle_of_a_single_long_message() -> None:
    text = "START " + "x" * 20000 + " END?"
    out = fit(_item(("user", text)), 2048, 256)
    content = out.messages[0].content
    assert content.startswith("START") and content.endswith("END?") and MARK in content
    assert prompt_tokens(out.messages) <= 2048 - 256
    assert out.metadata["truncated"]["cut_chars"] > 0


def test_chinese_counts_conservatively() -> None:
    out = fit(_item(("user", "我很难过。" * 2000)), 2048, 128)
    assert prompt_tokens(out.messages) <= 2048 - 128


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant"]), st.text(max_size=3000)), min_size=1, max_size=12),
       st.integers(min_value=256, max_value=4096))
def test_property_always_fits_and_keeps_last_message_start(msgs, context) -> None:
    it = _item(*msgs)
    out = fit(it, context, 64)
    assert prompt_tokens(out.messages) <= context - 64 or out is it
    assert out.messages[-1].role == it.messages[-1].role
