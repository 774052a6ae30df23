"""Fixtures of the fault injection suite live in faults_support.py (a unique module name: other suites have a
conftest too)."""
from faults_support import *  # noqa: F401,F403 (fixtures and the figures hook are found by name)
