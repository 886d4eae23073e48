"""The completion fingerprint's code digest (engine/runstate.py code_digest), kept in the cache root
under the code files' identity: whatever the cache file or folder holds, the digest is the one of the
files' bytes (a wrong one would let a rerun skip work the changed code must redo) and a run never
fails over it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import runstate


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A code root of two files (old enough to be kept) and an empty cache root."""
    code = tmp_path / "code"
    (code / "sub").mkdir(parents=True)
    (code / "a.py").write_text("A = 1\n")
    (code / "sub" / "b.py").write_text("B = 2\n")
    monkeypatch.setattr(runstate, "CODE_ROOTS", (code,))
    monkeypatch.setattr(runstate, "_RACY_S", 0.0)
    monkeypatch.setenv("TRUSTMH_CACHE", str(tmp_path / "cache"))
    runstate.code_digest.cache_clear()
    yield code
    runstate.code_digest.cache_clear()


def fresh_digest() -> str:
    runstate.code_digest.cache_clear()
    return runstate.code_digest()


def true_digest(code: Path) -> str:
    import hashlib

    return hashlib.blake2b(runstate.tree_digest(code).encode(), digest_size=16).hexdigest()


def test_kept_digest_is_reused_and_follows_edits_additions_and_removals(tree: Path, tmp_path: Path) -> None:
    first = fresh_digest()
    assert first == true_digest(tree)
    assert (tmp_path / "cache" / "code-digest.json").is_file()
    assert fresh_digest() == first
    (tree / "a.py").write_text("A = 3\n")  # same size
    assert fresh_digest() == true_digest(tree) != first
    (tree / "c.py").write_text("")
    assert fresh_digest() == true_digest(tree)
    (tree / "c.py").unlink()
    (tree / "a.py").write_text("A = 1\n")
    assert fresh_digest() == true_digest(tree) == first


@pytest.mark.parametrize("content", [b"", b"{", b"[]", b'{"identity": 1, "digest": 2}', b"\xff\xfe"])
def test_a_corrupt_cache_file_is_read_past(tree: Path, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "code-digest.json").write_bytes(content)
    assert fresh_digest() == true_digest(tree)
    assert fresh_digest() == true_digest(tree)


def test_a_cache_root_that_is_a_file_costs_only_the_cache(tree: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Was: NotADirectoryError from the clean-up of the temporary file, out of every run's start.
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TRUSTMH_CACHE", str(blocker))
    assert fresh_digest() == true_digest(tree)
    monkeypatch.setenv("TRUSTMH_CACHE", str(blocker / "below"))
    assert fresh_digest() == true_digest(tree)


def test_the_cache_folder_being_a_folder_in_place_of_the_file(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "cache" / "code-digest.json").mkdir(parents=True)
    assert fresh_digest() == true_digest(tree)


def test_files_changed_just_now_are_not_kept(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file written twice within the file system's timestamp step keeps its identity (size, mtime,
    ctime) with other bytes; a digest kept for the first bytes would then stand for the second ones
    in every later run. As git does for its index, identities that recent are not kept."""
    monkeypatch.setattr(runstate, "_RACY_S", 3600.0)
    assert fresh_digest() == true_digest(tree)
    assert not (tmp_path / "cache" / "code-digest.json").exists()
    monkeypatch.setattr(runstate, "_RACY_S", 0.0)
    fresh_digest()
    assert (tmp_path / "cache" / "code-digest.json").exists()


def test_no_temporary_file_is_left(tree: Path, tmp_path: Path) -> None:
    fresh_digest()
    assert os.listdir(tmp_path / "cache") == ["code-digest.json"]
