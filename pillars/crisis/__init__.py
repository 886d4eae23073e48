"""Crisis pillar: Identification, Severity, Escalation (PROTOCOL.md §3.2; all [I])."""

from engine.core.subtask import Subtask
from pillars.crisis import escalation, identification, severity

SUBTASKS: tuple[Subtask, ...] = (identification.SUBTASK, severity.SUBTASK, escalation.SUBTASK)

__all__ = ["SUBTASKS", "escalation", "identification", "severity"]
