"""Safety pillar (PROTOCOL.md §3.3): jailbreak resistance (RtA) and antitoxic (derived)."""

from pillars.safety.antitoxic import SUBTASK as ANTITOXIC
from pillars.safety.jailbreak import SUBTASK as JAILBREAK

__all__ = ["SUBTASKS"]

SUBTASKS = (JAILBREAK, ANTITOXIC)
