"""Completion records: how a rerun of the same command knows that a lane has nothing left to do
without walking its items (run.json `completion.<model>`, engine/core/rundoc.py `Completion`).

A target lane that ends with every unit it walks in its checkpoint (state complete, nothing out of
retries, nothing left unsent) is recorded with: the plan fingerprint (everything its units, their
bodies and keys are a function of: the resolved config, the spec, the items file's or data dir's
bytes, the prompt protocol, the bytes of the engine's own code and the package versions), the
counts a rerun reports, and the identity of its checkpoint file (device, inode, size, mtime, ctime).
A rerun that computes the same fingerprint and finds the same file skips that lane's item count,
resume scan and walk, and reports those counts: what a full walk that skips every unit reports.
Anything else takes the full path, which is always right: a line appended to or cut from the
checkpoint, an edited item, a changed config key or code file, `--retry-errors` with fatal records
in the file, or a kill between the last record and run.json (a run that starts drops every record).

Recorded only in the plain case: no shard, the local backend, no judge in the run, no response
cache, no batch lane, and an adapter of this package that builds bodies from the items (a replay
adapter's notes come from the walk; a plugin's code is not in the fingerprint).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path

import msgspec
import orjson

from engine.config import Config
from engine.core.adapter import Adapter, ReplaysItems
from engine.core.rundoc import Completion, RunDoc, RunSpec, SubtaskProtocol, UnsetType
from engine.run.lane import Lane
from engine.run.options import Early, Invocation, RunOptions
from engine.runstate import CODE_ROOTS, code_digest, config_doc, content_digest, file_id, packages, tree_digest
from engine.spec import judge_plan, protocols, subtasks
from engine.store.checkpoint import JsonlWriter
from engine.store.rundoc_io import read_run_if_any

FORMAT = 1  # part of every fingerprint: a change to what a record means invalidates the old ones


def _digest(obj: object) -> str:
    return hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS),
                           digest_size=16).hexdigest()


def run_unsupported(cfg: Config, spec: RunSpec, opts: RunOptions) -> str | None:
    """Why no lane of this invocation is recorded or shortcut (None: lanes may be)."""
    if opts.shard is not None:
        return "a shard"
    if opts.backend != "local":
        return "another backend"
    if opts.judge_only:
        return "judge only"
    if cfg.run.cache:
        return "a response cache"
    if cfg.run.adapter_modules:
        # Their code is not in the fingerprint, and one may change how a built-in adapter builds bodies.
        return "plugin adapter modules"
    if judge_plan(cfg, subtasks(spec)):
        return "judges in the run"
    return None


def lane_unsupported(cfg: Config, name: str, adapter: Adapter) -> str | None:
    if cfg.models[name].batch:
        return "a batch lane"
    if isinstance(adapter, ReplaysItems):
        return "a replay adapter"
    module = sys.modules.get(type(adapter).__module__)
    source = module.__file__ if module is not None else None
    if source is None or not any(Path(source).resolve().is_relative_to(root) for root in CODE_ROOTS):
        return "a plugin adapter"
    return None


def plan_fingerprint(cfg: Config, spec: RunSpec, protocol: Mapping[str, SubtaskProtocol]) -> str:
    """Everything a run's units, bodies and keys are a function of, but for each model's own config
    (`lane_fingerprint`): a different value here is a different plan."""
    config = {k: v for k, v in config_doc(cfg).items() if k != "models"}
    return _digest({
        "format": FORMAT, "code": code_digest(), "packages": packages(),
        "items": content_digest(Path(spec.items)) if spec.items else None,
        "data_dir": tree_digest(Path(spec.data_dir)) if spec.data_dir else None,  # items, official prompts
        # where it is too: the data fingerprint a resume checks names the folder (runstate.data_fingerprint),
        # so the same bytes elsewhere (a re-pointed link, another working directory) are refused there
        "data_dir_at": str(Path(spec.data_dir).resolve()) if spec.data_dir else None,
        "spec": {k: v for k, v in msgspec.to_builtins(spec).items() if k not in ("output", "models")},
        "protocol": msgspec.to_builtins(dict(protocol)), "config": config})


def lane_fingerprint(plan: str, cfg: Config, name: str) -> str:
    models = config_doc(cfg).get("models")
    model = models.get(name) if isinstance(models, Mapping) else None
    return _digest({"plan": plan, "model": name, "config": model})


def early(cfg: Config, spec: RunSpec, opts: RunOptions) -> Early | None:
    """None where no lane can be recorded, or on anything unusual: the full path then says what is
    wrong, in its own order."""
    try:
        if run_unsupported(cfg, spec, opts) is not None:
            return None
        ident = file_id(Path(spec.items)) if spec.items else None
        plan = plan_fingerprint(cfg, spec, protocols(spec))
        prev = read_run_if_any(Path(spec.output))
    except Exception:  # any problem here is the full path's to report, in its own order
        return None
    same = next((c for c in recorded(prev).values() if c.plan == plan), None)
    if same is None:
        return Early(plan, ident)
    return Early(plan, ident, dict(same.planned), same.data)


def recorded(prev: RunDoc | None) -> dict[str, Completion]:
    if prev is None or isinstance(prev.completion, UnsetType):
        return {}
    return dict(prev.completion)


def usable(inv: Invocation, prev: RunDoc | None, name: str, adapter: Adapter, checkpoint: Path) -> Completion | None:
    """The lane's completion record when it still holds: same plan and model config, the same
    checkpoint file, and no fatal record that --retry-errors would send again."""
    c = recorded(prev).get(name)
    plan = inv.early.plan if inv.early is not None else None
    if c is None or plan is None or c.plan != plan:
        return None
    if lane_unsupported(inv.cfg, name, adapter) is not None or c.fingerprint != lane_fingerprint(plan, inv.cfg, name):
        return None
    if inv.opts.retry_errors and c.fatal:
        return None
    ident = file_id(checkpoint)
    return c if ident is not None and ident == c.checkpoint else None


def completions(inv: Invocation, lanes: list[Lane], skipped: Mapping[str, Completion],
                prior_fatal: Mapping[str, int]) -> dict[str, Completion]:
    """The records of this invocation's target lanes that ended with nothing left to do for a rerun.
    Called once the writers are closed (the files are as a rerun will find them). `skipped`: the
    lanes that took the shortcut this time; `prior_fatal`: fatal records in each checkpoint when
    the run started."""
    e = inv.early
    if e is None or (inv.spec.items is not None and file_id(Path(inv.spec.items)) != e.items):
        return {}  # the items file changed since it was hashed: this run's plan is not known
    out: dict[str, Completion] = {}
    for lane in lanes:
        s, writer = lane.stats, lane.io.responses
        if not isinstance(writer, JsonlWriter) or writer.error is not None:
            continue
        # Every unit of the walk is skipped or written: requeried extra samples are written but
        # are not units of the walk.
        walked = s.skipped + s.done - s.requeried
        if s.state != "complete" or s.exhausted or walked != s.planned:
            continue
        if lane_unsupported(inv.cfg, lane.name, lane.adapter) is not None:
            continue
        ident = file_id(writer.path)
        if ident is None:
            continue
        before = skipped.get(lane.name)
        records = (before.records if before is not None else len(lane.policy.done)) + writer.written
        out[lane.name] = Completion(
            plan=e.plan, fingerprint=lane_fingerprint(e.plan, inv.cfg, lane.name), planned=dict(inv.planned_units),
            data=inv.data_fp,
            units=s.planned, truncated=s.truncated, records=records,
            fatal=prior_fatal.get(lane.name, 0) + writer.error_lines, checkpoint=ident)
    return out
