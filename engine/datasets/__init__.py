"""The official data: a sha256-pinned manifest of every official file and the fetch that honours it.

- `manifest.py`: the manifest (`data_manifest.toml`) as typed records, its checks, where data goes
  (`--to`, `[data] cache`, the cache root) and comes from (a mirror), and a file's verified status;
- `fetch.py`: streamed, verified, atomically renamed downloads from upstream URLs, archive members
  or a mirror, with retries; a report, never a print (the CLI prints);
- `derive.py`: files built locally from other pinned files of the same dataset.

The `python -m engine data fetch | list` command (arguments, printing, the event loop and signal
handling) lives in engine/cli/commands.py.
"""
