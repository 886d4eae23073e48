"""The keys a run already holds (a resume scan's result), in about 16 bytes per key.

A resumed run asks "is this key done?" once per unit and keeps the answer for its whole life, so
the set is resume memory: a Python set of ints held 66 MB for 750k keys (88 MB at 1M), which made a
resumed 1M-item run the peak of the kill -9 benchmark. Here each key is its 16 raw bytes in one
sorted buffer, with a table of where each group of keys sharing their first two bytes starts
(record keys are blake2b digests, so groups are even: ~15 keys each at 1M). A lookup is a C-speed
`bytes.find` inside one group; building sorts in C, 1/16 of the keys at a time, so no Python
object per key outlives a chunk.

Membership is exact: the whole 128-bit key is compared, never a prefix or a digest of it, so no
collision can make an undone unit look done.
"""

from __future__ import annotations

import binascii
import re
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator

_WIDTH = 16  # bytes of a key (32 hex digits)
_RAW_KEY = re.compile(rb".{16}", re.DOTALL)  # consecutive whole keys of a raw buffer, as bytes objects
_HEX_DIGITS = [b"%x" % d for d in range(16)]
_NIBBLE_START = [bytes((d << 4,)) for d in range(16)]  # the smallest key prefix of each first hex digit


class KeySet:
    """A set of record keys (32 lowercase hex digits). Keys are added in batches while a scan
    reads (`add_hex`), land unsorted in 16 parts by their first hex digit, and are sorted into
    one buffer on the first lookup (`freeze`); adding after that unpacks it again."""

    __slots__ = ("_parts", "_buf", "_starts", "_shift", "_n")

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._parts: list[bytearray] | None = [bytearray() for _ in range(16)]
        self._buf = bytearray()
        self._starts = array("Q")
        self._shift = 16
        self._n = 0
        batch = [k.encode() for k in keys]
        self.add_hex(batch)

    # -- building ---------------------------------------------------------------------------

    def add_hex(self, hex_keys: list[bytes]) -> None:
        """Adds keys given as ASCII hex, 32 digits each (the scan's regex matches); sorts the list."""
        if not hex_keys:
            return
        parts = self._thawed()
        hex_keys.sort()
        lo = 0
        for digit in range(16):
            hi = len(hex_keys) if digit == 15 else bisect_left(hex_keys, _HEX_DIGITS[digit + 1], lo)
            if hi > lo:
                parts[digit] += binascii.unhexlify(b"".join(hex_keys[lo:hi]))
            lo = hi

    def add(self, key: str) -> None:
        self._add_raw(bytes.fromhex(key))

    def _add_raw(self, raw: bytes | bytearray) -> None:
        """Adds whole 16-byte keys, each to the part of its first hex digit."""
        parts = self._thawed()
        keys = sorted(_RAW_KEY.findall(raw))
        lo = 0
        for digit in range(16):
            hi = len(keys) if digit == 15 else bisect_left(keys, _NIBBLE_START[digit + 1], lo)
            if hi > lo:
                parts[digit] += b"".join(keys[lo:hi])
            lo = hi

    def discard(self, key: str) -> None:
        kb = bytes.fromhex(key)
        part = self._thawed()[kb[0] >> 4]
        while (at := _aligned_find(part, kb, 0, len(part))) >= 0:
            del part[at:at + _WIDTH]

    def update(self, other: KeySet) -> None:
        buf = other.freeze()._buf
        step = _WIDTH << 16  # in slices: a big set is not copied whole once more
        for start in range(0, len(buf), step):
            self._add_raw(buf[start:start + step])

    def freeze(self) -> KeySet:
        """Sorts and packs what was added (16 bytes a key plus the group table); returns self."""
        parts = self._parts
        if parts is None:
            return self
        # About 16 keys a group: 2**16 groups at 1M keys, a single one for a handful.
        total = sum(len(p) for p in parts)
        bits = min(16, (total // (16 * _WIDTH)).bit_length())
        shift = 16 - bits
        starts = array("Q", bytes(8 * ((1 << bits) + 1)))
        buf = bytearray(total)  # allocated once (growing it by appends left a heap twice its size)
        n = 0
        for digit, part in enumerate(parts):
            keys = sorted(set(_RAW_KEY.findall(part)))  # C-speed split, dedupe and sort of 1/16 of the keys
            parts[digit] = bytearray()
            if bits >= 4:  # this digit's groups: where each group's two-byte prefix would sort
                per = 1 << (bits - 4)
                for g in range(digit * per, (digit + 1) * per):
                    starts[g] = (n + bisect_left(keys, (g << shift).to_bytes(2, "big"))) * _WIDTH
            elif digit % (1 << (4 - bits)) == 0:  # a group spans several digits: it starts at the first
                starts[digit >> (4 - bits)] = n * _WIDTH
            buf[n * _WIDTH:(n + len(keys)) * _WIDTH] = b"".join(keys)
            n += len(keys)
        del buf[n * _WIDTH:]  # duplicates dropped
        starts[-1] = n * _WIDTH
        self._buf, self._starts, self._shift, self._n, self._parts = buf, starts, shift, n, None
        return self

    def _thawed(self) -> list[bytearray]:
        if self._parts is None:
            buf = self._buf
            self._parts = [bytearray() for _ in range(16)]
            self._buf, self._starts, self._n = bytearray(), array("Q"), 0
            step = _WIDTH << 16
            for start in range(0, len(buf), step):
                self._add_raw(buf[start:start + step])
        return self._parts

    # -- reading ----------------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        if self._parts is not None:
            self.freeze()
        if not self._n or not isinstance(key, str) or len(key) != 2 * _WIDTH:
            return False
        try:
            kb = bytes.fromhex(key)
        except ValueError:
            return False
        g = (kb[0] << 8 | kb[1]) >> self._shift  # runs once per unit of a resumed run: kept inline
        starts = self._starts
        start, end = starts[g], starts[g + 1]
        at = self._buf.find(kb, start, end)
        return at >= 0 and (not (at - start) % _WIDTH or _aligned_find(self._buf, kb, start, end) >= 0)

    def __len__(self) -> int:
        return self.freeze()._n

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[str]:
        buf = self.freeze()._buf
        for i in range(0, len(buf), _WIDTH):
            yield buf[i:i + _WIDTH].hex()

    def __or__(self, other: KeySet) -> KeySet:
        both = KeySet()
        both.update(self)
        both.update(other)
        return both.freeze()

    def __repr__(self) -> str:
        return f"KeySet({len(self)} keys)"


def _aligned_find(buf: bytes | bytearray, kb: bytes, start: int, end: int) -> int:
    """Where key `kb` starts in buf[start:end] (whole keys from `start`), or -1. A match must sit
    on a key boundary: 16 bytes spanning two neighbouring keys could equal it."""
    at = buf.find(kb, start, end)
    while at >= 0 and (at - start) % _WIDTH:
        at = buf.find(kb, at + 1, end)
    return at
