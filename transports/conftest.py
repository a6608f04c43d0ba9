"""pytest wiring of the contract kit: options, the `transport_url` parameter, the summary.

    pytest transports                       # the built-in transports
    pytest transports --transport-url 'sqlite:///{tmp}/q.db' --transport-url 'memory://kit-{uid}'
    pytest transports --transport-url 'myq://host/{uid}' \
        --transport-capabilities shared_between_processes

Templates in a URL: `{tmp}` a fresh temporary directory per test (absolute, no trailing
slash), `{uid}` a fresh hex id per test, `{redis}` host:port of a throwaway redis-server
started once per session (needs `redis-server` on PATH).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from ._kit import REPORT_KEY, parse_capabilities
from ._options import DEFAULT_URLS, add_options


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    override = config.getoption("transport_capabilities", default=None)
    if override is not None:
        try:
            parse_capabilities(override)
        except ValueError as exc:
            raise pytest.UsageError(f"--transport-capabilities: {exc}") from exc


def _ids(templates: list[str]) -> list[str]:
    schemes = [t.partition("://")[0] or "url" for t in templates]
    return [
        scheme if schemes.count(scheme) == 1 else f"{scheme}-{schemes[:i].count(scheme) + 1}"
        for i, scheme in enumerate(schemes)
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "transport_url" in metafunc.fixturenames:
        templates = metafunc.config.getoption("transport_urls") or list(DEFAULT_URLS)
        metafunc.parametrize("transport_url", templates, ids=_ids(templates), indirect=True)


@pytest.fixture
def transport_url(request: pytest.FixtureRequest) -> str:
    """The URL under test, with its templates filled in for this test."""
    url: str = request.param
    if "{tmp}" in url:
        url = url.replace("{tmp}", str(request.getfixturevalue("tmp_path")).rstrip("/"))
    if "{uid}" in url:
        url = url.replace("{uid}", uuid.uuid4().hex)
    if "{redis}" in url:
        url = url.replace("{redis}", request.getfixturevalue("kit_redis_address"))
    return url


@pytest.fixture(scope="session")
def kit_redis_address() -> Iterator[str]:
    """host:port of a throwaway redis-server for this session (never port 6379)."""
    from ._servers import redis_server_available, start_redis

    if not redis_server_available():
        message = "redis-server is not installed; apt-get install redis-server"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: a missing server is a failure, not a skip)")
        pytest.skip("redis-server is not installed; apt-get install redis-server")
    server = start_redis()
    try:
        yield f"{server.host}:{server.port}"
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(REPORT_KEY, [])
    if lines:
        terminalreporter.section("pluq transport kit measurements")
        for line in lines:
            terminalreporter.write_line(line)
