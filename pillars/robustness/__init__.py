"""Robustness pillar (PROTOCOL.md §3.6): emotional support and diagnosis under perturbed input."""

from pillars.robustness.diagnosis import SUBTASK as DIAGNOSIS
from pillars.robustness.emotional_support import SUBTASK as EMOTIONAL_SUPPORT

__all__ = ["SUBTASKS"]

SUBTASKS = (EMOTIONAL_SUPPORT, DIAGNOSIS)
