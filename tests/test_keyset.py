"""engine/store/keyset: the resume scan's set of done keys, exact and compact."""

from __future__ import annotations

import os
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.core.records import Record, Response, record_encoder
from engine.store.checkpoint import scan_responses
from engine.store.keyset import KeySet

_keys = st.lists(st.binary(min_size=16, max_size=16).map(bytes.hex), max_size=60)


@settings(deadline=None)  # a loaded 2-core machine is slow, not wrong
@given(_keys, _keys)
def test_behaves_like_a_set_of_str(added: list[str], probes: list[str]) -> None:
    ks = KeySet(added)
    ref = set(added)
    assert len(ks) == len(ref) and set(ks) == ref and bool(ks) == bool(ref)
    for k in added + probes:
        assert (k in ks) == (k in ref)
    for k in probes:  # adding and discarding after the set was packed
        ks.add(k)
        ref.add(k)
    for k in added[::2]:
        ks.discard(k)
        ref.discard(k)
    assert set(ks) == ref and len(ks) == len(ref)
    assert all(k in ks for k in ref)
    both = KeySet(added) | KeySet(probes)
    assert set(both) == set(added) | set(probes)


def test_exact_on_all_128_bits_and_key_boundaries() -> None:
    """Keys that share a 64-bit prefix, or whose bytes straddle two stored keys, are told apart:
    only a whole stored key is a member (a collision can never mark an undone unit done)."""
    a = "00" * 8 + "11" * 8
    b = "00" * 8 + "22" * 8  # same first 64 bits as a
    straddle = ("11" * 8) + ("00" * 8)  # a's second half followed by b's first half
    ks = KeySet([a])
    assert a in ks and b not in ks
    ks = KeySet([a, b])
    assert straddle not in ks and a in ks and b in ks
    assert "not-a-key" not in ks and 5 not in ks and "00" * 16 not in ks


def test_many_keys_and_groups() -> None:
    rng = random.Random(3)
    keys = [rng.getrandbits(128).to_bytes(16, "big").hex() for _ in range(20_000)]
    ks = KeySet()
    for i in range(0, len(keys), 997):  # the scan adds a chunk's keys at a time
        ks.add_hex([k.encode() for k in keys[i:i + 997]])
    ks.add_hex([k.encode() for k in keys[:50]])  # duplicates count once
    assert len(ks) == len(keys)
    assert all(k in ks for k in keys)
    assert sum(os.urandom(16).hex() in ks for _ in range(2_000)) == 0
    assert sorted(ks) == sorted(keys)


def test_scan_holds_full_keys(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    keys = [f"{i:016x}" + "ab" * 8 for i in range(5)]
    with open(path, "wb") as f:
        for k in keys:
            rec = Record(key=k, model="m", pillar="p", subtask="s", item_id=k, sample=0, attempts=1,
                         response=Response(text="x", finish_reason="stop"))
            f.write(record_encoder.encode(rec) + b"\n")
    done = scan_responses(path).done
    assert set(done) == set(keys) and len(done) == 5
    assert f"{0:016x}" + "cd" * 8 not in done  # same 64-bit prefix as a done key, not done
