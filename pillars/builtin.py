"""The eight built-in pillar packages, in PROTOCOL.md §6 report order: what pillars.registry serves.

Importing this module imports every pillar package (a package that fails to import is an error, never
hidden); the registry does so on its first lookup, not when it is imported.
"""

from __future__ import annotations

from engine.core.subtask import Subtask
from pillars import anti_sycophancy, crisis, ethics, fairness, privacy, reliability, robustness, safety

PACKAGES: dict[str, tuple[Subtask, ...]] = {
    "reliability": tuple(reliability.SUBTASKS),
    "crisis": tuple(crisis.SUBTASKS),
    "safety": tuple(safety.SUBTASKS),
    "fairness": tuple(fairness.SUBTASKS),
    "privacy": tuple(privacy.SUBTASKS),
    "robustness": tuple(robustness.SUBTASKS),
    "anti_sycophancy": tuple(anti_sycophancy.SUBTASKS),
    "ethics": tuple(ethics.SUBTASKS),
}
