"""The seed's value types: stage and log-level enums (values pinned by include/progress.h) and Stage."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Iterable, Mapping, Union


class StageStatus(IntEnum):
    """progress_stage_status."""

    PENDING = 0
    IN_PROGRESS = 1
    COMPLETED = 2
    FAILED = 3
    SKIPPED = 4


class LogLevel(IntEnum):
    """progress_log_level."""

    DEBUG = 0
    INFO = 1
    WARNING = 2
    ERROR = 3


@dataclass(frozen=True)
class Stage:
    """One stage of a template. Weights are relative: the engine normalises them to sum 1."""

    name: str
    description: str = ""
    weight: float = 1.0


def stages_json(stages: Iterable[Union[Stage, Mapping[str, Any]]]) -> str:
    """The stages_json of progress_register_template_stages; the engine validates the content."""
    return json.dumps(
        [
            {"name": s.name, "description": s.description, "weight": s.weight} if isinstance(s, Stage) else dict(s)
            for s in stages
        ]
    )
