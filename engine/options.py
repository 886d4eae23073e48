"""Per-subtask options from `[pillars."<pillar>/<subtask>"]`.

Engine-level keys apply to every subtask: `unparseable` ("exclude", the default: counted, shown and
left out of the metric; or "zero": scored as a wrong answer / lowest value, which reproduces
upstream rules such as PROTOCOL.md §3.7), `tie_break` (e.g. "judge_mean": equal metric values are
ranked by the subtask's judge mean; a subtask may declare its own default, ethics does, which
reproduces the paper's order; with no judge, ties stay ties), and generation overrides
(`max_tokens`, `temperature`, `top_p`), `limit` (base items of this subtask, overriding
run.limit), `requery` (how many extra samples an unparseable answer gets, for subtasks whose
protocol re-asks: privacy/awareness defaults to 10, its authors asked until the answer parsed) and
`strip` (true by default: every reply is stripped of surrounding whitespace before it is parsed
and scored, as the authors' generate() returned it; judges still see the reply as sent),
`constrained` (false by default: the target is asked in free text; true sends the JSON schema the
five classification subtasks offer, which no source of the paper used) and `judge_constrained` (the rubric's verdict with or
without a JSON schema; official templates whose authors read free text default to without) and
`judge_hardened` (the judged reply between nonce delimiters, engine.core.fence: on for own-worded
rubrics, off for the authors' templates, which go as they sent them unless it is set true; false
on an own-worded rubric sends the fixed delimiters that runs made before nonces sent). Every
other key goes to the subtask module's `make_subtask(**options)`; a key it does not take is an
error naming the keys it does take.

With a data dir, a subtask that has the authors' templates there is rebuilt with them
(`Subtask.prompts == "official"`), see pillars.registry.bind_prompts.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import msgspec

from engine.core.config import did_you_mean, number_problem
from engine.core.errors import ConfigError
from engine.core.records import Item, Response
from engine.core.subtask import ItemScore, Judgment, Scorer, Subtask
from pillars import registry


class EngineOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    unparseable: str = "exclude"
    limit: int | None = None  # base items for this subtask (overrides run.limit / --limit)
    requery: int | None = None  # extra samples for an unparseable answer (None = the subtask's own rule)
    tie_break: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    strip: bool = True
    constrained: bool = False  # true: the target's answer is decoded with the subtask's JSON schema
    judge_constrained: bool | None = None  # its rubric's verdict: on/off (None: the rubric's own)
    # The judged reply fenced with nonce delimiters (None: the rubric's own: own wording yes, the
    # authors' templates no); false on own wording sends the fixed delimiters of runs made before.
    judge_hardened: bool | None = None


ENGINE_KEYS = frozenset(EngineOptions.__struct_fields__)


# A [pillars."<key>"] section as a hashable key for the cache: sorted (key, frozen value) pairs.
Frozen = tuple[tuple[str, object], ...]


def _freeze_section(section: Mapping[str, object]) -> Frozen:
    return tuple(sorted(((k, _freeze(x)) for k, x in section.items()), key=lambda kv: kv[0]))


def _freeze(v: object) -> object:
    if isinstance(v, dict):
        return _freeze_section(v)
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def _thaw(v: object) -> object:
    if isinstance(v, tuple) and v and all(isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) for x in v):
        return {k: _thaw(x) for k, x in v}
    if isinstance(v, tuple):
        return [_thaw(x) for x in v]
    return v


def resolve(key: str, options: Mapping[str, object] | None,
            data_dir: Path | None = None) -> tuple[Subtask, EngineOptions]:
    """The subtask with its section's options applied and, with a data dir, its official prompts
    bound where that dir has them."""
    return _resolve(key, _freeze_section(options or {}), str(data_dir) if data_dir else None)


@lru_cache(maxsize=256)
def _resolve(key: str, frozen: Frozen, data_dir: str | None = None) -> tuple[Subtask, EngineOptions]:
    options = {k: _thaw(x) for k, x in frozen}
    base = registry.get(key)
    eng_raw = {k: v for k, v in options.items() if k in ENGINE_KEYS}
    rest = {k: v for k, v in options.items() if k not in ENGINE_KEYS}
    try:
        eng = msgspec.convert(eng_raw, EngineOptions)
    except msgspec.ValidationError as exc:
        raise ConfigError(f'[pillars."{key}"]: {exc}') from None
    if eng.unparseable not in ("exclude", "zero"):
        raise ConfigError(f'[pillars."{key}"].unparseable: expected "exclude" or "zero", got "{eng.unparseable}"')
    sub = _made(key, base, rest) if rest else base
    if data_dir is not None:  # first: binding rebuilds the subtask, the overrides below go on top
        sub = registry.bind_prompts(sub, Path(data_dir))
    gen = {f: getattr(eng, f) for f in ("max_tokens", "temperature", "top_p") if getattr(eng, f) is not None}
    if gen:
        sub = msgspec.structs.replace(sub, params=msgspec.structs.replace(sub.params, **gen))
    if not eng.constrained and sub.params.json_schema is not None:  # opt-in: no source of the paper used one
        sub = msgspec.structs.replace(sub, params=msgspec.structs.replace(sub.params, json_schema=None))
    if eng.judge_constrained is not None and sub.rubric is not None:
        sub = msgspec.structs.replace(sub, rubric=msgspec.structs.replace(sub.rubric, constrained=eng.judge_constrained))
    if eng.judge_hardened is not None and sub.rubric is not None:
        sub = msgspec.structs.replace(sub, rubric=msgspec.structs.replace(sub.rubric, hardened=eng.judge_hardened))
    if eng.strip:
        sub = msgspec.structs.replace(sub, score=_stripping(sub.score))
    # A subtask's own tie rule (ethics: the judge mean, the paper's order) unless the section sets one.
    own_tb = sub.extra.get("tie_break_value")
    if "tie_break" not in eng_raw and isinstance(own_tb, str):
        eng = msgspec.structs.replace(eng, tie_break=own_tb)
    return sub, eng


def _stripping(score: Scorer) -> Scorer:
    def stripped(item: Item, response: Response | None, judgment: Judgment | None) -> ItemScore:
        if response is not None and response.text != response.text.strip():
            response = msgspec.structs.replace(response, text=response.text.strip())
        return score(item, response, judgment)

    return stripped


def _made(key: str, base: Subtask, rest: dict[str, object]) -> Subtask:
    """The subtask its module's make_subtask builds with the section's own keys."""
    make = base.make
    if make is None:
        raise ConfigError(f'[pillars."{key}"]: this subtask takes no options of its own '
                          f"(unknown: {', '.join(sorted(rest))}{_did_you_mean(sorted(rest), ENGINE_KEYS)}; "
                          f"engine keys: {', '.join(sorted(ENGINE_KEYS))})")
    params = inspect.signature(make).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = sorted(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)
    unknown = sorted(k for k in rest if k not in params) if not takes_any else []
    if unknown:
        raise ConfigError(f'[pillars."{key}"]: unknown option(s) {", ".join(unknown)}'
                          f"{_did_you_mean(unknown, [*allowed, *ENGINE_KEYS])} "
                          f"(allowed: {', '.join(allowed + sorted(ENGINE_KEYS))})")
    try:
        return make(**rest)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f'[pillars."{key}"]: {exc}') from None


def _did_you_mean(unknown: list[str], known: Iterable[str]) -> str:
    """ "; did you mean X?" for the first unknown name that is close to a known one, else ""."""
    return next((hint for name in unknown if (hint := did_you_mean(name, known))), "")


def _number_problems(key: str, eng: EngineOptions) -> list[str]:
    checks = {"limit": number_problem(eng.limit), "requery": number_problem(eng.requery),
              "max_tokens": number_problem(eng.max_tokens, minimum=1),
              "temperature": number_problem(eng.temperature),
              "top_p": number_problem(eng.top_p, strict=True) or (
                  f"must be in (0, 1], got {eng.top_p}" if eng.top_p is not None and eng.top_p > 1 else None)}
    return [f'[pillars."{key}"].{k}: {what}' for k, what in checks.items() if what]


def check_all(pillars_options: Mapping[str, Mapping[str, object]],
              rubrics: Iterable[str] = ()) -> None:
    """Validates every [pillars.*] section and the [judge] rubrics names up front (config errors
    before any work), all at once: one ConfigError, one line per problem; a misspelt name says
    which known one it resembles."""
    raise_all(problems(pillars_options, rubrics))


def raise_all(found: list[str]) -> None:
    if found:
        raise ConfigError.of(found)


def problems(pillars_options: Mapping[str, Mapping[str, object]], rubrics: Iterable[str] = ()) -> list[str]:
    """check_all's findings, one line each (engine/config.py prefixes them with the file)."""
    if not pillars_options and not rubrics:
        return []  # nothing to check: the pillar packages stay unloaded (a run of custom items)
    valid = {s.key for s in registry.all_subtasks()}
    out: list[str] = []
    for key, opts in pillars_options.items():
        if key not in valid:
            out.append(f'[pillars."{key}"]: no such subtask{_did_you_mean([key], valid)} '
                       f'(valid: {", ".join(sorted(valid))})')
            continue
        try:
            out += _number_problems(key, resolve(key, opts)[1])
        except ConfigError as exc:
            out += exc.problems
    known = {s.rubric.name for s in registry.all_subtasks() if s.rubric is not None}
    for name in rubrics:
        if name not in known:
            out.append(f"[judge] rubrics.{name}: no such rubric{_did_you_mean([name], known)} "
                       f"(known: {', '.join(sorted(known))})")
    return out
