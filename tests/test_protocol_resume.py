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
