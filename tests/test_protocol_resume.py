"""A changed protocol never pays twice silently: run.json records each subtask's protocol (prompts,
constrained output of target and judge, generation values), and a resume under another one is
refused with one line naming what changed, before anything in the directory is touched."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.conftest import FakeServerProcess, fake_model, run_cli, write_config


def files(root: Path) -> dict[str, bytes]:
    # .lock names the process that last held the directory (a refused run held it too).
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_a_flipped_constrained_flag_is_refused_on_resume(tmp_path: Path, fake_server: FakeServerProcess) -> None:
    out = tmp_path / "out"

    def config(name: str, sections: str) -> Path:
        return write_config(tmp_path / name, {"m": fake_model(fake_server)}, run={"output": str(out), "limit": 1},
                            extra='\n[judge]\nmodels = ["m"]\n' + sections)

    args = ("--pillars", "crisis", "--no-progress")
    free = config("free.toml", "")
    assert run_cli("run", free, *args).rc == 0
    recorded = orjson.loads((out / "run.json").read_bytes())["fingerprint"]["protocol"]
    assert recorded["crisis/identification"] == {}  # own prompts, free text: defaults are omitted
    assert recorded["crisis/escalation"]["judge_constrained"] is True
    assert run_cli("run", free, *args).rc == 0  # the same protocol resumes
    scores = orjson.loads((out / "scores.json").read_bytes())["subtasks"]
    assert scores["crisis/identification"]["constrained"] is False
    assert "judge_constrained" not in scores["crisis/identification"]  # not judged
    assert scores["crisis/escalation"]["judge_constrained"] is True
    assert "constrained" not in scores["crisis/escalation"] and "judge_hardened" not in scores["crisis/escalation"]
    report = (out / "report.md").read_text()
    assert "constrained: no" in report and "judge constrained: yes" in report
    before = files(out)

    flips = {'[pillars."crisis/identification"]\nconstrained = true\n': "crisis/identification: constrained false -> true",
             '[pillars."crisis/escalation"]\njudge_constrained = false\n':
             "crisis/escalation: judge_constrained true -> false"}
    for i, (section, said) in enumerate(flips.items()):
        res = run_cli("run", config(f"flip{i}.toml", "\n" + section), *args)
        assert res.rc == 2, res.stderr
        lines = res.err_lines()
        assert len(lines) == 1 and said in lines[0] and "--fresh" in lines[0], lines
        assert files(out) == before

    flipped = config("flip.toml", "\n" + next(iter(flips)))
    assert run_cli("run", flipped, *args, "--fresh").rc == 0
    body = orjson.loads((out / "run.json").read_bytes())["fingerprint"]["protocol"]["crisis/identification"]
    assert body == {"constrained": True}


def test_a_run_judged_before_nonce_delimiters_resumes_only_when_stated(tmp_path: Path,
                                                                        fake_server: FakeServerProcess) -> None:
    """A run.json whose protocol has no judge_hardened (written before nonce delimiters) was judged
    with the fixed delimiters: resuming it under today's default is refused naming the change, and
    `judge_hardened = false` resumes it, sending nothing, its scores marked unhardened."""
    out = tmp_path / "out"

    def config(name: str, sections: str) -> Path:
        return write_config(tmp_path / name, {"m": fake_model(fake_server)}, run={"output": str(out), "limit": 1},
                            extra='\n[judge]\nmodels = ["m"]\n' + sections)

    args = ("--pillars", "crisis", "--no-progress")
    plain = config("plain.toml", "")
    assert run_cli("run", plain, *args).rc == 0
    doc = orjson.loads((out / "run.json").read_bytes())
    assert doc["fingerprint"]["protocol"]["crisis/escalation"]["judge_hardened"] is True
    del doc["fingerprint"]["protocol"]["crisis/escalation"]["judge_hardened"]
    (out / "run.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    before = files(out)
    res = run_cli("run", plain, *args)
    assert res.rc == 2 and "crisis/escalation: judge_hardened false -> true" in res.stderr, res.stderr
    assert files(out) == before

    sent = fake_server.stats()["requests"]
    stated = config("stated.toml", '\n[pillars."crisis/escalation"]\njudge_hardened = false\n')
    res = run_cli("run", stated, *args)
    assert res.rc == 0, res.stderr
    assert fake_server.stats()["requests"] == sent
    assert orjson.loads((out / "scores.json").read_bytes())["subtasks"]["crisis/escalation"]["judge_hardened"] is False
