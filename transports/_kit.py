"""What every contract class shares: its fixtures, `requires`, URL helpers, child processes.

A contract class (`PublishContract`, `LeaseContract`, ...) derives from `ContractBase` and
needs one fixture from outside: `transport_url`, a concrete URL. In this folder the
`conftest.py` provides it, parametrized by `--transport-url`; a third party may instead
write, fsspec-style:

    from transports.test_lease import LeaseContract

    class TestMyLeases(LeaseContract):
        @pytest.fixture
        def transport_url(self, tmp_path):
            return f"myq://{tmp_path}/q"

Every other fixture (`broker`, `backend`, `clock`, `live_broker`, ...) is derived from it and
may be overridden the same way (`broker_url` and `backend_url` separately, for example).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import multiprocessing.process
import multiprocessing.queues
import queue
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from pluq.backend import ResultBackend
from pluq.broker import Broker, Capabilities
from pluq.registry import open_backend, open_broker, transport_for

from ._clock import ManualClock

__all__ = [
    "CAPABILITY_NAMES",
    "CHILD_TIMEOUT",
    "REPORT_KEY",
    "Children",
    "ContractBase",
    "parse_capabilities",
    "requires",
    "with_options",
    "with_prefix",
]

F = TypeVar("F", bound=Callable[..., Any])

CAPABILITY_NAMES: Final = tuple(f.name for f in dataclasses.fields(Capabilities))

CHILD_TIMEOUT: Final = 60.0
"""Seconds a parent waits for a child's report: generous, the test machine may be loaded."""

REPORT_KEY: Final = pytest.StashKey[list[str]]()
"""Where the `report` fixture collects measurements for the end-of-run summary."""


# -- capabilities ----------------------------------------------------------------------


def requires(*names: str) -> Callable[[F], F]:
    """Mark a test as needing capabilities; it is skipped ("transport lacks NAME") without.

    Args:
        names: fields of `pluq.broker.Capabilities`, e.g. "shared_between_processes".
    """
    unknown = sorted(set(names) - set(CAPABILITY_NAMES))
    if unknown:
        raise TypeError(f"unknown capabilities {unknown}; known: {', '.join(CAPABILITY_NAMES)}")

    def mark(func: F) -> F:
        func.pluq_requires = (*getattr(func, "pluq_requires", ()), *names)  # type: ignore[attr-defined]
        return func

    return mark


def parse_capabilities(text: str) -> Capabilities:
    """`--transport-capabilities` text: the comma-separated names the transport has.

    Every capability not named is False; "none" (or "") names none.
    """
    names = {n.strip() for n in text.split(",") if n.strip() and n.strip() != "none"}
    unknown = sorted(names - set(CAPABILITY_NAMES))
    if unknown:
        raise ValueError(
            f"unknown capabilities {', '.join(unknown)}; known: {', '.join(CAPABILITY_NAMES)}"
        )
    return Capabilities(**{name: name in names for name in CAPABILITY_NAMES})


# -- URLs ------------------------------------------------------------------------------


def with_options(url: str, **options: str) -> str:
    """`url` with query options set (replacing any given already)."""
    # Not urlsplit/urlunsplit: they turn sqlite:////abs/path into sqlite://abs/path.
    url, hash_mark, fragment = url.partition("#")
    base, _, old_query = url.partition("?")
    query = dict(parse_qsl(old_query, keep_blank_values=True))
    query.update(options)
    return f"{base}?{urlencode(query)}{hash_mark}{fragment}"


def with_prefix(url: str, suffix: str) -> str:
    """`url` with `suffix` appended to its `prefix` option: a namespace inside its own."""
    current = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True)).get("prefix", "")
    return with_options(url, prefix=current + suffix)


# -- child processes -------------------------------------------------------------------


class Children:
    """Top-level functions of `_procs` run in "spawn"ed processes, always reaped on exit.

    Spawn (not fork) proves that nothing is shared in memory: each child opens the
    transport from its URL. Each child reports on one queue; `get` fails the test with the
    child's traceback when it failed.
    """

    def __init__(self) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.results: multiprocessing.queues.Queue[tuple[str, Any]] = self.context.Queue()
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def event(self) -> Any:
        """A multiprocessing Event for this family of processes."""
        return self.context.Event()

    def start(self, target: Callable[..., None], *args: Any) -> multiprocessing.process.BaseProcess:
        """Start `target(results_queue, *args)` in a new process."""
        process = self.context.Process(target=target, args=(self.results, *args), daemon=True)
        process.start()
        self.processes.append(process)
        return process

    def wait(self, event: Any, what: str, timeout: float = CHILD_TIMEOUT) -> None:
        """Wait for a child to set `event`; fail the test (naming `what`) after `timeout`."""
        if not event.wait(timeout):
            pytest.fail(f"no child process {what} within {timeout:.0f} s ({self._codes()})")

    def get(self, timeout: float = CHILD_TIMEOUT) -> Any:
        """The next child report; fails the test on a child error or after `timeout`."""
        try:
            kind, payload = self.results.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no report from a child process within {timeout:.0f} s ({self._codes()})")
        if kind == "error":
            pytest.fail(f"a child process failed:\n{payload}")
        return payload

    def join(self, timeout: float = CHILD_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))

    def _codes(self) -> str:
        return "exit codes: " + ", ".join(str(p.exitcode) for p in self.processes)

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
        for process in self.processes:
            process.join(CHILD_TIMEOUT)
            process.close()
        self.results.close()
        self.results.join_thread()


# -- fixtures --------------------------------------------------------------------------


class ContractBase:
    """The fixtures of every contract class; all derive from `transport_url`."""

    @pytest.fixture
    def broker_url(self, transport_url: str) -> str:
        return transport_url

    @pytest.fixture
    def backend_url(self, transport_url: str) -> str:
        return transport_url

    @pytest.fixture
    def capabilities(self, request: pytest.FixtureRequest, broker_url: str) -> Capabilities:
        """The declared capabilities, or `--transport-capabilities` when given."""
        override = request.config.getoption("transport_capabilities", default=None)
        if override is not None:
            return parse_capabilities(override)
        return transport_for(broker_url).capabilities

    @pytest.fixture(autouse=True)
    def _skip_without_required_capabilities(self, request: pytest.FixtureRequest) -> None:
        needed = getattr(request.function, "pluq_requires", ())
        if not needed:
            return
        capabilities = request.getfixturevalue("capabilities")
        for name in needed:
            if not getattr(capabilities, name):
                pytest.skip(f"transport lacks {name}")

    @pytest.fixture
    def clock(self) -> ManualClock:
        return ManualClock(start=1_000_000.0)

    @pytest.fixture
    def broker(self, broker_url: str, clock: ManualClock) -> Iterator[Broker]:
        """A broker on the manual `clock`: leases and delays move only with `clock.advance`."""
        with open_broker(broker_url, clock=clock) as broker:
            yield broker

    @pytest.fixture
    def backend(self, backend_url: str, clock: ManualClock) -> Iterator[ResultBackend]:
        """A result backend on the manual `clock`."""
        with open_backend(backend_url, clock=clock) as backend:
            yield backend

    @pytest.fixture
    def live_broker(self, broker_url: str) -> Iterator[Broker]:
        """A broker on the real clock (`time.time`), as child processes open it."""
        with open_broker(broker_url) as broker:
            yield broker

    @pytest.fixture
    def live_backend(self, backend_url: str) -> Iterator[ResultBackend]:
        """A result backend on the real clock (`time.time`), as child processes open it."""
        with open_backend(backend_url) as backend:
            yield backend

    @pytest.fixture
    def report(
        self, request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
    ) -> Callable[[str, float, str], None]:
        """Record a measurement (name, value, unit): in the JUnit XML and the run summary."""

        def report(name: str, value: float, unit: str) -> None:
            record_property(name, value)
            line = f"{request.node.nodeid}: {name} = {value:.4g} {unit}"
            request.config.stash.setdefault(REPORT_KEY, []).append(line)

        return report
