"""The process-wide default tracker (the seed's `await get_progress_tracker()`)."""

from __future__ import annotations

import json
import os
import threading
from typing import Any, Dict, Optional

from .errors import ConfigError
from .tracker import ProgressTracker

_default: Optional[ProgressTracker] = None
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Another thread of the parent may have been opening the default tracker at the fork: it does not exist here.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _config_from_env() -> Dict[str, Any]:
    """PROGRESS_ENGINE_CONFIG (a JSON object of engine configuration keys), then PROGRESS_LISTEN and
    PROGRESS_REDIS_URL, which set (and override) `listen` and `redis_url`."""
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


_ENV_SOURCES = "the environment: PROGRESS_ENGINE_CONFIG, PROGRESS_LISTEN, PROGRESS_REDIS_URL, PROGRESS_STRICT"


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
                _default = open_from_env(_config_from_env())
            tracker = _default
    return tracker


async def get_progress_tracker() -> ProgressTracker:
    """Awaitable form of get_progress_tracker_sync(), as in the seed."""
    return get_progress_tracker_sync()
