"""`adapter = "replay"`: answers from a JSONL file of recorded responses, so a run recorded
elsewhere (or by the paper's authors) can be re-scored and re-judged without any model.

Each line is either the engine's own record shape ({key, model, pillar, subtask, item_id, sample,
response: {text, finish_reason, ...}}) or the short form {pillar, subtask, item_id, sample?, text};
other fields are ignored. Lines that add `rubric` answer judge requests for that rubric (a replay
model can be a judge). Items with no recorded answer are not dispatched (listed, never guessed), so
metrics cover the items present; recorded answers that match no item are listed too.

The request "body" of a replay unit names what it asks for ({"replay": [pillar, subtask, item id,
sample, rubric]}) instead of a prompt: that is what the record key hashes, and the recorded text
does not depend on the prompt.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from adapters.registry import BuildContext, Built, adapter
from engine.core.adapter import AdapterError
from engine.core.config import AdapterOptions
from engine.core.errors import EngineError
from engine.core.records import GenParams, Item, Message, Response, Usage


class _Line(msgspec.Struct, kw_only=True):
    pillar: str
    subtask: str
    item_id: str | int
    sample: int = 0
    text: str | None = None
    response: Response | None = None
    rubric: str | None = None
    model: str | None = None


class ReplayOptions(AdapterOptions, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str | None = None  # the JSONL file of recorded responses (required)


_decoder = msgspec.json.Decoder(_Line)
ReplayKey = tuple[str, str, str, int, str]


def load_replay(path: Path) -> dict[ReplayKey, Response]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise EngineError(f"replay file {path}: {exc.strerror}; check models.<name>.path") from None
    out: dict[ReplayKey, Response] = {}
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = _decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise EngineError(f"{path}:{n}: not a replay line ({exc}); need pillar, subtask, item_id and text or response") from None
        if row.response is not None:
            resp = row.response
        elif row.text is not None:
            resp = Response(text=row.text, finish_reason="stop", usage=Usage())
        else:
            raise EngineError(f"{path}:{n}: replay line has neither \"text\" nor \"response\"")
        out[(row.pillar, row.subtask, str(row.item_id), row.sample, row.rubric or "")] = resp
    return out


class ReplayAdapter:
    def __init__(self, path: Path, model: str) -> None:
        self.path = path
        self.model = model
        self._answers: dict[ReplayKey, Response] | None = None
        self.used: set[ReplayKey] = set()
        self.unknown: list[str] = []  # items asked for that the file does not answer

    @property
    def answers(self) -> dict[ReplayKey, Response]:
        if self._answers is None:
            self._answers = load_replay(self.path)
        return self._answers

    def body_for(self, item: Item, sample: int, rubric: str = "") -> dict[str, object] | None:
        k = (item.pillar, item.subtask, item.id, sample, rubric)
        if k not in self.answers:
            self.unknown.append(f"{item.pillar}/{item.subtask} {item.id} #{sample}" + (f" [{rubric}]" if rubric else ""))
            return None
        return {"replay": list(k)}

    def unmatched(self) -> list[ReplayKey]:
        return [k for k in self.answers if k not in self.used]

    def notes(self, complete: bool) -> list[str]:
        out = []
        if self.unknown:
            out.append(f"replay: {len(set(self.unknown))} items have no recorded answer and were not scored, e.g. "
                       + "; ".join(sorted(set(self.unknown))[:5]))
        unmatched = self.unmatched()
        if unmatched and complete:
            out.append(f"replay: {len(unmatched)} recorded answers match no item of this run, e.g. "
                       + "; ".join(" ".join(map(str, k)) for k in unmatched[:5]))
        return out

    def build_body(self, messages: tuple[Message, ...], params: GenParams) -> dict[str, object]:
        raise EngineError("the replay adapter answers by item id; it cannot take free prompts (--items)")

    async def send(self, body: dict[str, object], timeout: float) -> Response:
        try:
            k = msgspec.convert(body.get("replay"), ReplayKey)
        except msgspec.ValidationError:
            raise AdapterError("fatal", f"not a replay request: {body}") from None
        resp = self.answers.get(k)
        if resp is None:
            raise AdapterError("fatal", f"no recorded response for {k}")
        self.used.add(k)
        return resp

    async def aclose(self) -> None:
        return None


@adapter("replay", options=ReplayOptions, required={"path": "a JSONL file of recorded responses"},
         shaping=(("replay", "path"),))
def build_replay(ctx: BuildContext[ReplayOptions]) -> Built:
    assert ctx.options.path  # required by the entry: checked when the config is read
    return Built(ReplayAdapter(Path(ctx.options.path), model=ctx.model_id))
