"""`run` and `judge`: the orchestrator of one invocation.

runner (lock, resume, one TaskGroup, the exit code) -> lanes (build the lanes and the judge hub)
-> lane (walk, dispatch, emit) -> attempt (limits -> adapter -> classify -> backoff) or ray (the
same attempt in a Ray actor). Around them: units (what a lane sends), judge (the judge stage),
limits, stats, progress, signals and document (run.json, started and finished).
"""
