"""What a run directory holds on disk, and the only code that touches it byte by byte:

- jsonl.py       line framing of the record files (whole-line chunks, keys, digests);
- checkpoint.py  the resume scan, torn-tail repair, record decoding and the one writer per file;
- lock.py        the directory locks (a run or merge exclusive, shards shared);
- rundoc_io.py   run.json, a shard's state file and scores.json as typed documents;
- whole.py       small files that only save time, written whole or not at all (caches).
"""
