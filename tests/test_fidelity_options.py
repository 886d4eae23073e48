"""Per-subtask protocol defaults and config validation (engine/options.py): strip before parsing,
the ethics tie rule, misspelt names answered with a "did you mean"; and pillar ranks that never
reward a missing answer (engine/scoring.py)."""

from __future__ import annotations

import pytest

from engine.config import parse_config
from engine.core.errors import ConfigError
from engine.core.prompts import PromptSet, Template
from engine.core.records import Response
from engine.core.rundoc import UNSET
from engine.core.subtask import Rubric
from engine.options import check_all, resolve
from engine.run.judge import judge_params
from engine.scoring import competition_ranks, pillar_ranks
from pillars import registry
from pillars.ethics import ethical_reasoning as er


def test_replies_are_stripped_before_parsing() -> None:
    sub = resolve("privacy/leakage", None)[0]
    item = next(i for i in registry.load_items(sub, None) if i.metadata["qtype"] == "control")
    assert sub.score(item, Response(text=" No", finish_reason="stop"), None).label == "no"
    raw = resolve("privacy/leakage", {"strip": False})[0]
    assert raw.score(item, Response(text=" No", finish_reason="stop"), None).label == "unmapped"
    aw = resolve("privacy/awareness", None)[0]
    t2 = next(i for i in registry.load_items(aw, None) if i.metadata["tier"] != "1")
    assert aw.score(t2, Response(text="minus fifty\n", finish_reason="stop"), None).value == -50.0


def test_ethics_breaks_ties_by_the_judge_mean_by_default() -> None:
    assert resolve("ethics/ethical_reasoning", None)[1].tie_break == "judge_mean"
    assert resolve("reliability/knowledge", None)[1].tie_break is None
    values = {"a": 0.5, "b": 0.5, "c": 0.4}
    assert competition_ranks(values, "higher", {"a": 3.0, "b": 4.0, "c": 5.0}) == {"a": 2, "b": 1, "c": 3}
    # with no judge, ties stay ties
    assert competition_ranks(values, "higher", {"a": None, "b": None, "c": None}) == {"a": 1, "b": 1, "c": 3}


@pytest.mark.parametrize("section, hint", [
    ({"ethics/ethical_reasoning": {"unreadabel": "wrong"}}, "did you mean 'unreadable'?"),
    ({"ethics/ethical_reasonin": {}}, "did you mean 'ethics/ethical_reasoning'?"),
    ({"privacy/leakage": {"tie_brake": "judge_mean"}}, "did you mean 'tie_break'?"),
])
def test_misspelt_option_names_suggest_the_known_one(section: dict[str, dict[str, object]], hint: str) -> None:
    with pytest.raises(ConfigError, match=hint):
        check_all(section)


def test_unknown_rubric_name_is_an_error() -> None:
    check_all({}, ["psyleak_proxy", "ethics_apa_principles"])
    with pytest.raises(ConfigError, match="did you mean 'psyleak_proxy'"):
        check_all({}, ["psyleak-proxy"])


def test_pillar_rank_never_rewards_a_missing_answer() -> None:
    # b has no scored item on s2 and s3 (all unparseable): worst rank there, not left out.
    ranks = {"s1": {"a": 2, "b": 1, "c": 3}, "s2": {"a": 1, "b": None, "c": 2}, "s3": {"a": 1, "b": None, "c": 2}}
    scored = {"s1": {"a": 5, "b": 5, "c": 5}, "s2": {"a": 5, "b": 0, "c": 5}, "s3": {"a": 5, "b": 0, "c": 5}}
    p = pillar_ranks(ranks, ["a", "b", "c"], 3, None, scored)
    assert p.mean_subtask_rank == {"a": pytest.approx(4 / 3), "b": pytest.approx(7 / 3), "c": pytest.approx(7 / 3)}
    assert p.ranks == {"a": 1, "b": 2, "c": 2} and p.partial is UNSET
    # a value undefined although items were scored (every answer refused) leaves the subtask out
    scored["s2"]["b"] = 5
    assert pillar_ranks(ranks, ["a", "b", "c"], 3, None, scored).mean_subtask_rank["b"] == pytest.approx(2.0)


def test_pillar_missing_a_subtask_for_every_model_is_partial() -> None:
    ranks = {"s1": {"a": 1, "b": 2}, "s2": {"a": None, "b": None}}
    p = pillar_ranks(ranks, ["a", "b"], 5, {"a": {"scored": 3, "planned": 4}, "b": {"scored": 0, "planned": 4}})
    assert p.partial == "1 of 5 subtasks" and p.ranks == {"a": 1, "b": 2}
    assert p.coverage == {"a": {"scored": 3, "planned": 4}, "b": {"scored": 0, "planned": 4}}


def test_misspelt_pillar_and_subtask_keys_suggest_the_known_one() -> None:
    with pytest.raises(ConfigError, match="did you mean 'anti_sycophancy'"):
        registry.select(["anti-sycophancy"])
    with pytest.raises(ConfigError, match="did you mean 'privacy/leakage'"):
        registry.get("privacy/leakge")


def test_constrained_output_is_a_per_subtask_choice() -> None:
    # Targets: free text by default (no source used a schema); constrained = true sends the schema.
    for key in ("reliability/emotion_recognition", "reliability/diagnosis", "crisis/identification",
                "crisis/severity", "robustness/diagnosis"):
        assert resolve(key, None)[0].params.json_schema is None
        assert resolve(key, {"constrained": False})[0].params.json_schema is None
        assert resolve(key, {"constrained": True})[0].params.json_schema is not None
    assert resolve("reliability/knowledge", {"constrained": True})[0].params.json_schema is None  # has none
    # Judges: on for own rubrics, off for the authors' free-text templates, switchable per subtask.
    cfg = parse_config({"models": {"j": {"adapter": "openai", "base_url": "http://h/v1"}},
                        "judge": {"models": ["j"]}}, "c.toml")
    own = resolve("crisis/escalation", None)[0].rubric
    assert own is not None and judge_params(cfg, cfg.models["j"], own).json_schema is not None
    off = resolve("crisis/escalation", {"judge_constrained": False})[0].rubric
    assert off is not None and judge_params(cfg, cfg.models["j"], off).json_schema is None
    assert not ethics_official_rubric().constrained
    assert judge_params(cfg, cfg.models["j"], ethics_official_rubric()).json_schema is None


def ethics_official_rubric() -> Rubric:
    t = Template(er.JUDGE_TEMPLATE, "{scenario}{options}{reasoning_task}{expected_reasoning}{model_behavior}{model_reply}",
                 ("{scenario}", "{options}", "{reasoning_task}", "{expected_reasoning}", "{model_behavior}",
                  "{model_reply}"))
    target = Template(er.TARGET_TEMPLATE, "{scenario}{options}{reasoning_task}",
                      ("{scenario}", "{options}", "{reasoning_task}"))
    prompts = PromptSet(folder="-", templates={t.file: t, target.file: target})
    sub = registry.bind_prompts(registry.get("ethics/ethical_reasoning"), None)
    assert sub.with_prompts is not None
    rubric = sub.with_prompts(sub, prompts).rubric
    assert rubric is not None
    return rubric
