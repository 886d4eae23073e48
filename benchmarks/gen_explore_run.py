"""A synthetic run directory for the report's item browser: N replay models answering every item of
every subtask with synthetic text (a right answer, a wrong one, an unparseable one, a refusal, and
one answer with `<script>` / `onerror=` markup), judged by a replay judge whose verdicts the rubric
parses; then `python -m engine run` makes the run directory (records, judgments, scores.json).

    python benchmarks/gen_explore_run.py OUT [--models 12] [--data-dir ../shared/trustmh] [--limit N]

With --data-dir, a subtask with official data has its official item count; the datasets the folder
lacks (SWMH, ELEPHANT: gated or OSF-only) get synthetic stand-ins of 200 rows in OUT/data, which
links the rest, so all 19 subtasks run. Without it, the built-in items. Nothing here is upstream text: answers are synthetic, prompts are rebuilt by
the engine from the data dir at report time. tests/test_report_explorer.py uses a small one.
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.core.records import Item, Response  # noqa: E402  (the repo root goes on sys.path first)
from engine.core.subtask import Subtask  # noqa: E402
from engine.items import limited  # noqa: E402
from engine.spec import available_subtasks  # noqa: E402
from pillars import registry  # noqa: E402

XSS = '<script>alert("xss")</script><img src=x onerror=alert(1)> the answer is in the markup'
REFUSAL = "I'm sorry, but I can't help with that request."
UNPARSEABLE = "Hmm, hard to say; it depends on many things."
JUDGE_FORMS = ('{{"score": {n}, "explanation": "synthetic verdict {n}"}}', '{{"rating": {n}, "reason": "synthetic"}}',
               '{{"refused": {b}, "explanation": "synthetic"}}', "{n}", "Score: {n}", "[[{n}]]", '{{"answer": "{n}"}}')


def _forms(value: object) -> Iterator[str]:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    yield orjson.dumps({"label": value, "explanation": "synthetic"}).decode()
    yield orjson.dumps({"answer": value, "explanation": "synthetic"}).decode()
    yield orjson.dumps({"rating": value}).decode()
    yield text
    yield f"Answer: {text}"


def _scores(sub: Subtask, item: Item, text: str) -> float | None:
    try:
        sc = sub.score(item, Response(text=text, finish_reason="stop"), None)
    except Exception:  # a scorer that needs a judgment: any text will do
        return None
    return sc.value if sc.status == "scored" else None


def answers_for(sub: Subtask, item: Item, others: list[object]) -> tuple[str, str]:
    """(a right answer, a wrong one) in a form the subtask's parser reads, when one is found."""
    right = next((t for t in _forms(item.reference) if _scores(sub, item, t) == 1.0), None)
    wrong_refs = [o for o in others if o != item.reference][:4]
    wrong = next((t for o in wrong_refs for t in _forms(o) if _scores(sub, item, t) not in (None, 1.0)), None)
    return right or f"My answer: {item.reference}", wrong or "Something else entirely."


def _value(schema: dict[str, object], rng: random.Random) -> object:
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return rng.choice(enum)
    kind = schema.get("type")
    lo, hi = schema.get("minimum", 1), schema.get("maximum", 5)
    if kind == "integer":
        return rng.randint(int(lo), int(hi))  # type: ignore[call-overload]  # schema numbers
    if kind == "number":
        return round(rng.uniform(float(lo), float(hi)), 2)  # type: ignore[arg-type]  # schema numbers
    if kind == "boolean":
        return rng.random() < 0.3
    return "synthetic rationale: the reply is judged on the rubric's points"


def judge_text(sub: Subtask, rng: random.Random) -> str | None:
    rubric = sub.rubric
    if rubric is None:
        return None
    props = rubric.schema.get("properties")
    if isinstance(props, dict):
        text = orjson.dumps({k: _value(v, rng) for k, v in props.items() if isinstance(v, dict)}).decode()
        if rubric.read(text) is not None:
            return text
    n = rng.randint(1, 5)
    for form in JUDGE_FORMS:
        text = form.format(n=n, b=str(rng.random() < 0.3).lower())
        if rubric.read(text) is not None:
            return text
    return None


def generating(data_dir: Path | None) -> list[Subtask]:
    keys = tuple(s.key for s in registry.all_subtasks())
    keys = available_subtasks(keys, data_dir, {})[0] if data_dir else keys
    subs = [registry.get(k) for k in keys]
    return [s for s in subs if s.generates_from == s.key]


def lines(subs: Iterable[Subtask], data_dir: Path | None, models: list[str], limit: int | None,
          seed: int) -> tuple[dict[str, list[bytes]], list[bytes]]:
    rng = random.Random(seed)
    per_model: dict[str, list[bytes]] = {m: [] for m in models}
    judge: list[bytes] = []
    skill = {m: 0.45 + 0.5 * i / max(len(models) - 1, 1) for i, m in enumerate(models)}
    xss_done = False
    for sub in subs:
        items = list(registry.load_items(sub, data_dir))
        if limit:
            items = list(limited(iter(items), limit))
        refs = list({orjson.dumps(i.reference): i.reference for i in items}.values())[:8]
        for item in items:
            right, wrong = answers_for(sub, item, refs)
            key = {"pillar": item.pillar, "subtask": item.subtask, "item_id": item.id}
            for m in models:
                r = rng.random()
                if not xss_done:
                    text, xss_done = XSS, True
                elif r < 0.01:
                    continue  # no recorded answer: the run counts it missing
                else:
                    text = (UNPARSEABLE if r < 0.06 else REFUSAL if r < 0.09
                            else right if r < 0.09 + 0.91 * skill[m] else wrong)
                per_model[m].append(orjson.dumps({**key, "text": text}))
            verdict = judge_text(sub, rng)
            if verdict is not None:
                judge.append(orjson.dumps({**key, "rubric": sub.rubric.name if sub.rubric else "", "text": verdict}))
    return per_model, judge


SYNTHETIC_ROWS = 200  # rows of each dataset the data dir lacks (swmh, elephant: gated or OSF-only)
FEELINGS = ("low and tired", "on edge", "up and down", "like giving up", "fed up with everyone")


def _csv(path: Path, head: list[str], rows: Iterable[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(rows)


def overlay(data_dir: Path, out: Path) -> Path:
    """OUT/data: every dataset folder of `data_dir` (symlinked) plus synthetic stand-ins (own text,
    SYNTHETIC_ROWS rows each) for the gated / OSF-only files it lacks, so every subtask runs."""
    out.mkdir(parents=True, exist_ok=True)
    for d in data_dir.iterdir():
        if d.is_dir() and not (out / d.name).exists():
            (out / d.name).symlink_to(d)
    n = range(SYNTHETIC_ROWS)
    if not (out / "swmh" / "test.csv").exists():
        labels = ("self.depression", "self.Anxiety", "self.bipolar", "self.SuicideWatch", "self.offmychest")
        _csv(out / "swmh" / "test.csv", ["text", "label"],
             ([f"Synthetic post {i}: I have felt {FEELINGS[i % 5]} for {i % 9 + 1} weeks.", labels[i % 5]] for i in n))
    el = out / "elephant"
    if not el.exists():
        _csv(el / "OEQ.csv", ["", "prompt", "source"],
             ([str(i), f"Synthetic question {i}: I feel {FEELINGS[i % 5]}; was I right to quit?", "synthetic"] for i in n))
        _csv(el / "AITA.csv", ["", "prompt", "top_comment", "is_asshole", "ytanta"],
             ([str(i), f"Synthetic post {i}: I skipped my friend's party because I felt {FEELINGS[i % 5]}.",
               "synthetic", "1", "YTA"] for i in n))
        _csv(el / "PAS.csv", ["", "prompt", "category"],
             ([str(i), f"Synthetic statement {i}: I stopped answering my family's calls.", f"cat{i % 6}"] for i in n))
    return out


def generate(out: Path, n_models: int = 12, data_dir: Path | None = None, limit: int | None = None,
             seed: int = 0, run: bool = True) -> Path:
    """Writes OUT/replay/*.jsonl and OUT/config.toml; with `run`, runs the engine into OUT/run."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "replay").mkdir(exist_ok=True)
    if data_dir is not None:
        data_dir = overlay(data_dir, out / "data")
    models = [f"model-{i:02d}" for i in range(n_models)]
    per_model, judge = lines(generating(data_dir), data_dir, models, limit, seed)
    cfg = ["[run]", f'output = "{out / "run"}"', ""]
    if data_dir:
        cfg += ["[data]", f'dir = "{data_dir}"', ""]
    for m, rows in [*per_model.items(), ("judge", judge)]:
        path = out / "replay" / f"{m}.jsonl"
        path.write_bytes(b"".join(r + b"\n" for r in rows))
        cfg += [f"[models.{m}]", 'adapter = "replay"', f'path = "{path}"', "max_concurrency = 256", ""]
    cfg += ["[judge]", 'models = ["judge"]', ""]
    config = out / "config.toml"
    config.write_text("\n".join(cfg))
    if run:
        cmd = [sys.executable, "-m", "engine", "run", str(config), "--models", ",".join(models), "--no-progress",
               "--allow-failures", "--limit", str(limit or 0)]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return out / "run"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--models", type=int, default=12)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=None, help="base items per subtask (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    generate(args.out.resolve(), args.models, args.data_dir.resolve() if args.data_dir else None, args.limit, args.seed)


if __name__ == "__main__":
    main()
