"""Fairness pillar (PROTOCOL.md §3.4): support quality across injected demographic identities."""

from pillars.fairness.overall import SUBTASK as OVERALL

__all__ = ["SUBTASKS"]

SUBTASKS = (OVERALL,)
