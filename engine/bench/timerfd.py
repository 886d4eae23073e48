"""A Linux timerfd: a file descriptor that turns readable at an absolute CLOCK_MONOTONIC time (to
the microsecond), so that the event loop itself wakes when a request is due; the loop's own timers
keep whole milliseconds. Reached through libc with ctypes (os.timerfd_* are Python >= 3.13 only);
`open_timer` gives None where there is none (not Linux), and the caller keeps time otherwise.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

__all__ = ["Timer", "open_timer"]

_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Timer:
    """One armed-or-idle timer: `at(t)` arms it for CLOCK_MONOTONIC time t (s; a time already
    past fires at once), `clear()` takes its expiry once the fd is readable."""

    def __init__(self, libc: ctypes.CDLL, fd: int) -> None:
        self._settime = libc.timerfd_settime
        self._spec = _Itimerspec()  # one, refilled: twice per request, in the loop
        self._ref = ctypes.byref(self._spec)
        self.fd = fd

    def at(self, t: float) -> None:
        value = self._spec.it_value
        value.tv_sec = sec = int(t)
        value.tv_nsec = max(1, int((t - sec) * 1e9))  # all zeros would disarm
        if self._settime(self.fd, _TFD_TIMER_ABSTIME, self._ref, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def clear(self) -> bool:
        """True when the timer had expired (False: a wake-up with nothing to read)."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        os.close(self.fd)


def open_timer() -> Timer | None:
    """A non-blocking timerfd on CLOCK_MONOTONIC, or None where the OS has none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return None
    return Timer(libc, fd) if fd >= 0 else None
