"""What a run directory holds on disk: the run documents (rundoc_io), the directory locks (lock)
and the JSONL line framing that merge reads byte for byte (lines)."""
