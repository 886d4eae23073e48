"""The commands of `python -m engine` (engine/cli/__init__.py parses): with the parser, the only place
that prints, and the only event loops (`_event_loop`, the data fetch's `asyncio.run`).

What only some commands need and costs start-up time (the report's view and formatting, the data fetch's
aiohttp, verify, merge, plan) is imported inside those commands.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Coroutine
from pathlib import Path
from typing import Protocol, TypeVar, cast

import msgspec

from engine import spec as runspec
from engine.command_config import resolve
from engine.config import Config, batched, load_config
from engine.core.config import did_you_mean
from engine.core.errors import ConfigError, DataError, EngineError
from engine.core.prompts import PROMPTS_DIR
from engine.core.rundoc import RunSpec, ScoresDoc, UnsetType
from engine.core.secrets import redact
from engine.datasets.manifest import Manifest, file_status, load_manifest, resolve_dest, resolve_mirror, select_datasets
from engine.datasets.prompts import load_manifest as load_prompts_manifest
from engine.datasets.prompts import template_status
from engine.options import check_all
from engine.run import runner
from engine.scoring import score_run, write_scores
from engine.shards import discover, parse_shard
from engine.store.response_cache import cache_stats, open_db, prune
from engine.store.rundoc_io import load_run, read_run
from engine.tokens import load_tokenizer
from pillars import registry

T = TypeVar("T")


def _err(msg: str) -> None:
    for line in msg.split("\n"):  # several config problems at once: one line each
        print(redact(f"error: {line}"), file=sys.stderr)


def _log(msg: str) -> None:
    print(redact(msg), file=sys.stderr, flush=True)


def _out(line: str) -> None:
    """A result line on stdout (verify's and merge's findings may quote error messages)."""
    print(redact(line))


def _spec(args: argparse.Namespace) -> tuple[Config, RunSpec, str]:
    """Config + the run spec the command line asks for (shared by run and plan)."""
    cfg, source, models = resolve(args.config, args.named_models)
    if args.items and args.pillars:
        raise EngineError("--pillars and --items exclude each other: --items replaces the pillar items")
    if args.models:
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
        unknown = [m for m in models if m not in cfg.models]
        if unknown:
            raise EngineError(f"--models: {', '.join(unknown)} not in the config (known: {', '.join(cfg.models)})"
                              f"{did_you_mean(unknown[0], cfg.models)}")
    if not models:
        raise EngineError(f"{source}: no [models.<name>] sections; add at least one model (or --model ADAPTER:MODEL)")
    # The config's limit sizes the pillar subtasks; a custom items file runs every line unless
    # --limit says otherwise (the default config's limit = 3 once cut a user's file silently).
    limit = args.limit if args.limit is not None else 0 if args.items else cfg.run.limit
    if limit < 0:
        raise EngineError("--limit must be >= 0")
    items = None
    if args.items:
        items = str(Path(args.items))
        if not Path(items).is_file():
            raise EngineError(f"--items {items}: no such file; pass a JSONL file with one item per line")
    data_dir = args.data_dir or cfg.data.dir
    if data_dir and not Path(data_dir).is_dir():
        raise EngineError(f"--data-dir {data_dir}: not a directory; pass the folder laid out like shared/trustmh")
    subtasks: tuple[str, ...] = ()
    skipped: dict[str, str] = {}
    if items is None:
        pillars = tuple(p.strip() for p in args.pillars.split(",")) if args.pillars else cfg.run.pillars
        subtasks = runspec.resolve_subtasks(pillars)
        if data_dir:
            subtasks, skipped = runspec.available_subtasks(subtasks, Path(data_dir), cfg.pillars)
            for key, why in skipped.items():
                _log(f"skipping {key}: {why}")
            if not subtasks:
                raise EngineError(f"--data-dir {data_dir}: none of the selected subtasks has its data there; "
                                  "run `python -m engine data fetch` or drop --data-dir for the built-in items")
    check_all(cfg.pillars, cfg.judge.rubrics)
    if args.output is not None and not args.output.strip():
        raise EngineError("--output is empty; pass the run's output directory (or leave it out for run.output)")
    spec = RunSpec(output=cfg.run.output if args.output is None else args.output, models=models, items=items, data_dir=data_dir,
                   subtasks=subtasks, limit=limit, samples=cfg.run.samples, options=cfg.pillars,
                   skipped=skipped)
    return cfg, spec, source


def cmd_plan(args: argparse.Namespace) -> int:
    from engine.plan import build_plan, render_plan  # lazy: only `plan` needs it

    cfg, spec, _ = _spec(args)
    if args.batch:
        cfg = batched(cfg)
    out = Path(spec.output)
    plan = build_plan(cfg, spec, out if (out / "responses").is_dir() else None)
    for line in render_plan(cfg, plan, verbose=args.verbose):
        _out(line)
    return 0


def _event_loop(coro: Coroutine[object, object, T]) -> T:
    """The one event loop of a command: uvloop's where it is installed (Linux, macOS), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a core dependency on Linux/macOS
        return asyncio.run(coro)
    return uvloop.run(coro)


def cmd_run(args: argparse.Namespace) -> int:
    cfg, spec, source = _spec(args)
    items = spec.items
    progress = args.progress if args.progress is not None else (
        cfg.run.progress if cfg.run.progress is not None else sys.stderr.isatty())
    if args.budget is not None and not 0 <= args.budget < math.inf:
        raise EngineError(f"--budget must be a finite number >= 0 (US dollars), got {args.budget}")
    if not 0 <= args.status_every < math.inf:
        raise EngineError("--status-every must be >= 0 (seconds; 0 = no status lines)")
    shard = None
    if args.shard is not None:
        shard = parse_shard(args.shard)
    ray_address = args.ray_address or os.environ.get("RAY_ADDRESS") or None
    if args.backend != "ray" and args.ray_address:
        raise EngineError("--ray-address needs --backend ray")
    if args.ray_connect_timeout < 3:  # the GCS client's three waits take whole seconds, 1 at least
        raise EngineError(f"--ray-connect-timeout must be at least 3 (seconds), got {args.ray_connect_timeout}")
    if args.cache:
        cfg = msgspec.structs.replace(cfg, run=msgspec.structs.replace(cfg.run, cache=args.cache))
    if args.batch:
        cfg = batched(cfg)
    if cfg.run.cache:  # an unusable folder is refused before the output directory is touched
        open_db(Path(cfg.run.cache)).close()
    opts = runner.RunOptions(fresh=args.fresh, retry_errors=args.retry_errors, allow_failures=args.allow_failures,
                             progress=progress,
                             config_source=source, budget_usd=args.budget, shard=shard, backend=args.backend,
                             ray_address=ray_address, ray_connect_s=args.ray_connect_timeout,
                             status_every=args.status_every)
    end = _event_loop(runner.run(cfg, spec, opts, log=_log))
    out = Path(spec.output)
    if shard is not None:
        _log(f"shard {shard}: when all {shard.count} shards have finished, run `python -m engine merge {out}`")
    elif end.code in (0, 1, 3):
        if items is None:
            _finish_scores(out)
        else:  # custom items have no metric: the report's prompt x model table is the result
            _write_reports(out)
    _log(f"results: {out.resolve()}")
    _log(end.line)
    return end.code


def _finish_scores(out: Path, seed: int = 0) -> None:
    scores = score_run(out, seed)
    path = write_scores(out, scores)
    for line in _rank_table(scores):
        _log(line)
    _log(f"scores: {path.resolve()} ({len(scores.subtasks)} subtasks; each subtask's values are in the report)")
    _write_reports(out)


def _rank_table(scores: ScoresDoc) -> list[str]:
    """The console summary: one row per model, its rank in each pillar (1 = best; `-` where it has
    none); a partial pillar (some subtasks without a value) is marked `*`. Subtask values go to the
    report, where there is room for them."""
    pillars = list(scores.pillars)
    if not pillars:
        return []
    width = max(len(m) for m in scores.models)
    head = " ".join(f"{p + ('*' if not isinstance(scores.pillars[p].partial, UnsetType) else ''):>{max(len(p) + 1, 4)}}"
                    for p in pillars)
    lines = ["pillar ranks (1 = best; * = some subtasks without a value):", f"  {'model':<{width}} {head}"]
    for m in scores.models:
        cells = " ".join(f"{_rank(scores.pillars[p].ranks.get(m)):>{max(len(p) + 1, 4)}}" for p in pillars)
        lines.append(f"  {m:<{width}} {cells}")
    return lines


def _rank(r: int | None) -> str:
    return "-" if r is None else str(r)


def _merged_first(out: Path) -> None:
    """score/report read the normal layout: shard files must be merged first."""
    if discover(out):
        raise EngineError(f"{out} holds shard files that are not merged yet; run `python -m engine merge {out}` first")


def cmd_score(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    _merged_first(out)
    if read_run(out).spec.items is not None:
        raise EngineError(f"{out} is a custom --items run: custom items have no metric to score; "
                          f"`python -m engine report {out}` shows every prompt and response")
    _finish_scores(out, args.seed)
    return 0


def cmd_judge(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    doc, cfg = load_run(out)
    if args.judge:
        if args.judge not in cfg.models:
            raise EngineError(f"--judge {args.judge}: not a models key of this run (known: {', '.join(cfg.models)})")
        cfg = msgspec.structs.replace(cfg, judge=msgspec.structs.replace(cfg.judge, models=(args.judge,), rubrics={}))
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    opts = runner.RunOptions(progress=progress, config_source=doc.config_source, judge_only=True)
    end = _event_loop(runner.run(cfg, doc.spec, opts, log=_log))
    if end.code in (0, 1):
        _finish_scores(out)
    _log(end.line)
    return end.code


def cmd_list(args: argparse.Namespace) -> int:
    print(f"{'pillar/subtask':38} {'kind':15} {'judged':7} {'built-in':9} official data")
    for sub in registry.all_subtasks():
        n = sum(1 for _ in registry.load_items(sub, None)) if sub.kind != "derived" else 0
        official = f"{sub.official.dataset}/" if sub.official else "-"
        if sub.kind == "derived":
            official = f"(scores {sub.source})"
        print(f"{sub.key:38} {sub.kind:15} {'yes' if sub.rubric else 'no':7} {n:<9} {official}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from engine.verify import verify  # lazy: only `verify` needs it

    report = verify(Path(args.dir))
    for line in report.lines:
        _out(line)
    return 0 if report.clean else 1


def cmd_merge(args: argparse.Namespace) -> int:
    from engine.merge import merge  # lazy: only `merge` needs it

    out = Path(args.dir)
    res = merge(out, log=_log)
    for line in res.lines:
        _out(line)
    if res.merged:
        if read_run(out).spec.items is None:
            _finish_scores(out)
    return res.code


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    print(f"{args.config}: ok ({len(cfg.models)} models: {', '.join(cfg.models)})")
    return 0


def _write_reports(out: Path) -> None:
    """report.md + report.html next to scores.json; a failed report never fails the run."""
    from engine import report  # lazy for start-up time: only a finished run, score and merge write one

    try:
        paths = report.write_reports(out)
    except Exception as exc:
        _err(f"report: {type(exc).__name__}: {exc}; retry with `python -m engine report {out}`")
        return
    _log(f"report: {', '.join(str(p.resolve()) for p in paths)}")


def cmd_report(args: argparse.Namespace) -> int:
    from engine import report  # lazy for start-up time: only score, report and a finished run write one

    out = Path(args.dir)
    _merged_first(out)
    if args.drill < 0:
        raise EngineError("--drill must be >= 0")
    if args.output is not None and not args.output.strip():
        raise EngineError("--output is empty; pass the file to write (with --format), or leave it out")
    if args.format is None and args.output:
        raise EngineError("--output needs --format (without it, report.md and report.html go into DIR)")
    if args.watch is not None and (args.watch <= 0 or not math.isfinite(args.watch)):
        raise EngineError(f"--watch {args.watch}: give the seconds between rewrites, a number > 0")
    if args.watch is not None and args.format is not None and not args.output:
        raise EngineError("--watch with --format needs --output FILE (it rewrites files; stdout cannot be rewritten)")
    if args.figures is not None:
        figures = _folder_arg("--figures", args.figures, "the folder to write the figures into (new or existing)")
        try:  # refused before anything is written: the extra is missing
            import matplotlib  # noqa: F401  # a third-party module: the `figures` extra
        except ImportError:
            raise EngineError(report.FIGURES_MISSING) from None

    def write(final: bool) -> None:
        """One rewrite; the paths are printed once, by the last."""
        if args.format is None:
            paths = report.write_reports(out, per_subtask=args.drill)
            view = None
        else:
            view, secrets = report.report_for(out, per_subtask=args.drill)
            pieces = report.render_chunks(view, args.format, secrets)  # JSON: never one string
            if not args.output:
                sys.stdout.writelines(pieces)
                return
            report.write_text(Path(args.output), pieces)
            paths = [Path(args.output)]
        if args.figures is not None:
            figs, skipped = report.write_figures(view or report.report_for(out, per_subtask=args.drill)[0], figures)
            paths += figs
            for line in skipped:
                _log(f"figures: {line}")
        if final:
            for path in paths:
                print(path)

    if args.watch is None:
        write(final=True)
        return 0
    while True:  # Ctrl-C: KeyboardInterrupt, exit 130 (dispatch); every file is replaced whole
        live = report.is_live(out)
        write(final=not live)
        if not live:
            _log(f"report: the run in {out} is not running; final report written")
            return 0
        _log(f"report: rewritten at {time.strftime('%H:%M:%S')}; next in {args.watch:g} s (Ctrl-C to stop)")
        time.sleep(args.watch)


def _folder_arg(flag: str, text: str, what: str) -> Path:
    """A folder the command will write into, checked before anything is written: not empty, and
    neither it nor a folder above it a file."""
    if not text.strip():
        raise EngineError(f"{flag} is empty; pass {what}")
    path = Path(text)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            where = "" if p == path else f": its parent {p}"
            raise EngineError(f"{flag} {path}{where} is a file, not a folder; pass {what}")
    return path


def _file_arg(flag: str, text: str, what: str) -> Path:
    """A file the command will write, checked before anything is computed: not empty, not a folder,
    in a folder that exists."""
    if not text.strip():
        raise EngineError(f"{flag} is empty; pass {what}")
    path = Path(text)
    if path.is_dir():
        raise EngineError(f"{flag} {path} is a folder; pass {what}")
    if not path.parent.is_dir():
        raise EngineError(f"{flag} {path}: the folder {path.parent} does not exist; create it or pass {what}")
    return path


def cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0, or 1 with one line per regression past a --fail-on-regression threshold."""
    from engine import compare_render as cr  # lazy for start-up time, as report: it loads the report's modules

    thresholds = [cr.compare.parse_threshold(t) for t in args.fail_on_regression or ()]
    html = None if args.html is None else _file_arg("--html", args.html, "the HTML file to write, e.g. compare.html")
    dirs = [Path(d) for d in args.runs]
    for d in dirs:
        if d.is_dir():
            _merged_first(d)
    doc = cr.compare.compare_runs(dirs, seed=args.seed, views=html is not None)
    for line in doc.incomplete:  # said first: such a run's values cover only what it did
        _log(f"compare: {line}")
    secrets = cr.secrets_of(dirs)
    if html is not None:
        html.write_text(cr.redact(cr.render_html(doc, secrets), secrets, shapes=False), encoding="utf-8")
    text = cr.render_json(doc) if args.format == "json" else cr.render_markdown(doc)
    sys.stdout.write(cr.redact(text, secrets, shapes=False))
    found = cr.compare.regressions(doc, thresholds)
    for line in found:
        _log(line)
    return 1 if found else 0


# -- data fetch | list ---------------------------------------------------------------------------


def cmd_data(args: argparse.Namespace) -> int:
    """`python -m engine data fetch | list`."""
    manifest = load_manifest(args.manifest)
    cfg = resolve(args.config).cfg.data if args.config else None
    dest = resolve_dest(args.to, cfg.cache if cfg else None)
    if args.data_command == "list":
        return _data_list(manifest, dest, _split(args.only))
    return _data_fetch(args, manifest, dest, cfg.mirror if cfg else None)


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


class _Counter(Protocol):
    def update(self, n: int) -> object: ...
    def close(self) -> None: ...


class _ByteBar:
    """The fetch's progress: a tqdm byte counter on stderr when enabled (log lines then go through
    tqdm.write so they do not break the bar), else log lines only."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._bar: _Counter | None = None  # a tqdm, imported only when a bar is shown

    def start(self, total: int) -> None:
        if self._enabled and total > 0:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="data",
                             file=sys.stderr, dynamic_ncols=True, leave=False)

    def update(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.update(n)

    def log(self, msg: str) -> None:
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(redact(msg), file=sys.stderr)  # as _log: one redact for stderr
        else:
            _log(msg)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def _until_signal(work: Coroutine[object, object, T]) -> tuple[T | None, int]:
    """Runs `work` until it ends or SIGINT/SIGTERM arrives: (result, 0) or (None, signum). The
    handlers are the loop's own, so a fetch started with SIGINT ignored (a background job of a
    script) still stops on it, and SIGTERM cleans up the same way (no `.part` file left)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    got: list[int] = []

    def stop(signum: int) -> None:
        got.append(signum)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, sig)
    try:
        return await task, 0
    except asyncio.CancelledError:
        if not got:
            raise
        return None, got[0]
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _data_fetch(args: argparse.Namespace, manifest: Manifest, dest: Path, config_mirror: str | None) -> int:
    # Lazy for start-up time: the fetch loads aiohttp, which `data list` and the other commands do not need.
    from engine.datasets import fetch as fetching

    mirror = resolve_mirror(args.mirror, config_mirror)
    if args.jobs < 1 or args.retries < 0 or not 0 < args.timeout < math.inf:
        raise ConfigError("data fetch: --jobs must be >= 1, --retries >= 0 and --timeout > 0")
    opts = fetching.FetchOptions(only=_split(args.only), mirror=mirror, force=args.force, jobs=args.jobs,
                        timeout=args.timeout, retries=args.retries)
    bar = _ByteBar(args.progress if args.progress is not None else sys.stderr.isatty())
    _log(f"data: fetching into {dest} from {f'mirror {mirror}' if mirror else 'upstream URLs'}")
    report, signum = asyncio.run(_until_signal(fetching.fetch(manifest, dest, opts, bar)))
    if report is None:
        _log(f"data fetch: stopped by {signal.Signals(signum).name}; no partial file was kept "
             "(verified files stay); rerun to continue")
        return 128 + signum
    n_ok = len(report.fetched) + len(report.derived) + len(report.skipped)
    print(f"data: {len(report.fetched)} downloaded, {len(report.derived)} built, "
          f"{len(report.skipped)} already verified, {len(report.failed)} failed"
          + (f", {len(report.needs_mirror)} need a mirror" if report.needs_mirror else "")
          + f" ({n_ok} files verified in {dest.resolve()})")
    if report.failed:
        key, msg = report.failed[0]
        more = [k for k, _ in report.failed[1:]]
        if more:
            msg += f" (also failed: {', '.join(more[:5])}{' ...' if len(more) > 5 else ''})"
        raise DataError(msg)
    if report.needs_mirror:
        datasets = sorted({k.split('/', 1)[0] for k, _ in report.needs_mirror})
        reason = report.needs_mirror[0][1]
        raise DataError(f"{', '.join(datasets)}: no public source for the pinned bytes ({reason}); "
                        f"pass --mirror URL (or set [data] mirror / $TRUSTMH_DATA_MIRROR), or place the "
                        f"files under {dest.resolve()}/<dataset>/ by hand (`data list` shows the sha256 pins)")
    print(f"use: python -m engine run --data-dir {dest.resolve()}   (or [data] dir = \"{dest.resolve()}\")")
    return 0


def _fmt_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _data_list(manifest: Manifest, dest: Path, only: tuple[str, ...] | None) -> int:
    rest = tuple(n for n in only or () if n.strip() != PROMPTS_DIR)
    names = [] if only and not rest else select_datasets(manifest, rest or None, for_fetch=False)
    print(f"data dir: {dest.resolve()}" + ("" if dest.is_dir() else " (absent)"))
    if not only or len(rest) < len(only):
        pm = load_prompts_manifest()
        n_ok = sum(1 for t in pm.template if template_status(dest / PROMPTS_DIR, t) == "ok")
        print(f"\n{PROMPTS_DIR}: {len(pm.template)} prompt templates, {n_ok}/{len(pm.template)} verified"
              f" - the authors' code archives {', '.join(pm.archives)} (extracted with ast; see "
              "engine/prompts_manifest.toml)")
    for name in names:
        ds = manifest.datasets[name]
        if ds.unavailable:
            present = [e for e in ds.expected if (dest / name / e).is_file()]
            state = (f"present (not pinned): {', '.join(present)}" if present else "absent")
            print(f"\n{name}: NOT FETCHABLE - {ds.unavailable}")
            print(f"  {state}; expected {', '.join(ds.expected) or '-'} in {dest.resolve() / name}")
            continue
        statuses = [(f, file_status(dest, f)) for f in ds.files]
        n_ok = sum(1 for _, s in statuses if s == "ok")
        total = sum(f.size for f in ds.files)
        n = len(ds.files)
        print(f"\n{name}: {n} file{'s' if n != 1 else ''}, {_fmt_size(total)}, {n_ok}/{n} verified"
              f" - {ds.license}; {ds.source}")
        for f, status in statuses:
            print(f"  {status:8} {_fmt_size(f.size):>10}  {f.path}  <- {f.source_text()}")
    return 0


# -- cache stats | prune ------------------------------------------------------------------------------

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "k": 1 << 10, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
          "T": 1 << 40}


def _amount(flag: str, text: str, units: str) -> float:
    """'90d' / '500M' as seconds / bytes; units: the suffixes this flag takes."""
    num, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "")
    try:
        value = float(num) * _UNITS[unit]
    except ValueError:
        value = -1.0
    if value < 0:
        raise EngineError(f"{flag} {text}: expected a number with an optional unit ({', '.join(units)})")
    return value


def cmd_cache(args: argparse.Namespace) -> int:
    """`python -m engine cache stats | prune DIR`."""
    directory = Path(args.dir)
    if args.cache_command == "prune":
        if args.older_than is None and args.max_size is None:
            raise EngineError("cache prune: give --older-than AGE and/or --max-size SIZE")
        age = _amount("--older-than", args.older_than, "smhd") if args.older_than is not None else None
        size = int(_amount("--max-size", args.max_size, "kKMGT")) if args.max_size is not None else None
        n = prune(directory, older_than_s=age, max_bytes=size)
        print(f"{directory}: deleted {n} entries")
    st = cache_stats(directory)
    when = ("-" if st.oldest is None or st.newest is None else
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(st.oldest))} .. "
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(st.newest))}")
    print(f"{directory}: {st.entries} responses, {_fmt_size(st.value_bytes)} of responses, "
          f"{_fmt_size(st.file_bytes)} on disk; created {when}")
    for label, n in st.by_label.items():
        print(f"  {n:>8}  {label}")
    return 0


def _bench_problems(args: argparse.Namespace) -> list[str]:
    out = []
    if bool(args.base_url) == bool(args.config):
        out.append("bench: give either --base-url URL --model NAME (a running server) or --config FILE (its models)")
    if args.base_url and not args.model:
        out.append("--model: required with --base-url (the model id the server serves)")
    for flag, value, minimum in (("--num-prompts", args.num_prompts, 1), ("--warmup", args.warmup, 0),
                                 ("--input-len", args.input_len, 1), ("--output-len", args.output_len, 1),
                                 ("--max-concurrency", 1 if args.max_concurrency is None else args.max_concurrency, 1)):
        if value < minimum:
            out.append(f"{flag}: must be >= {minimum}, got {value}")
    for flag, x in (("--request-rate", _rate(args)), ("--burstiness", args.burstiness),
                    ("--timeout-s", args.timeout_s)):
        if not x > 0 or (flag != "--request-rate" and math.isinf(x)):
            out.append(f"{flag}: must be a positive number, got {x}")
    if args.items and args.pillars:
        out.append("bench: give --items or --pillars, not both")
    if args.sweep and not args.result_file:
        out.append("--sweep: needs --result-file PATH (each point writes <PATH stem>-<point><PATH suffix>, "
                   "and <PATH stem>.svg)")
    if args.sweep and args.result_file and Path(args.result_file).suffix.lower() == ".svg":
        out.append(f"--result-file {args.result_file}: a sweep writes its SVG to <PATH stem>.svg; "
                   "name the result file .json")
    knob = (args.sweep or "").partition("=")[0]
    if knob == "rate" and args.request_rate is not None:
        out.append(f"--sweep {args.sweep}: sets the request rate of each point, so --request-rate "
                   f"{args.request_rate:g} would be ignored; drop one of them")
    if knob == "concurrency" and args.max_concurrency is not None:
        out.append(f"--sweep {args.sweep}: sets the max concurrency of each point, so --max-concurrency "
                   f"{args.max_concurrency} would be ignored; drop one of them")
    if args.tokenizer and (args.items or args.pillars):
        out.append("--tokenizer: cuts synthetic prompts only; drop it with --items or --pillars")
    if args.result_file and (why := _check_writable(Path(args.result_file))):
        out.append(why)
    return out


def _rate(args: argparse.Namespace) -> float:
    """--request-rate, default inf (its default is None so that a --sweep of rates can tell it was given)."""
    return math.inf if args.request_rate is None else float(args.request_rate)


def _bench_path(base: Path, label: str | None, tag: str | None, suffix: str | None = None) -> Path:
    """Where a result goes: PATH itself for one model at one point; else PATH's stem, then -<model>
    (with several models), then -<point> (in a sweep), then PATH's suffix, in PATH's folder; `suffix`
    replaces PATH's (the sweep's .svg)."""
    if label is None and tag is None and suffix is None:
        return base
    parts = [base.stem] + ([label.replace("/", "_")] if label is not None else []) + ([tag] if tag is not None else [])
    return base.with_name("-".join(parts) + (base.suffix if suffix is None else suffix))


def _check_writable(path: Path) -> str | None:
    """Why a --result-file cannot be written (checked before the first request, so a long benchmark
    never ends in a failed write), or None. Creates nothing."""
    if path.is_dir():
        return f"--result-file {path}: is a directory; name a file"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"--result-file {path}: {parent} is not a directory; name a file in a folder"
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return f"--result-file {path}: not writable here (permission denied); name a file in a folder you can write"
    return None


def _write(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise EngineError(f"cannot write {path}: {exc.strerror}; pass a writable --result-file") from None


def cmd_bench(args: argparse.Namespace) -> int:
    # Lazy for start-up time: the load generator, statistics and the result writers cost every other
    # command ~10 ms of CPU at import (`engine run` included).
    from engine.bench import metrics, result, session, setup

    problems = _bench_problems(args)
    try:
        slo = metrics.parse_goodput(args.goodput or [])
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError.of(problems)
    n, warm = args.num_prompts, args.warmup
    concurrency = args.max_concurrency or n + warm
    targets = [setup.url_target(args.base_url, args.endpoint, args.model, args.api_key_env, concurrency)] if args.base_url \
        else setup.config_targets(args.config, _split(args.models), concurrency)
    points = session.parse_sweep(args.sweep, _rate(args), args.max_concurrency) if args.sweep \
        else [session.Point(_rate(args), args.max_concurrency)]
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    prompts = setup.item_prompts(Path(args.items), n + warm) if args.items else \
        setup.pillar_prompts(_split(args.pillars) or (), n + warm, args.seed) if args.pillars else \
        setup.synthetic_prompts(n + warm, args.input_len, args.seed, tokenizer)
    ignore_eos = {t.label: setup.sends_ignore_eos(t, args.ignore_eos) for t in targets}
    load = session.Load(num_prompts=n, burstiness=args.burstiness, seed=args.seed, timeout_s=args.timeout_s, slo=slo)
    base = Path(args.result_file) if args.result_file else None
    failed = 0

    async def measure(target: setup.Target) -> None:
        nonlocal failed
        reqs = setup.bodies(target, prompts, args.output_len, ignore_eos[target.label])
        model = target.label if len(targets) > 1 else None
        docs: list[dict[str, object]] = []

        def on_point(point: session.Point, doc: dict[str, object]) -> None:
            nonlocal failed
            _log(f"bench: {target.label}, {point.tag()}")
            for line in result.table(doc):
                _out(line)
            warning = result.bottleneck_warning(doc, point.rate, point.max_concurrency)
            if doc["completed"] == 0:  # nothing came back: say why, not how busy the client was
                errors = cast(list[str], doc["errors"])
                _log(f"bench: all {doc['failed']} requests failed; " + "; ".join(errors[:3])
                     + "; check that the server runs there (and the key), then rerun")
            elif warning:
                _log(warning)
            failed += int(doc["failed"])  # type: ignore[call-overload]  # an int summarize wrote
            if base is not None:
                path = _bench_path(base, model, point.tag() if args.sweep else None)
                _write(path, msgspec.json.encode(doc))
            docs.append(doc)

        await session.run_points(target, reqs[warm:], reqs[:warm], points, load, on_point)
        if base is not None and args.sweep:
            _write(_bench_path(base, model, None, ".svg"),
                   result.sweep_svg(docs, target.label).encode())

    async def measure_all() -> None:
        for target in targets:
            await measure(target)

    _event_loop(measure_all())
    return 1 if failed else 0


COMMANDS = {"plan": cmd_plan, "run": cmd_run, "verify": cmd_verify, "validate": cmd_validate, "score": cmd_score,
            "judge": cmd_judge, "list": cmd_list, "report": cmd_report, "merge": cmd_merge,
            "data": cmd_data, "cache": cmd_cache, "bench": cmd_bench, "compare": cmd_compare}


def dispatch(args: argparse.Namespace) -> int:
    """Runs the parsed command: its exit code; an EngineError is one line on stderr and its exit code."""
    try:
        return COMMANDS[args.command](args)
    except EngineError as exc:
        _err(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os._exit(1)
    except OSError as exc:  # a path the command was given cannot be read or written: one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        _err(f"{where}{exc.strerror or exc}; check the path and its permissions, then rerun")
        return 2
    except Exception:
        # Not one of ours: the traceback is what helps, but its text may quote a key.
        print(redact(traceback.format_exc()).rstrip(), file=sys.stderr)
        return 1
