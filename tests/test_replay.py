"""Replay adapter: a recorded run is re-scored without any model, and unknown ids are listed."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import fake_model, read_jsonl, run_cli, write_config


def test_replay_rescoring_matches_original(tmp_path: Path, fake_server) -> None:
    out = tmp_path / "orig"
    judge = '\n[judge]\nmodels = ["fake"]\n'
    cfg = write_config(tmp_path / "o.toml", {"fake": fake_model(fake_server)}, run={"output": str(out)}, extra=judge)
    assert run_cli("run", cfg, "--pillars", "crisis,ethics", "--limit", "4").rc == 0
    orig = json.loads((out / "scores.json").read_text())

    # Short-form replay lines for the target (judgments come from the same live judge).
    recs = read_jsonl(out / "responses" / "fake.jsonl")
    replay = tmp_path / "replay.jsonl"
    with open(replay, "w") as f:
        for r in recs[:-1]:  # drop one: it must be listed, not guessed
            f.write(json.dumps({"pillar": r["pillar"], "subtask": r["subtask"], "item_id": r["item_id"],
                                "sample": r["sample"], "text": r["response"]["text"], "extra": 1}) + "\n")
        f.write(json.dumps({"pillar": "crisis", "subtask": "severity", "item_id": "no-such-item", "text": "x"}) + "\n")
    out2 = tmp_path / "replayed"
    cfg2 = write_config(tmp_path / "r.toml", {"rec": {"adapter": "replay", "path": str(replay)},
                                              "fake": fake_model(fake_server)},
                        run={"output": str(out2)}, extra=judge)
    res = run_cli("run", cfg2, "--models", "rec", "--pillars", "crisis,ethics", "--limit", "4")
    assert res.rc == 0, res.stderr
    assert "1 items have no recorded answer" in res.stderr
    assert "match no item" in res.stderr and "no-such-item" in res.stderr
    scores = json.loads((out2 / "scores.json").read_text())
    dropped = recs[-1]
    for key, sub in orig["subtasks"].items():
        o, r = sub["models"]["fake"], scores["subtasks"][key]["models"]["rec"]
        if key == f"{dropped['pillar']}/{dropped['subtask']}":
            assert r["n"] == o["n"] - 1
        else:
            assert (r["value"], r["n"], r["n_unparseable"]) == (o["value"], o["n"], o["n_unparseable"]), key
    assert run_cli("verify", out2).rc == 0
