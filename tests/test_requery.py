"""Protocol re-query of unparseable privacy ratings: at most 10 extra samples (the default cap; the
authors asked until the answer parsed), first parse wins, re-asks counted in the breakdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.conftest import ThreadServer, read_jsonl, run_cli, write_config


def _middleware(counts: dict[str, int], parse_on: dict[str, int]) -> Any:
    """Answers privacy prompts with garbage until the item's n-th request, then a valid rating."""

    @web.middleware
    async def mw(request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.endswith("/chat/completions"):
            return await handler(request)
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        counts[prompt] = counts.get(prompt, 0) + 1
        n = next((v for k, v in parse_on.items() if k in prompt), 99)
        text = "Answer: 3) somewhat sensitive" if counts[prompt] >= n else "I would rather not say."
        return web.json_response({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

    return mw


def test_unparseable_ratings_are_requeried_at_most_ten_times(tmp_path: Path) -> None:
    counts: dict[str, int] = {}
    # Built-in awareness items come in file order; make item 0 parse on its 2nd ask and the
    # others never, whatever their text, by keying on the first item's prompt.
    from pillars import registry

    items = list(registry.load_items(registry.get("privacy/awareness"), None))[:3]
    first = items[0].messages[-1].content
    srv = ThreadServer(middleware=_middleware(counts, {first: 2}))
    try:
        out = tmp_path / "run"
        cfg = write_config(tmp_path / "c.toml", {"m": {"adapter": "openai", "base_url": srv.url, "model": "x"}},
                           run={"output": str(out), "limit": 3}, extra='\n[judge]\nmodels = ["m"]\n')
        res = run_cli("run", cfg, "--pillars", "privacy")
        assert res.rc == 0, res.stderr
    finally:
        srv.stop()
    recs = [r for r in read_jsonl(out / "responses" / "m.jsonl") if r["subtask"] == "awareness"]
    by_item: dict[str, list[int]] = {}
    for r in recs:
        by_item.setdefault(r["item_id"], []).append(r["sample"])
    assert sorted(by_item[items[0].id]) == [0, 1]  # parsed on the first re-query
    for it in items[1:]:
        assert sorted(by_item[it.id]) == list(range(11))  # 10 extra samples, then counted
    scores = json.loads((out / "scores.json").read_text())["subtasks"]["privacy/awareness"]["models"]["m"]
    assert scores["n"] == 3 and scores["n_unparseable"] == 2 and scores["n_scored"] == 1
    assert json.loads((out / "scores.json").read_text())["subtasks"]["privacy/awareness"]["prompts"] == "own"
    assert scores["breakdown"]["reasks"] == 1 + 10 + 10 and scores["breakdown"]["items_reasked"] == 3
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["lanes"]["m"]["requeried"] == 1 + 10 + 10
    assert run_cli("verify", out).rc == 0
