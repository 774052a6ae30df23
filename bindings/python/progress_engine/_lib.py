"""Loads libProgressEngine.so and declares the C ABI of include/progress.h, each function once.

Search order (the first library that loads and has the expected major version wins):
  1. $PROGRESS_ENGINE_LIB, when set: only that path; if it fails, nothing else is tried, so an
     override never silently falls back to another build;
  2. libProgressEngine.so inside this package folder (where a wheel puts it, with the libraries it needs
     beside the package in progress_engine.libs, bundled by auditwheel);
  3. the repository's SwiftPM build folders, <repo>/.build/release then <repo>/.build/debug, so a
     checkout works right after `make build` without any environment variable;
  4. the system loader (`libProgressEngine.so` on the ldconfig / LD_LIBRARY_PATH search path).

Every progress_status-returning function gets an errcheck that raises the mapped ProgressError with
progress_last_error()'s text, so no caller ever looks at a status code.
"""

from __future__ import annotations

import ctypes
import json
import os
from ctypes import POINTER, c_char_p, c_double, c_int, c_longlong, c_void_p
from pathlib import Path
from typing import Any, List, Optional

from .errors import InvalidArgumentError, LibraryNotFoundError, from_status

LIBRARY_NAME = "libProgressEngine.so"
ENV_LIBRARY = "PROGRESS_ENGINE_LIB"
#: PROGRESS_VERSION_MAJOR of the header this binding wraps; another major may differ in behaviour.
EXPECTED_MAJOR = 0


def _candidates() -> List[str]:
    package_dir = Path(__file__).resolve().parent
    repo = package_dir.parents[2]  # bindings/python/progress_engine -> repository root
    return [
        str(package_dir / LIBRARY_NAME),
        str(repo / ".build" / "release" / LIBRARY_NAME),
        str(repo / ".build" / "debug" / LIBRARY_NAME),
        LIBRARY_NAME,  # no slash: the system loader searches for it
    ]


def _try_load(path: str) -> "ctypes.CDLL | str":
    """The loaded library, or why `path` is not usable."""
    if os.sep in path and not os.path.exists(path):
        return "no such file"
    try:
        dll = ctypes.CDLL(path)
    except OSError as exc:
        return str(exc)
    try:
        version_number = dll.progress_version_number
    except AttributeError:
        return "loads, but has no progress_version_number: not a ProgressEngine library"
    version_number.argtypes = []
    version_number.restype = c_int
    version = version_number()
    if version // 10000 != EXPECTED_MAJOR:
        return (
            f"version {version // 10000}.{version // 100 % 100}.{version % 100}, "
            f"but this binding wraps major version {EXPECTED_MAJOR}"
        )
    return dll


def _load() -> ctypes.CDLL:
    override = os.environ.get(ENV_LIBRARY)
    candidates = [override] if override else _candidates()
    tried = []
    for path in candidates:
        result = _try_load(path)
        if isinstance(result, ctypes.CDLL):
            return result
        tried.append(f"  {path}: {result}")
    source = f"{ENV_LIBRARY}={override!r} could not be loaded" if override else (
        f"{LIBRARY_NAME} could not be loaded"
    )
    raise LibraryNotFoundError(
        f"{source}. Tried:\n" + "\n".join(tried) + "\n"
        "Install the released wheel (`make wheel` builds dist/progress_engine-*.whl, which carries the library), "
        "or in a checkout build the library with `make build` (or `swift build -c release --product "
        f"ProgressEngine`), or set {ENV_LIBRARY} to the path of {LIBRARY_NAME}."
    )


_dll = _load()


def _check(status: int, func: Any, args: Any) -> int:
    # Runs on the calling thread right after the call, so progress_last_error() is this call's message.
    if status:
        raise from_status(status, progress_last_error().decode("utf-8", "replace"))
    return status


def _declare(name: str, restype: Any, *argtypes: Any) -> Any:
    func = getattr(_dll, name)
    func.restype = restype
    func.argtypes = list(argtypes)
    return func


def _declare_status(name: str, *argtypes: Any) -> Any:
    """A function returning progress_status: raises instead of returning an error code."""
    func = _declare(name, c_int, *argtypes)
    func.errcheck = _check
    return func


_engine = c_void_p  # progress_engine *
_out_string = POINTER(c_void_p)  # char ** (c_void_p, not c_char_p, so the pointer can be freed)

# int progress_version_number(void);
progress_version_number = _declare("progress_version_number", c_int)
# const char *progress_last_error(void);
progress_last_error = _declare("progress_last_error", c_char_p)
# const char *progress_status_string(progress_status status);
progress_status_string = _declare("progress_status_string", c_char_p, c_int)
# void progress_string_free(char *s);
progress_string_free = _declare("progress_string_free", None, c_void_p)

# progress_status progress_engine_open(const char *config_json, progress_engine **out);
progress_engine_open = _declare_status("progress_engine_open", c_char_p, POINTER(c_void_p))
# void progress_engine_close(progress_engine *engine);
progress_engine_close = _declare("progress_engine_close", None, _engine)
# int progress_engine_port(const progress_engine *engine);
progress_engine_port = _declare("progress_engine_port", c_int, _engine)
# progress_status progress_engine_stats_get(progress_engine *engine, char **out_json);
progress_engine_stats_get = _declare_status("progress_engine_stats_get", _engine, _out_string)

# progress_status progress_task_create(progress_engine *engine, const char *task_id,
#                                      const char *template_id, const char *template_category,
#                                      const char *options_json);
progress_task_create = _declare_status("progress_task_create", _engine, c_char_p, c_char_p, c_char_p, c_char_p)
# progress_status progress_stage_update(progress_engine *engine, const char *task_id, int stage,
#                                       progress_stage_status status, double progress, const char *message);
progress_stage_update = _declare_status("progress_stage_update", _engine, c_char_p, c_int, c_int, c_double, c_char_p)
# progress_status progress_update(progress_engine *engine, const char *task_id, long long step,
#                                 long long total_steps, const char *message);
progress_update = _declare_status("progress_update", _engine, c_char_p, c_longlong, c_longlong, c_char_p)
# progress_status progress_event(progress_engine *engine, const char *task_id, const char *event,
#                                const char *data_json);
progress_event = _declare_status("progress_event", _engine, c_char_p, c_char_p, c_char_p)
# progress_status progress_log(progress_engine *engine, const char *task_id, progress_log_level level,
#                              const char *message);
progress_log = _declare_status("progress_log", _engine, c_char_p, c_int, c_char_p)
# progress_status progress_preview_pixels(progress_engine *engine, const char *task_id,
#                                         const unsigned char *pixels, int width, int height,
#                                         int stride, int channels);
# (pixels as c_char_p: same ABI as const unsigned char *, and bytes pass without a copy)
progress_preview_pixels = _declare_status(
    "progress_preview_pixels", _engine, c_char_p, c_char_p, c_int, c_int, c_int, c_int
)
# progress_status progress_preview_due(progress_engine *engine, const char *task_id, int *due);
progress_preview_due = _declare_status("progress_preview_due", _engine, c_char_p, POINTER(c_int))
# progress_status progress_task_complete(progress_engine *engine, const char *task_id);
progress_task_complete = _declare_status("progress_task_complete", _engine, c_char_p)
# progress_status progress_task_fail(progress_engine *engine, const char *task_id, const char *error);
progress_task_fail = _declare_status("progress_task_fail", _engine, c_char_p, c_char_p)
# progress_status progress_task_cancel(progress_engine *engine, const char *task_id, const char *reason);
progress_task_cancel = _declare_status("progress_task_cancel", _engine, c_char_p, c_char_p)
# progress_status progress_task_cancel_requested(progress_engine *engine, const char *task_id, int *requested);
progress_task_cancel_requested = _declare_status("progress_task_cancel_requested", _engine, c_char_p, POINTER(c_int))
# progress_status progress_task_get(progress_engine *engine, const char *task_id, char **out_json);
progress_task_get = _declare_status("progress_task_get", _engine, c_char_p, _out_string)
# progress_status progress_batch_get(progress_engine *engine, const char *batch_id,
#                                    const char *task_ids_csv, char **out_json);
progress_batch_get = _declare_status("progress_batch_get", _engine, c_char_p, c_char_p, _out_string)
# progress_status progress_task_logs_get(progress_engine *engine, const char *task_id, double since,
#                                    progress_log_level min_level, char **out_json);
progress_task_logs_get = _declare_status("progress_task_logs_get", _engine, c_char_p, c_double, c_int, _out_string)
# progress_status progress_task_history_get(progress_engine *engine, const char *task_id,
#                                       long long after_seq, char **out_json);
progress_task_history_get = _declare_status("progress_task_history_get", _engine, c_char_p, c_longlong, _out_string)

# progress_status progress_task_attach_counter(progress_engine *engine, const char *task_id,
#                                              const volatile long long *counter);
progress_task_attach_counter = _declare_status(
    "progress_task_attach_counter", _engine, c_char_p, POINTER(c_longlong)
)
# progress_status progress_task_detach_counter(progress_engine *engine, const char *task_id);
progress_task_detach_counter = _declare_status("progress_task_detach_counter", _engine, c_char_p)

# progress_status progress_register_template_stages(progress_engine *engine, const char *template_id,
#                                                   const char *stages_json);
progress_register_template_stages = _declare_status(
    "progress_register_template_stages", _engine, c_char_p, c_char_p
)
# progress_status progress_eta_record_completion(progress_engine *engine, const char *record_json);
progress_eta_record_completion = _declare_status("progress_eta_record_completion", _engine, c_char_p)
# progress_status progress_eta_records_get(progress_engine *engine, const char *template_id,
#                                          const char *quality, char **out_json);
progress_eta_records_get = _declare_status("progress_eta_records_get", _engine, c_char_p, c_char_p, _out_string)


def encode(value: Optional[str]) -> Optional[bytes]:
    """A str as a C string (None stays NULL). Lone surrogates are passed through as invalid UTF-8 so
    the engine reports them like any other bad string; an embedded NUL would silently cut the string
    short in C, so it is refused here."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a str, got {type(value).__name__}: {value!r}")
    data = value.encode("utf-8", "surrogatepass")
    if b"\0" in data:
        raise InvalidArgumentError(f"{value!r} contains a NUL character, which a C string cannot carry")
    return data


def encode_text(value: Optional[str]) -> Optional[bytes]:
    """A free text that must reach the engine whole, such as why a task failed: what UTF-8 cannot carry (a lone
    surrogate, from a file name read with surrogateescape) becomes "?" and a NUL becomes U+FFFD, rather than the
    call being refused and the task left running."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected a str, got {type(value).__name__}: {value!r}")
    return value.replace("\0", "\ufffd").encode("utf-8", "replace")


def call_json(func: Any, *args: Any) -> Any:
    """Calls a function whose last parameter is `char **out_json`, parses the string and frees it."""
    out = c_void_p()
    func(*args, ctypes.byref(out))
    try:
        return json.loads(ctypes.string_at(out.value))
    finally:
        progress_string_free(out)
