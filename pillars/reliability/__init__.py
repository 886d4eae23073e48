"""Reliability pillar: Knowledge, Emotion Recognition, Diagnosis, Emotional Support, Intervention.

Report order is PROTOCOL.md §6. Datasets and metrics are [I] (reliability.zip is missing).
"""

from engine.core.subtask import Subtask
from pillars.reliability import (
    diagnosis,
    emotion_recognition,
    emotional_support,
    intervention,
    knowledge,
)

SUBTASKS: tuple[Subtask, ...] = (
    knowledge.SUBTASK,
    emotion_recognition.SUBTASK,
    diagnosis.SUBTASK,
    emotional_support.SUBTASK,
    intervention.SUBTASK,
)

__all__ = [
    "SUBTASKS",
    "diagnosis",
    "emotion_recognition",
    "emotional_support",
    "intervention",
    "knowledge",
]
