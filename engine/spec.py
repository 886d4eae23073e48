"""What a run covers, resolved from the config and the command line: the `RunSpec` stored in
run.json, the subtasks it selects (with those whose official data is missing skipped), the item
source it walks, the judges it needs, and the spec of a directory extended by several invocations.

`run`, `plan`, `verify`, `score`, `report` and `merge` all read the work from here, so they agree
on what a complete run holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

from engine.config import Config
from engine.core.errors import ConfigError, EngineError
from engine.core.prompts import PromptSet
from engine.core.rundoc import OLD_PROTOCOL, Options, RunSpec, SubtaskProtocol
from engine.core.subtask import Rubric, Subtask
from engine.items import ItemFactory, custom_source, pillar_source
from engine.options import resolve
from pillars import registry
from pillars.common.prompts import load_prompts


def resolve_subtasks(pillars: tuple[str, ...]) -> tuple[str, ...]:
    try:
        chosen = registry.select(list(pillars))
    except ConfigError as exc:
        raise ConfigError(f"run.pillars / --pillars: {exc}") from None
    keys: list[str] = []
    for s in chosen:
        # Robustness compares against the clean reliability items: generate them once, there.
        clean = s.clean_source
        if clean and clean not in keys:
            keys.append(clean)
        if s.key not in keys:
            keys.append(s.key)
    return tuple(keys)


def available_subtasks(keys: tuple[str, ...], data_dir: Path,
                       options: Options) -> tuple[tuple[str, ...], dict[str, str]]:
    """With official data, the subtasks whose files are there; the others are skipped with a
    reason (SWMH/D4 and the full ELEPHANT files cannot be shipped), so a run completes what it can."""
    keep: list[str] = []
    skipped: dict[str, str] = {}
    for key in keys:
        sub = resolve(key, options.get(key))[0]
        gen = sub.generates_from
        src = sub if gen == key else resolve(gen, options.get(gen))[0]
        off = src.official
        if off is None:
            skipped[key] = "no official dataset (built-in items only)"
            continue
        folder = data_dir / off.dataset
        missing = [f for f in off.files if not (folder / f).is_file()]
        if missing:
            skipped[key] = f"official data not found: {folder / missing[0]} (gated or not downloaded)"
            continue
        keep.append(key)
    # A subtask whose clean source is skipped cannot be compared: skip it too.
    for key in list(keep):
        sub = resolve(key, options.get(key))[0]
        clean = sub.clean_source
        if clean and clean not in keep:
            keep.remove(key)
            skipped[key] = f"needs {clean}, which is skipped"
    return tuple(keep), skipped


def item_factory(spec: RunSpec) -> ItemFactory:
    if spec.items is not None:
        return custom_source(Path(spec.items), spec.limit)
    return pillar_source(spec.subtasks, Path(spec.data_dir) if spec.data_dir else None, spec.limit, spec.options)


def subtasks(spec: RunSpec) -> list[Subtask]:
    """The spec's subtasks with their [pillars."<key>"] options applied and the official prompts of
    the data dir bound where it has them (none for a custom items file)."""
    if spec.items is not None:
        return []
    data_dir = Path(spec.data_dir) if spec.data_dir else None
    return [resolve(k, spec.options.get(k), data_dir)[0] for k in spec.subtasks]


def protocol_of(spec: RunSpec) -> dict[str, str]:
    """For each selected subtask that has the authors' templates: the prompts it sends, "official:
    <digest of the template bytes>" or "own" (the engine's wording; a change of that wording must
    change this tag). Part of the run's data fingerprint, so a run started under another protocol
    is refused on resume instead of silently regenerated; empty for runs of other subtasks, whose
    fingerprint stays what it was."""
    data_dir = Path(spec.data_dir) if spec.data_dir else None
    prompts = load_prompts(data_dir) if spec.items is None else None
    return {sub.key: _prompt_tag(sub, prompts) for sub in subtasks(spec) if sub.prompt_files}


def _prompt_tag(sub: Subtask, prompts: PromptSet | None) -> str:
    if sub.prompts == "official" and prompts is not None:
        h = hashlib.blake2b(digest_size=8)
        for f in sub.prompt_files:
            h.update(prompts[f].text.encode("utf-8") + b"\x1f")
        return f"official:{h.hexdigest()}"
    return "own"


def protocols(spec: RunSpec, *, legacy: bool = False) -> dict[str, SubtaskProtocol]:
    """Each selected subtask's protocol (run.json `fingerprint.protocol`). `legacy`: the protocol a
    run.json without that record was made under: every target JSON schema and every judge schema
    on, as the engine sent them before constrained output became opt-in."""
    if spec.items is not None:
        return {}
    data_dir = Path(spec.data_dir) if spec.data_dir else None
    prompts = load_prompts(data_dir)
    out: dict[str, SubtaskProtocol] = {}
    for key in spec.subtasks:
        section = dict(spec.options.get(key) or {})
        if legacy:
            section = {**OLD_PROTOCOL, **section}
        sub = resolve(key, section, data_dir)[0]
        p = sub.params
        out[key] = SubtaskProtocol(
            prompts=_prompt_tag(sub, prompts) if sub.prompt_files else "own",
            constrained=p.json_schema is not None,
            judge_constrained=sub.rubric.constrained if sub.rubric is not None else None,
            judge_hardened=sub.rubric.hardened if sub.rubric is not None else None,
            temperature=p.temperature, max_tokens=p.max_tokens, top_p=p.top_p)
    return out


def protocol_change(old: Mapping[str, SubtaskProtocol], new: Mapping[str, SubtaskProtocol]) -> str | None:
    """The first subtask whose protocol differs, and how ("crisis/severity: constrained true -> false").
    A judged subtask recorded before `judge_hardened` was judged with the fixed delimiters (false)."""
    for key, now in new.items():
        was = old.get(key)
        if was is not None and was.judge_constrained is not None and was.judge_hardened is None:
            was = msgspec.structs.replace(was, judge_hardened=False)
        if was is None or was == now:
            continue
        diffs = [f"{f} {_show(getattr(was, f))} -> {_show(getattr(now, f))}" for f in SubtaskProtocol.__struct_fields__
                 if getattr(was, f) != getattr(now, f)]
        return f"{key}: {', '.join(diffs)}"
    return None


def _show(v: object) -> str:
    return "unset" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def rubrics_by_source(subs: Iterable[Subtask]) -> dict[str, list[tuple[Subtask, Rubric]]]:
    """For each generating subtask, the rubrics its responses get: its own and those of the
    derived subtasks that score them (safety/antitoxic judges safety/jailbreak responses)."""
    out: dict[str, list[tuple[Subtask, Rubric]]] = {}
    for sub in subs:
        if sub.rubric is None:
            continue
        out.setdefault(sub.generates_from, []).append((sub, sub.rubric))
    return out


def judges_for(cfg: Config, rubric: Rubric) -> tuple[str, ...]:
    """A rubric's own judge (config `judge.rubrics` first, then the rubric's hint when it names a
    configured model), else every configured judge; the first is the ranked one."""
    own = cfg.judge.rubrics.get(rubric.name) or (rubric.judge if rubric.judge in cfg.models else None)
    return (own,) if own else cfg.judge.models


def judge_plan(cfg: Config, subs: list[Subtask]) -> tuple[str, ...]:
    """The judge models this run needs; a judged subtask with no judge configured is an error."""
    names: list[str] = []
    for pairs in rubrics_by_source(subs).values():
        for sub, rubric in pairs:
            judges = judges_for(cfg, rubric)
            if not judges:
                raise EngineError(f"{sub.key} is judged (rubric {rubric.name}) but no judge is configured; "
                                  "add [judge] models = [\"<models key>\"] to the config, or --judge ADAPTER:MODEL "
                                  "(e.g. --judge openai:gpt-4.1) to the command line")
            names.extend(judges)
    return tuple(dict.fromkeys(names))


def merged_spec(prev: RunSpec | None, spec: RunSpec) -> RunSpec:
    """A run extended by another invocation (more models, other pillars) covers both: verify,
    score and report then see everything the directory holds."""
    if prev is None:
        return spec
    models = tuple(dict.fromkeys([*prev.models, *spec.models]))
    keys = spec.subtasks
    if spec.items is None and prev.items is None:
        order = {s.key: i for i, s in enumerate(registry.all_subtasks())}
        keys = tuple(sorted(set(prev.subtasks) | set(spec.subtasks), key=lambda k: order.get(k, len(order))))
    skipped = {k: v for k, v in {**prev.skipped, **spec.skipped}.items() if k not in keys}
    return msgspec.structs.replace(spec, models=models, subtasks=keys, skipped=skipped)
