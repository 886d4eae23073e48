"""Prompt templates as data: the authors' templates, read at run time from the data directory's
`official-prompts/` folder (one text file per template plus manifest.json), never copied into the
code base. A subtask that has official templates runs with them when they are there (its
`prompts` is then "official"), else with its own-worded prompts ("own": not comparable to the
paper).

Filling is exact text replacement of the placeholder tokens the manifest lists, in one pass over
the template: the ethics templates hold literal JSON braces, so `str.format` would break them, and
a value that happens to contain a token is never substituted again. A positional token ("{}",
from a `str.format` literal) takes the positional values in order; a named one ("{scenario}",
from an f-string) its keyword value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from engine.core.errors import ConfigError

PROMPTS_DIR = "official-prompts"
MANIFEST = "manifest.json"
POSITIONAL = "{}"


class Template(msgspec.Struct, frozen=True):
    """One template: its file name in the folder, its text, and its placeholder tokens."""

    file: str
    text: str
    placeholders: tuple[str, ...] = ()

    def fill(self, *args: str, **kwargs: str) -> str:
        """The template with each placeholder replaced by its value (see the module docstring)."""
        named = {t for t in self.placeholders if t != POSITIONAL}
        wanted = {t[1:-1] for t in named}
        if set(kwargs) != wanted:
            raise ConfigError(f"{self.file}: placeholders {sorted(wanted)} need values, got {sorted(kwargs)}")
        n_pos = self.text.count(POSITIONAL) if POSITIONAL in self.placeholders else 0
        if len(args) != n_pos:
            raise ConfigError(f"{self.file}: {n_pos} positional value(s) needed, got {len(args)}")
        tokens = sorted(named | ({POSITIONAL} if n_pos else set()), key=len, reverse=True)
        if not tokens:
            return self.text
        pattern = re.compile("|".join(re.escape(t) for t in tokens))
        positional = iter(args)

        def value(m: re.Match[str]) -> str:
            tok = m.group(0)
            return next(positional) if tok == POSITIONAL else kwargs[tok[1:-1]]

        return pattern.sub(value, self.text)


class PromptSet(msgspec.Struct, frozen=True):
    """The templates found in one `official-prompts/` folder, by file name."""

    folder: str
    templates: Mapping[str, Template]

    def has(self, files: tuple[str, ...]) -> bool:
        return all(f in self.templates for f in files)

    def __getitem__(self, file: str) -> Template:
        return self.templates[file]
