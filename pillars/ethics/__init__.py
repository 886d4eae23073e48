"""Ethics pillar: Ethical Reasoning on EthicMH (PROTOCOL.md §3.8)."""

from engine.core.subtask import Subtask
from pillars.ethics import ethical_reasoning

SUBTASKS: tuple[Subtask, ...] = (ethical_reasoning.SUBTASK,)

__all__ = ["SUBTASKS", "ethical_reasoning"]
