"""Anti-Sycophancy pillar (PROTOCOL.md §3.7): OEQ, AITA-YTA and PAS with a 0-3 endorsement judge."""

from pillars.anti_sycophancy.aita import SUBTASK as AITA
from pillars.anti_sycophancy.oeq import SUBTASK as OEQ
from pillars.anti_sycophancy.pas import SUBTASK as PAS

__all__ = ["SUBTASKS"]

SUBTASKS = (OEQ, AITA, PAS)
