"""Privacy pillar: Awareness (ConfAIde tiers 1/2) and Leakage (PsyLeak), PROTOCOL.md §3.5."""

from engine.core.subtask import Subtask
from pillars.privacy import awareness, leakage

SUBTASKS: tuple[Subtask, ...] = (awareness.SUBTASK, leakage.SUBTASK)

__all__ = ["SUBTASKS", "awareness", "leakage"]
