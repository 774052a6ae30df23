"""progress_engine: Python binding of ProgressEngine (libProgressEngine.so, include/progress.h).

    from progress_engine import ProgressTracker, ProgressContext, StageStatus, get_progress_tracker

Importing loads the library (see _lib for where it is looked for; PROGRESS_ENGINE_LIB overrides)
and raises LibraryNotFoundError, an ImportError, when it cannot.
"""

from ._lib import progress_version_number as _progress_version_number
from .context import ProgressContext
from .default import get_progress_tracker, get_progress_tracker_sync
from .errors import (
    ConfigError,
    EngineIOError,
    ExistsError,
    InternalError,
    InvalidArgumentError,
    JSONError,
    LibraryNotFoundError,
    LimitError,
    NotFoundError,
    ProgressError,
    ProgressWarning,
    RangeError,
    StateError,
    TaskCancelled,
    UnsupportedError,
    from_status,
)
from .model import LogLevel, Stage, StageStatus
from .stages import StageManager
from .track import Track, track
from .tracker import ETAPredictor, ProgressTracker, StepCounter


def engine_version() -> str:
    """The loaded library's version, "MAJOR.MINOR.PATCH"."""
    number = _progress_version_number()
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def _package_version() -> str:
    # The distribution's version, which setup.py takes from include/progress.h; without installed metadata
    # (the folder put on sys.path by hand), the loaded library's.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("progress-engine")
    except PackageNotFoundError:
        return engine_version()


__version__ = _package_version()

__all__ = [
    "ConfigError",
    "ETAPredictor",
    "EngineIOError",
    "ExistsError",
    "InternalError",
    "InvalidArgumentError",
    "JSONError",
    "LibraryNotFoundError",
    "LimitError",
    "LogLevel",
    "NotFoundError",
    "ProgressContext",
    "ProgressError",
    "ProgressTracker",
    "ProgressWarning",
    "RangeError",
    "Stage",
    "StageManager",
    "StageStatus",
    "StateError",
    "StepCounter",
    "TaskCancelled",
    "Track",
    "UnsupportedError",
    "engine_version",
    "from_status",
    "get_progress_tracker",
    "get_progress_tracker_sync",
    "track",
]
