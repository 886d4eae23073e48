"""`python -m engine`: the command line. This module only parses, so that `--help` and a mistyped flag
answer at once; the commands (with the CLI's prints and its one event loop) are in engine/cli/commands.py,
imported when a command runs.
"""

from __future__ import annotations

import argparse
import gc
import sys

EPILOG = """most common commands:
  python -m engine run                          every subtask on the built-in items, embedded model (no key)
  python -m engine run CONFIG --output DIR      your models; rerun the same command to resume
  python -m engine verify DIR                   is DIR complete and duplicate-free? (exit 1 if not)

more: python -m engine COMMAND --help; README.md (configuration, exit codes); docs/bad-inputs.md"""


class _Version(argparse.Action):
    """--version: the installed package's version, looked up only when asked (start-up time)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the engine's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("trustmh-engine")
        except PackageNotFoundError:  # a source checkout that was never installed
            v = "unknown (not installed; see pyproject.toml)"
        parser._print_message(f"trustmh-engine {v}\n", sys.stdout)  # as argparse's own "version" action
        parser.exit()


class _NamedModel(argparse.Action):
    """--model / --judge ADAPTER:MODEL start an entry of `named_models`; each --model-arg joins the
    entry before it ([flag, spec, *model_args], in command-line order: engine/command_config.py)."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        named: list[list[str]] = list(ns.named_models or [])
        if option_string == "--model-arg":
            if not named:
                parser.error("--model-arg needs a --model (or --judge) before it: it sets a key of that model")
            named[-1] = [*named[-1], str(values)]
        else:
            named.append([str(option_string), str(values)])
        ns.named_models = named


def _selection_args(p: argparse.ArgumentParser) -> None:
    """What to run: shared by `run` and `plan`, so a plan is the plan of that run."""
    p.add_argument("config", nargs="?", help="run config TOML (default: the shipped default config, "
                   "or none when --model names the models)")
    p.add_argument("--output", help="output directory (default: run.output)")
    p.add_argument("--models", help="comma-separated models keys to run (default: all)")
    p.add_argument("--pillars", help="comma-separated pillar ids (default: run.pillars)")
    p.add_argument("--limit", type=int, help="base items per subtask (0 = all)")
    p.add_argument("--items", help="custom items JSONL (id + messages or prompt), sent through every model")
    p.add_argument("--data-dir", help="official data laid out like shared/trustmh (default: built-in items)")
    p.set_defaults(named_models=[])
    p.add_argument("--model", action=_NamedModel, metavar="ADAPTER:MODEL",
                   help="a model to run, e.g. openai:gpt-4o-mini, anthropic:claude-sonnet-4-5, vllm:Qwen/Qwen3-8B "
                        "(repeatable; added to the config's models; its models key is the name after the last '/')")
    p.add_argument("--model-arg", action=_NamedModel, metavar="KEY=VALUE",
                   help="a [models.*] key of the --model before it, value as in TOML (repeatable), e.g. "
                        "base_url=http://host:8000/v1, max_tokens=256; key=NAME sets its models key")
    p.add_argument("--judge", action=_NamedModel, metavar="ADAPTER:MODEL",
                   help="the run's judge, e.g. openai:gpt-4.1, or a models key (replaces [judge] models)")


BATCH_HELP = ("send every model whose adapter has a provider batch API (the judge's too) as batch jobs, at the "
              "batch price (README \"Batch lanes\"); same as `batch = true` on each")


def _report_args(rp: argparse.ArgumentParser) -> None:
    rp.add_argument("dir", help="a run's output directory")
    rp.add_argument("--format", choices=("md", "html", "json"), help="print this format (default: write both files)")
    rp.add_argument("--output", help="with --format: write to this file instead of stdout")
    rp.add_argument("--drill", type=int, default=5, help="drill-down items per subtask (0 = none)")
    rp.add_argument("--figures", metavar="FIGDIR", help="also write the pillar-rank heatmap and radars as SVG and PNG "
                    "for a paper into FIGDIR (needs the `figures` extra: matplotlib)")
    rp.add_argument("--watch", type=float, metavar="SECONDS", help="rewrite the report every SECONDS until the run "
                    "ends (then once more, exit 0) or Ctrl-C (exit 130)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine", description="TrustMH-Bench evaluation engine",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    r = sub.add_parser("run", help="generate (and resume) a run", allow_abbrev=False)
    _selection_args(r)
    r.add_argument("--fresh", action="store_true", help="start over: move earlier results aside")
    r.add_argument("--retry-errors", action="store_true", help="retry items whose final outcome was a fatal error")
    r.add_argument("--allow-failures", action="store_true", help="exit 0 although some items got no response")
    r.add_argument("--budget", type=float, metavar="USD",
                   help="stop dispatching before this invocation could spend more than USD (uses [prices])")
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: when stderr is a terminal; without bars, status lines)")
    r.add_argument("--status-every", type=float, default=30.0, metavar="S", help="without bars: a status line every S s (0 = none)")
    r.add_argument("--batch", action="store_true", help=BATCH_HELP)
    r.add_argument("--cache", metavar="DIR", help="response cache shared across runs: identical requests are "
                   "answered from DIR instead of being sent (default: [run] cache, else off)")
    r.add_argument("--shard", metavar="I/N",
                   help="run only shard I of N (1-based; e.g. a Slurm array task), in its own files; "
                        "combine with `merge DIR` when all N are done")
    r.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: every lane in this process (default); ray: each lane in a Ray actor")
    r.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster address for --backend ray (default: $RAY_ADDRESS, else a local Ray)")
    r.add_argument("--ray-connect-timeout", type=int, default=6, metavar="S",
                   help="--backend ray: seconds for a cluster at --ray-address to answer before the run "
                        "gives up in one line (default 6; at least 3)")

    v = sub.add_parser("verify", help="check a run directory is complete and duplicate-free")
    v.add_argument("dir", help="a run's output directory")

    mg = sub.add_parser("merge", help="combine the shard files of `run --shard I/N` into the normal layout")
    mg.add_argument("dir", help="the output directory the shards wrote into")

    c = sub.add_parser("validate", help="check a config file")
    c.add_argument("config", help="run config TOML: every problem is listed, one line each")

    sc = sub.add_parser("score", help="compute scores.json (metrics and ranks) for a run directory")
    sc.add_argument("dir", help="a run's output directory")
    sc.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals (default 0; same seed, same scores.json)")

    j = sub.add_parser("judge", help="(re-)judge an existing run without regenerating")
    j.add_argument("dir", help="a run's output directory (its responses are judged, none regenerated)")
    j.add_argument("--judge", help="models key of the judge (default: the run's [judge] models)")
    j.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars on stderr (default: when stderr is a terminal)")

    _report_args(sub.add_parser("report", help="write report.md and report.html for a run (or print one format)"))

    _data_parser(sub)

    pl = sub.add_parser("plan", help="requests, tokens, cost and best-case time of a run, before any call",
                        allow_abbrev=False)
    _selection_args(pl)
    pl.add_argument("--batch", action="store_true", help="as `run --batch`: priced and timed as batch lanes")
    pl.add_argument("--verbose", action="store_true", help="also one row per model, role and pillar")

    _cache_parser(sub)
    _bench_parser(sub)
    _compare_parser(sub)
    sub.add_parser("list", help="list pillars and subtasks")
    return p


def _data_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    da = sub.add_parser("data", help="fetch (sha256-checked) or list the official datasets")
    das = da.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    df = das.add_parser("fetch", help="download the official data into a folder laid out like shared/trustmh")
    dl = das.add_parser("list", help="datasets, files, sizes, sources, and what is present and verified")
    for x in (df, dl):
        x.add_argument("--to", metavar="DIR", help="data folder (default: [data] cache, else $TRUSTMH_CACHE/data, "
                       "else ~/.cache/trustmh-engine/data)")
        x.add_argument("--only", metavar="DATASET,...", help="comma-separated dataset folders, or official-prompts (default: all)")
        x.add_argument("--config", help="run config TOML whose [data] mirror / cache to use")
        x.add_argument("--manifest", help="data manifest TOML (default: engine/data_manifest.toml)")
    df.add_argument("--mirror", metavar="URL", help="fetch <URL>/<dataset>/<path> instead of upstream: http(s)://, "
                    "file:// or a local folder (default: [data] mirror, else $TRUSTMH_DATA_MIRROR)")
    df.add_argument("--force", action="store_true", help="re-download files that are already present and verified")
    df.add_argument("--jobs", type=int, default=4, help="parallel downloads (default 4)")
    df.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a try fails (default 60)")
    df.add_argument("--retries", type=int, default=2, help="retries of a network error, with backoff (default 2)")
    df.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="byte progress bar on stderr (default: when stderr is a terminal)")


def _cache_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ca = sub.add_parser("cache", help="what a response cache (run --cache DIR) holds, or prune it")
    cas = ca.add_subparsers(dest="cache_command", metavar="ACTION", required=True)
    cas.add_parser("stats", help="entries, size, age and models of a cache").add_argument(
        "dir", help="the cache folder (what run --cache / [run] cache named)")
    cp = cas.add_parser("prune", help="delete old entries, or the oldest until the cache fits a size")
    cp.add_argument("dir", help="the cache folder (runs using it meanwhile just see misses)")
    cp.add_argument("--older-than", metavar="AGE", help="delete entries older than AGE: 90d, 12h, 30m or seconds")
    cp.add_argument("--max-size", metavar="SIZE", help="then delete the oldest until responses take at most SIZE: "
                    "500M, 2G or bytes")


def _compare_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cm = sub.add_parser("compare", help="what changed between runs: metric deltas with paired intervals, ranks, "
                        "config, and every changed item", allow_abbrev=False)
    cm.add_argument("runs", nargs="+", metavar="RUN", help="run output directories; each after the first is compared "
                    "with the first")
    cm.add_argument("--format", choices=("md", "json"), default="md", help="what to print (default md)")
    cm.add_argument("--html", metavar="FILE", help="also write one offline HTML page with the changed items browsable")
    cm.add_argument("--fail-on-regression", action="append", metavar="METRIC=DELTA",
                    help="exit 1 when a subtask's value got worse by more than DELTA: METRIC is a subtask key, a "
                         "pillar or all, e.g. crisis/identification=0.02 (repeatable)")
    cm.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap intervals (default 0)")


def _bench_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("bench", help="load a model server with streamed requests: TTFT/TPOT/ITL/E2EL, throughput, "
                       "goodput (as vllm bench serve)", allow_abbrev=False)
    b.add_argument("--base-url", metavar="URL", help="server root, e.g. http://127.0.0.1:8000 (a URL ending in /v1 "
                   "is accepted too)")
    b.add_argument("--endpoint", default="/v1/chat/completions", help="path of the chat completions endpoint "
                   "(default /v1/chat/completions; replies are streamed)")
    b.add_argument("--model", metavar="NAME", help="model id to request (with --base-url)")
    b.add_argument("--config", help="run config TOML: bench its models instead of --base-url")
    b.add_argument("--models", help="with --config: comma-separated models keys (default: all)")
    b.add_argument("--api-key-env", metavar="VAR", help="environment variable holding the key to send (default: "
                   "OPENAI_API_KEY when set; else no key)")
    b.add_argument("--request-rate", type=float, metavar="R",
                   help="open-loop arrivals per second (default inf: all at once)")
    b.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the arrivals (1 = Poisson)")
    b.add_argument("--max-concurrency", type=int, metavar="C", help="at most C requests in flight (closed loop "
                   "with rate inf)")
    b.add_argument("--num-prompts", type=int, default=200, metavar="N", help="requests measured (default 200)")
    b.add_argument("--warmup", type=int, default=0, metavar="N", help="extra requests sent first, not counted")
    b.add_argument("--items", help="prompts from this items JSONL (id + messages or prompt), repeated as needed")
    b.add_argument("--pillars", metavar="IDS", help="prompts drawn from the built-in items of these pillars "
                   "(comma-separated, or all), as a run sends them")
    b.add_argument("--input-len", type=int, default=128, metavar="T", help="synthetic prompts of T words "
                   "(about T tokens; exactly T with --tokenizer; default 128) when neither --items nor --pillars")
    b.add_argument("--tokenizer", metavar="NAME", help="cut synthetic prompts to --input-len tokens of this "
                   "tokenizer: an OpenAI encoding (o200k_base, cl100k_base; bpe-openai) or a Hugging Face folder "
                   "or id (needs transformers)")
    b.add_argument("--output-len", type=int, default=128, metavar="T", help="max tokens per reply (default 128)")
    b.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=None, help="send ignore_eos "
                   "and min_tokens = --output-len, so every reply has --output-len tokens (default: where the "
                   "adapter declares that its server takes them, e.g. vllm; --ignore-eos for a --base-url server "
                   "that does)")
    b.add_argument("--goodput", nargs="+", metavar="NAME:MS", help="SLOs for request_goodput: ttft:MS tpot:MS e2el:MS")
    b.add_argument("--seed", type=int, default=0, help="seed of the prompts and arrivals (default 0)")
    b.add_argument("--timeout-s", type=float, default=600.0, help="per request (default 600)")
    b.add_argument("--result-file", metavar="PATH", help="write the result JSON (vllm bench serve's field names)")
    b.add_argument("--sweep", metavar="KNOB=V1,V2,...", help="rate=1,2,4,inf or concurrency=1,8,64: one result "
                   "per point (sweep.json -> sweep-rate-4.json, ...) and sweep.svg of latency against throughput")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    # Lazy for start-up time: the commands load msgspec, the registries and the runner, which `--help`
    # and a usage error never need (python -m engine --help: see benchmarks/RESULTS.md, case f).
    from engine.cli import commands

    return commands.dispatch(args)


def console() -> int:
    """The process's entry (`python -m engine`, the `trustmh-engine` script): `main`, then the
    objects left are frozen out of the garbage collector. The interpreter's shutdown would run its
    collections over every object the command made and its modules hold: 50-60 ms of CPU, as much
    as the whole rest of a 1-item run's ending. Everything a command writes is closed before main
    returns, atexit handlers still run, and objects outside reference cycles are still freed; only
    cycles left at exit are not collected, and the process is ending. Not in `main`, which tests
    call in their own process."""
    code = main()
    gc.freeze()
    return code
