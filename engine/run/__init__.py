"""`run` and `judge`: the orchestrator of one invocation.

runner (lock, resume, one task group, the exit code) -> lanes (build the lanes and the judge hub)
-> lane (walk, dispatch, emit) -> attempt (limits -> adapter -> classify -> backoff) or ray (the
same attempts in a Ray actor). Around them: options (RunOptions, the resolved Invocation), units
(what a lane sends), judge (the judge stage), limits, stats, progress, signals, taskgroup and
document (run.json, started and finished).
"""
