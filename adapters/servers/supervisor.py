"""The supervisor every managed server command runs under, and the parent-death signal.

    python adapters/servers/supervisor.py --pdeathsig [--grace S] -- CMD [ARGS...]

Run by file path (not `-m`), so it needs neither the package nor PYTHONPATH: only the standard
library is imported. adapters.servers.managed starts commands under it; the embedded llama.cpp
launcher sets the parent-death signal itself (`set_parent_death_signal`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

# Set by ManagedServer in the child's environment: the pid the child expects as its parent. If the
# parent died between fork and prctl, getppid() differs and the child exits at once.
PARENT_PID_ENV = "TRUSTMH_MANAGED_PARENT_PID"

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM, expected_parent: int | None = None) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies. Returns False where unsupported.

    `expected_parent` defaults to $TRUSTMH_MANAGED_PARENT_PID; if the parent is already gone (we were
    reparented before prctl took effect) the signal is raised against ourselves right away.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only on Linux, where prctl exists

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if expected_parent is None:
        raw = os.environ.get(PARENT_PID_ENV, "")
        expected_parent = int(raw) if raw.isdigit() else None
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)
    return True


def _group_members_except_self() -> list[int]:
    """Pids in this process's group other than itself (Linux /proc scan)."""
    me, pgrp = os.getpid(), os.getpgrp()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields: state ppid pgrp ...; a zombie is already dead, only its parent can clear it
        if len(fields) > 2 and int(fields[2]) == pgrp and fields[0] != b"Z":
            pids.append(int(entry))
    return pids


def _signal_group_except_self(sig: int) -> None:
    for pid in _group_members_except_self():
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wrapper_main(argv: list[str]) -> None:
    """`--pdeathsig [--grace S] -- CMD...`: supervise CMD so that it and everything it spawned die
    when our parent dies.

    PR_SET_PDEATHSIG reaches only the process that set it (it is cleared in forked children), so
    exec'ing CMD would protect CMD but not the workers it forks. Instead this small process stays
    as the group leader: it sets PDEATHSIG on itself, runs CMD as a child in the same process
    group, forwards SIGTERM/SIGINT/SIGHUP to it, and once CMD has exited (or the grace period
    after a stop signal has passed) SIGKILLs whatever is left in the group. Exit status: CMD's,
    or 128+N if CMD died of signal N.
    """
    grace = 10.0
    if argv[:1] == ["--pdeathsig"] and argv[1:2] == ["--grace"] and len(argv) > 2:
        grace = float(argv[2])
        argv = argv[:1] + argv[3:]
    if len(argv) < 3 or argv[0] != "--pdeathsig" or argv[1] != "--":
        sys.stderr.write("usage: python adapters/servers/supervisor.py --pdeathsig [--grace S] -- CMD [ARGS...]\n")
        raise SystemExit(2)
    cmd = argv[2:]
    stop_signals: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop_signals.append(signum))
    set_parent_death_signal(signal.SIGTERM)
    env = dict(os.environ)
    env[PARENT_PID_ENV] = str(os.getpid())  # CMD's parent is this process, not ours
    try:
        child = subprocess.Popen(cmd, env=env)
    except OSError as e:
        sys.stderr.write(f"cannot run {cmd[0]!r}: {e}\n")
        raise SystemExit(127) from None
    forwarded = False
    deadline = None
    while True:
        try:
            rc = child.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        if stop_signals and not forwarded:
            forwarded = True
            deadline = time.monotonic() + grace
            try:
                child.send_signal(stop_signals[0])
            except ProcessLookupError:
                pass
        if deadline is not None and time.monotonic() > deadline:
            child.kill()
    # CMD is gone; its helpers must not outlive it.
    _signal_group_except_self(signal.SIGKILL)
    raise SystemExit(rc if rc >= 0 else 128 - rc)


if __name__ == "__main__":
    _wrapper_main(sys.argv[1:])
