"""The process-wide default tracker (the seed's `await get_progress_tracker()`)."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Dict, Optional

from ._lib import ENV_LIBRARY
from .errors import ConfigError, ProgressError
from .tracker import ProgressTracker

_default: Optional[ProgressTracker] = None
# Reentrant: a signal handler asking for the default tracker may interrupt its first open on this thread (it then
# opens one of its own rather than wait for good).
_lock = threading.RLock()


def _after_fork_in_child() -> None:
    # Another thread of the parent may have been opening the default tracker at the fork: it does not exist here.
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# The variables the default tracker is opened from; with the loader's, every PROGRESS_* variable the package reads.
_CONFIG_VARIABLES = ("PROGRESS_ENGINE_CONFIG", "PROGRESS_LISTEN", "PROGRESS_REDIS_URL", "PROGRESS_STRICT")
_VARIABLES = _CONFIG_VARIABLES + (ENV_LIBRARY,)


def _edits(a: str, b: str) -> int:
    """Edits from a to b: letters inserted, deleted, replaced, or two neighbours swapped."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def _misspelled(name: str) -> Optional[str]:
    """The variable `name` is a near miss of (a letter or two, the case, an ENGINE_ more or less, a word left
    out at the end), or None: other software may have PROGRESS_ variables of its own, so only a near miss is taken
    for a typo."""
    def core(variable: str) -> str:
        return variable.upper()[len("PROGRESS_"):].replace("ENGINE_", "")

    if name in _VARIABLES or not name.upper().startswith("PROGRESS_"):
        return None
    typed = core(name)
    for known in _VARIABLES:
        meant = core(known)
        if _edits(typed, meant) <= max(1, len(meant) // 4) or (typed and meant.startswith(typed + "_")):
            return known
    return None


def _check_names() -> None:
    """A misspelled variable is an error: the default tracker would otherwise open without it, silently (a
    PROGRESS_REDIS_ULR would keep every task in memory alone)."""
    for name in sorted(os.environ):
        known = _misspelled(name)
        if known is not None:
            raise ConfigError(f"{name} is set, but ProgressEngine reads no such variable: did you mean {known}? "
                              f"(rename it, or unset it if another program reads it)")


def _config_from_env() -> Dict[str, Any]:
    """PROGRESS_ENGINE_CONFIG (a JSON object of engine configuration keys), then PROGRESS_LISTEN and
    PROGRESS_REDIS_URL, which set (and override) `listen` and `redis_url`. A variable misspelled is refused."""
    _check_names()
    config: Dict[str, Any] = {}
    raw = os.environ.get("PROGRESS_ENGINE_CONFIG")
    if raw:
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"PROGRESS_ENGINE_CONFIG is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ConfigError(f"PROGRESS_ENGINE_CONFIG must be a JSON object, got {raw!r}")
    for variable, key in (("PROGRESS_LISTEN", "listen"), ("PROGRESS_REDIS_URL", "redis_url")):
        value = os.environ.get(variable)
        if value:
            config[key] = value
    return config


_ENV_SOURCES = "the environment: " + ", ".join(_CONFIG_VARIABLES)


def open_from_env(config: Dict[str, Any], source: str = _ENV_SOURCES) -> ProgressTracker:
    """ProgressTracker(**config), a configuration error naming where the configuration came from (the engine's
    message says "config_json", which the caller never wrote)."""
    try:
        return ProgressTracker(**config)
    except ConfigError as error:
        raise ConfigError(f"{error} (the configuration came from {source})", error.status) from None


def get_progress_tracker_sync() -> ProgressTracker:
    """The process-wide tracker, opened on first use from the environment and closed at exit."""
    global _default
    tracker = _default
    if tracker is None:
        with _lock:
            if _default is None:
                # Closed at exit by the binding's atexit hook (tracker._close_at_exit), which runs after
                # the atexit handlers registered after the import (LIFO), so those may still use it.
                # A signal handler's call that interrupted this open may have opened one first (on its port).
                try:
                    opened = open_from_env(_config_from_env())
                except ProgressError:
                    if _default is None:
                        raise
                else:
                    if _default is None:
                        _default = opened
                    else:
                        opened.close()
            tracker = _default
    return tracker


async def get_progress_tracker() -> ProgressTracker:
    """Awaitable form of get_progress_tracker_sync(), as in the seed."""
    return get_progress_tracker_sync()
