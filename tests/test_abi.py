"""The C ABI of libProgressEngine.so against include/progress.h (libcurl's symbol check, SQLite's
version check): every declared function is exported and every exported one declared, each resolves
by name, the version agrees, and the pinned status codes never move.

Library: $PROGRESS_ENGINE_LIB, else .build/release/libProgressEngine.so
(build it with `swift build -c release --product ProgressEngine`).
"""

import ctypes
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADER = ROOT / "include" / "progress.h"
DEFAULT_LIB = ROOT / ".build" / "release" / "libProgressEngine.so"

# Pinned by the header's ABI rules: codes are only ever appended, never renumbered or removed.
PINNED_STATUS = {
    "PROGRESS_OK": 0,
    "PROGRESS_E_INVALID_ARGUMENT": -1,
    "PROGRESS_E_NOT_FOUND": -2,
    "PROGRESS_E_EXISTS": -3,
    "PROGRESS_E_STATE": -4,
    "PROGRESS_E_RANGE": -5,
    "PROGRESS_E_JSON": -6,
    "PROGRESS_E_CONFIG": -7,
    "PROGRESS_E_UNSUPPORTED": -8,
    "PROGRESS_E_IO": -9,
    "PROGRESS_E_LIMIT": -10,
    "PROGRESS_E_INTERNAL": -11,
}
# Fixed by SPEC §4.
PINNED_ENUMS = {
    "progress_stage_status": {
        "PROGRESS_STAGE_PENDING": 0,
        "PROGRESS_STAGE_IN_PROGRESS": 1,
        "PROGRESS_STAGE_COMPLETED": 2,
        "PROGRESS_STAGE_FAILED": 3,
        "PROGRESS_STAGE_SKIPPED": 4,
    },
    "progress_log_level": {
        "PROGRESS_LOG_DEBUG": 0,
        "PROGRESS_LOG_INFO": 1,
        "PROGRESS_LOG_WARNING": 2,
        "PROGRESS_LOG_ERROR": 3,
    },
}


def header_text():
    # Comments mention function names in prose; only declarations count.
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", HEADER.read_text(), flags=re.S)


def header_functions():
    return set(re.findall(r"^\s*PROGRESS_API\b[^;(]*?\b(progress_\w+)\s*\(", header_text(), flags=re.M))


def header_enum(name):
    match = re.search(r"typedef\s+enum\s*\{([^}]*)\}\s*" + name + r"\s*;", header_text())
    assert match, f"no `typedef enum {{...}} {name};` in {HEADER}"
    return {key: int(value) for key, value in re.findall(r"(\w+)\s*=\s*(-?\d+)", match.group(1))}


def header_version():
    """(MAJOR, MINOR, PATCH) and PROGRESS_VERSION_NUMBER as the header defines them."""
    defines = dict(re.findall(r"^#define\s+(PROGRESS_VERSION_\w+)\s+(.+?)\s*$", header_text().replace("\\\n", " "),
                              flags=re.M))
    parts = tuple(int(defines[f"PROGRESS_VERSION_{name}"]) for name in ("MAJOR", "MINOR", "PATCH"))
    expression = defines["PROGRESS_VERSION_NUMBER"]
    for name, value in zip(("MAJOR", "MINOR", "PATCH"), parts):
        expression = expression.replace(f"PROGRESS_VERSION_{name}", str(value))
    assert re.fullmatch(r"[\d\s+*()]+", expression), f"unexpected PROGRESS_VERSION_NUMBER: {expression}"
    return parts, eval(expression)  # digits, +, * and parentheses only (checked above)


@pytest.fixture(scope="module")
def lib_path():
    path = Path(os.environ.get("PROGRESS_ENGINE_LIB", DEFAULT_LIB))
    if not path.is_file():
        pytest.fail(f"{path} not found: build it with `swift build -c release --product ProgressEngine` "
                    "or point PROGRESS_ENGINE_LIB at libProgressEngine.so")
    return path


@pytest.fixture(scope="module")
def lib(lib_path):
    library = ctypes.CDLL(str(lib_path))
    library.progress_version_number.restype = ctypes.c_int
    library.progress_version_number.argtypes = []
    library.progress_status_string.restype = ctypes.c_char_p
    library.progress_status_string.argtypes = [ctypes.c_int]
    return library


def exported_functions(lib_path):
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib_path)], check=True, capture_output=True,
                         text=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.split() and line.split()[-1].startswith("progress_")}


def test_header_declares_functions():
    assert len(header_functions()) >= 20, "the PROGRESS_API declarations of progress.h were not found"


def test_every_declared_function_is_exported(lib_path):
    missing = header_functions() - exported_functions(lib_path)
    assert not missing, f"declared in progress.h but not exported by {lib_path.name}: {sorted(missing)}"


def test_every_exported_function_is_declared(lib_path):
    undeclared = exported_functions(lib_path) - header_functions()
    assert not undeclared, f"exported by {lib_path.name} but not declared in progress.h: {sorted(undeclared)}"


def test_every_declared_function_resolves_by_name(lib):
    unresolved = []
    for name in sorted(header_functions()):
        try:
            getattr(lib, name)  # dlsym
        except AttributeError:
            unresolved.append(name)
    assert not unresolved, f"dlsym found no: {unresolved}"


def test_version_number_matches_header(lib):
    assert lib.progress_version_number() == header_version()[1]


def test_status_codes_are_pinned():
    codes = header_enum("progress_status")
    assert list(codes.items())[: len(PINNED_STATUS)] == list(PINNED_STATUS.items()), \
        "status codes are renumbered, reordered or removed; new ones may only be appended"
    assert len(set(codes.values())) == len(codes), "two status codes share a value"


@pytest.mark.parametrize("enum", sorted(PINNED_ENUMS))
def test_enums_are_pinned(enum):
    assert header_enum(enum) == PINNED_ENUMS[enum]


def test_status_string_names_every_code(lib):
    wrong = {code: lib.progress_status_string(code)
             for name, code in header_enum("progress_status").items()
             if lib.progress_status_string(code) != name.encode()}
    assert not wrong, f"progress_status_string gives the wrong name for: {wrong}"


def test_status_string_of_unknown_codes(lib):
    codes = header_enum("progress_status").values()
    unknown = [max(codes) + 1, min(codes) - 1, 2**31 - 1, -(2**31)]
    names = {code: lib.progress_status_string(code) for code in unknown}
    assert all(name == b"PROGRESS_E_UNKNOWN" for name in names.values()), names


ALIASES = {  # the name before the progress_<object>_<verb> rule -> the name the header now gives it
    "progress_engine_stats": "progress_engine_stats_get",
    "progress_task_logs": "progress_task_logs_get",
    "progress_task_history": "progress_task_history_get",
}


def test_old_names_are_declared_aliases_that_answer_as_the_new_ones(lib):
    text = HEADER.read_text()  # with its comments
    for old, new in ALIASES.items():
        assert f"Alias of {new}" in text and old in header_functions() and new in header_functions()
    engine = ctypes.c_void_p()
    assert lib.progress_engine_open(b'{"throttle_ms": 0}', ctypes.byref(engine)) == 0
    try:
        assert lib.progress_task_create(engine, b"t", b"tpl", None, None) == 0
        assert lib.progress_log(engine, b"t", 1, b"hello") == 0
        assert lib.progress_update(engine, b"t", ctypes.c_longlong(3), ctypes.c_longlong(10), None) == 0
        calls = {
            "progress_engine_stats": (),
            "progress_task_logs": (b"t", ctypes.c_double(0), 0),
            "progress_task_history": (b"t", ctypes.c_longlong(0)),
        }
        for old, args in calls.items():
            answers = []
            for name in (old, ALIASES[old]):
                out = ctypes.c_char_p()
                assert getattr(lib, name)(engine, *args, ctypes.byref(out)) == 0, name
                answers.append(json.loads(out.value))
                lib.progress_string_free(out)
            assert answers[0] == answers[1] and answers[0], (old, answers)
        # Errors too: an unknown task is PROGRESS_E_NOT_FOUND under both names.
        out = ctypes.c_char_p()
        assert lib.progress_task_history(engine, b"nope", ctypes.c_longlong(0), ctypes.byref(out)) == -2
        assert lib.progress_task_history_get(engine, b"nope", ctypes.c_longlong(0), ctypes.byref(out)) == -2
    finally:
        lib.progress_engine_close(engine)


def test_the_config_table_lists_exactly_the_keys_the_engine_accepts(lib):
    """The header's table of progress_engine_open's keys is the engine's own list (EngineConfig.keys), and a key
    it does not list is refused."""
    text = HEADER.read_text()
    table = text.split("key                        default      meaning", 1)[1].split("\n *\n", 1)[0]
    listed = re.findall(r"^ \*   ([a-z_]+) ", table, flags=re.M)
    source = (ROOT / "Sources" / "ProgressEngine" / "Engine" / "EngineConfig.swift").read_text()
    keys = re.search(r"static let keys: Set<String> = \[(.*?)\]", source, flags=re.S)
    assert keys, "EngineConfig.keys was not found"
    assert sorted(listed) == sorted(re.findall(r'"([a-z_]+)"', keys.group(1)))
    engine = ctypes.c_void_p()
    assert lib.progress_engine_open(b'{"throttle_msec": 5}', ctypes.byref(engine)) == -7  # PROGRESS_E_CONFIG


def test_the_stats_keys_in_the_header_are_the_engines(lib):
    """progress_engine_stats_get's keys, as the header lists them, against what an engine with redis_url returns
    (Redis need not answer: an engine opens without it)."""
    text = HEADER.read_text()
    comment = text.split("/* Engine counters as JSON:", 1)[1].split("*/", 1)[0]
    documented = re.findall(r'"([a-z_]+)"', comment)
    engine = ctypes.c_void_p()
    assert lib.progress_engine_open(b'{"redis_url": "redis://127.0.0.1:1/0"}', ctypes.byref(engine)) == 0
    try:
        out = ctypes.c_char_p()
        assert lib.progress_engine_stats_get(engine, ctypes.byref(out)) == 0
        keys = list(json.loads(out.value))
        lib.progress_string_free(out)
    finally:
        lib.progress_engine_close(engine)
    assert sorted(documented) == sorted(keys)
