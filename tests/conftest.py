"""Fixtures for every test under tests/: fresh in-memory apps and throwaway redis-servers.

`transports/_servers.py` lives in the contract kit's package at the repository root; the
root is put on `sys.path` here so that `import transports._servers` works also when only
`tests/` is collected.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pluq


@pytest.fixture
def memory_url() -> str:
    return f"memory://test-{uuid.uuid4().hex}"


@pytest.fixture
def app(memory_url: str) -> Iterator[pluq.App]:
    """A fresh app on its own in-memory transport."""
    application = pluq.App(memory_url)
    yield application
    application.close()


_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from transports._servers import RedisServer, redis_server_available, start_redis  # noqa: E402


def _require_redis_server() -> None:
    if redis_server_available():
        return
    message = "redis-server is not installed; apt-get install redis-server"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true: a missing server is a failure, not a skip)")
    pytest.skip("redis-server is not installed; apt-get install redis-server")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One throwaway redis-server (no persistence) shared by the session's tests."""
    _require_redis_server()
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A URL on the shared server with a prefix of its own, so tests never see each other."""
    return f"redis://{redis_server.address}/0?prefix=test-{uuid.uuid4().hex}:"


@pytest.fixture
def start_redis_server() -> Iterator[Callable[..., RedisServer]]:
    """Start private servers (for tests that kill or restart them); all stop afterwards."""
    _require_redis_server()
    started: list[RedisServer] = []

    def start(*, aof: bool = False, password: str | None = None) -> RedisServer:
        server = start_redis(aof=aof, password=password)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
