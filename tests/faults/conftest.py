"""Fixtures of the fault suite: transports, the ledger, gates, and worker processes.

`shared_url` runs a test on every transport whose queues other processes see (the
capability `shared_between_processes`: file, SQLite, Redis); `any_url` adds memory:// for
tests whose worker runs in the test's own process. Each URL is fresh for the test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fault_tasks
import pytest
from faultkit import Workers

import pluq
from pluq.registry import URL, transport_for

SHARED_TRANSPORTS = [
    "file://{tmp}/queue?fsync=false",
    "sqlite:///{tmp}/pluq.db",
    "redis://{redis}/0?prefix=ft-{uid}:",
]
ANY_TRANSPORTS = ["memory://ft-{uid}", *SHARED_TRANSPORTS]


def _ids(url: str) -> str:
    return url.split(":")[0]


def _fill(request: pytest.FixtureRequest, template: str, tmp_path: Path) -> str:
    redis = ""
    if "{redis}" in template:
        redis = request.getfixturevalue("redis_server").address
    return template.format(uid=uuid.uuid4().hex, tmp=tmp_path, redis=redis)


@pytest.fixture(params=SHARED_TRANSPORTS, ids=_ids)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    url = _fill(request, request.param, tmp_path)
    assert transport_for(URL.parse(url)).capabilities.shared_between_processes
    return url


@pytest.fixture(params=ANY_TRANSPORTS, ids=_ids)
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return _fill(request, request.param, tmp_path)


def _pointed(url: str) -> Iterator[pluq.App]:
    app = fault_tasks.app
    app.close()
    app.broker_url = app.backend_url = url
    app.keys = ()
    try:
        yield app
    finally:
        app.close()
        app.keys = ()


@pytest.fixture
def fapp(any_url: str) -> Iterator[pluq.App]:
    """`fault_tasks.app` on a fresh transport of any kind (memory included)."""
    yield from _pointed(any_url)


@pytest.fixture
def shared_app(shared_url: str) -> Iterator[pluq.App]:
    """`fault_tasks.app` on a fresh transport that worker processes can share."""
    yield from _pointed(shared_url)


@pytest.fixture
def ledger(tmp_path: Path) -> str:
    return str(tmp_path / "ledger")


@pytest.fixture
def gates(tmp_path: Path) -> str:
    folder = tmp_path / "gates"
    folder.mkdir()
    return str(folder)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Start worker processes; every one still running is SIGKILLed afterwards."""
    started = Workers(tmp_path)
    try:
        yield started
    finally:
        started.close()
