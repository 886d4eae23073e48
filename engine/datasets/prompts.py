"""The authors' prompt templates, extracted from their code archives by `ast` (nothing is imported
or executed), into a data dir's `official-prompts/` folder (layout: engine/core/prompts.py).

engine/prompts_manifest.toml says where each template is: the archive, the file in it, the
function (``Class.method`` or a function name) and the line the string starts on. A plain literal
(one `ast.Constant`, implicit concatenation included) is its value; an f-string (`JoinedStr`) is
its constant parts joined with each replacement field written back as ``{<source text>}``, except
the fields the manifest lists under `inline`, which are the function's own string constants and
are replaced by their values. Written bytes are the UTF-8 of the text, no newline added.
"""

from __future__ import annotations

import ast
import hashlib
import io
import tomllib
import zipfile
from collections.abc import Mapping
from pathlib import Path

import msgspec

from engine.core.errors import DataError
from engine.core.prompts import MANIFEST, PROMPTS_DIR

PROMPTS_MANIFEST_PATH = Path(__file__).resolve().parent.parent / "prompts_manifest.toml"


class Archive(msgspec.Struct, frozen=True):
    url: str
    size: int
    sha256: str


class TemplateSource(msgspec.Struct, frozen=True):
    file: str
    size: int
    sha256: str
    archive: str
    path: str
    function: str
    line: int
    placeholders: list[str] = []
    inline: list[str] = []


class PromptsManifest(msgspec.Struct, frozen=True):
    archives: dict[str, Archive]
    template: list[TemplateSource]


def load_manifest(path: Path = PROMPTS_MANIFEST_PATH) -> PromptsManifest:
    try:
        return msgspec.convert(tomllib.loads(path.read_text(encoding="utf-8")), PromptsManifest)
    except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
        raise DataError(f"{path}: {exc}") from None


def _function(tree: ast.Module, qualname: str, where: str) -> ast.FunctionDef:
    scope: list[ast.stmt] = tree.body
    parts = qualname.split(".")
    for i, name in enumerate(parts):
        last = i == len(parts) - 1
        found = next((n for n in scope if isinstance(n, ast.FunctionDef if last else ast.ClassDef)
                      and n.name == name), None)
        if found is None:
            raise DataError(f"{where}: no {qualname} (archive changed?)")
        if isinstance(found, ast.FunctionDef):
            return found
        scope = found.body
    raise DataError(f"{where}: no function {qualname}")


def _is_string(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str))


def _constants(fn: ast.FunctionDef, names: list[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in names and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                out[name] = ast.literal_eval(node.value)
    missing = [n for n in names if n not in out]
    if missing:
        raise DataError(f"{where}: no string constant {', '.join(missing)} in {fn.name}")
    return out


def _render(node: ast.AST, source: str, inline: Mapping[str, str]) -> str:
    if isinstance(node, ast.Constant):
        return str(ast.literal_eval(node))
    assert isinstance(node, ast.JoinedStr)
    parts: list[str] = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(ast.literal_eval(value)))
        elif isinstance(value, ast.FormattedValue):
            expr = ast.get_source_segment(source, value.value) or ast.unparse(value.value)
            parts.append(inline[expr] if expr in inline else "{" + expr + "}")
    return "".join(parts)


def extract_one(source: str, t: TemplateSource, where: str) -> str:
    """The template text of `t` from one Python file's source."""
    tree = ast.parse(source)
    fn = _function(tree, t.function, where)
    # The longest string starting on the line: a subscript key such as d['input'] starts there too.
    found = [n for n in ast.walk(fn) if _is_string(n) and getattr(n, "lineno", 0) == t.line]
    node = max(found, key=lambda n: len(ast.get_source_segment(source, n) or ""), default=None)
    if node is None:
        raise DataError(f"{where}:{t.line}: no string literal in {t.function} (archive changed?)")
    text = _render(node, source, _constants(fn, t.inline, where))
    missing = [p for p in t.placeholders if p not in text]
    if missing:
        raise DataError(f"{where}:{t.line}: template lacks placeholder(s) {', '.join(missing)}")
    return text


def extract(archives: Mapping[str, Path], dest: Path, manifest: PromptsManifest | None = None) -> list[Path]:
    """Writes every template of the manifest (and manifest.json: file, source and placeholders)
    into `dest/official-prompts/` from the archives (name -> zip path); returns the files written.
    The pins are not checked here (a test archive has none): `check_pins` does that."""
    manifest = manifest or load_manifest()
    texts: dict[str, str] = {}
    opened: dict[str, zipfile.ZipFile] = {}
    try:
        for t in manifest.template:
            if t.archive not in archives:
                raise DataError(f"{t.file}: archive {t.archive} not given")
            if t.archive not in opened:
                try:
                    opened[t.archive] = zipfile.ZipFile(io.BytesIO(archives[t.archive].read_bytes()))
                except zipfile.BadZipFile:
                    raise DataError(f"{t.archive}: not a zip archive") from None
            try:
                raw = opened[t.archive].read(t.path)
            except KeyError:
                raise DataError(f"{t.archive}: no {t.path} in the archive") from None
            texts[t.file] = extract_one(raw.decode("utf-8"), t, f"{t.archive}/{t.path}")
    finally:
        for z in opened.values():
            z.close()
    folder = dest / PROMPTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in texts.items():
        path = folder / name
        path.write_bytes(text.encode("utf-8"))
        written.append(path)
    return [*written, write_index(folder, manifest)]


def write_index(folder: Path, manifest: PromptsManifest) -> Path:
    """manifest.json, what pillars/common/prompts.py reads: file, source and placeholders."""
    entries = [{"file": t.file, "source_zip": t.archive, "source_path": t.path, "function": t.function,
                "line": t.line, "placeholders": t.placeholders} for t in manifest.template]
    path = folder / MANIFEST
    path.write_bytes(msgspec.json.format(msgspec.json.encode(entries), indent=2) + b"\n")
    return path


def template_status(folder: Path, t: TemplateSource) -> str:
    """"ok", "missing" or "differs (...)" for one template file in `folder`."""
    path = folder / t.file
    if not path.is_file():
        return "missing"
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != t.size or digest != t.sha256:
        return f"differs (sha256 {digest[:12]}..., expected {t.sha256[:12]}...)"
    return "ok"


def check_pins(folder: Path, manifest: PromptsManifest) -> None:
    """Every template in `folder` matches its pin, else a one-line DataError."""
    for t in manifest.template:
        status = template_status(folder, t)
        if status != "ok":
            raise DataError(f"{PROMPTS_DIR}/{t.file}: {status}; the archive or the mirror copy is not "
                            "the pinned one")
