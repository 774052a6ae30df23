"""Fixtures of the Redis suite live in redis_support.py (a unique module name: other suites have a conftest too)."""
from redis_support import *  # noqa: F401,F403 (fixtures are found by name)
