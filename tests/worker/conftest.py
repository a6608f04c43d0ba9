"""The worker tests run the tasks of `worker_tasks` on a fresh transport per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import worker_tasks

import pluq

# The transports the worker suite runs on. Each URL gets a fresh namespace per test.
WORKER_TRANSPORTS = [
    "memory://wt-{uid}",
    "file://{tmp}/queue?fsync=false",
    "sqlite:///{tmp}/pluq.db",
    "redis://{redis}/0?prefix=wt-{uid}:",
]


@pytest.fixture(params=WORKER_TRANSPORTS, ids=lambda url: url.split(":")[0])
def transport_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    template: str = request.param
    redis = ""
    if "{redis}" in template:
        redis = request.getfixturevalue("redis_server").address
    return template.format(uid=uuid.uuid4().hex, tmp=tmp_path, redis=redis)


@pytest.fixture
def wapp(transport_url: str) -> Iterator[pluq.App]:
    """`worker_tasks.app`, pointed at a fresh transport for this test."""
    app = worker_tasks.app
    app.close()
    app.broker_url = app.backend_url = transport_url
    yield app
    app.close()


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    return str(tmp_path / "ledger")
