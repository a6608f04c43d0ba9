"""Development sessions: tests, contract kit, lint, typecheck, faults, tutorials, bench.

nox -s tests                 the whole suite (what CI runs)
nox -s contract              the transport contract kit, once per built-in transport
nox -s lint typecheck        ruff and mypy --strict
nox -s faults                the fault and bad-input suite alone
nox -s tutorials             run every notebook in tutorials/ in a real kernel
nox -s bench                 benchmarks side by side with the peers (see bench/)
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

CONTRACT_URLS = {
    "memory": "memory://kit-{uid}",
    "file": "file://{tmp}/queue",
    "sqlite": "sqlite:///{tmp}/pluq.db",
    "redis": "redis://{redis}/0?prefix=kit-{uid}:",
}


@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
@nox.parametrize("transport", list(CONTRACT_URLS))
def contract(session: nox.Session, transport: str) -> None:
    session.install("-e", ".[dev]")
    session.run(
        "python", "-m", "pytest", "transports", "--transport-url", CONTRACT_URLS[transport],
        *session.posargs,
    )  # fmt: skip


@nox.session
def faults(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "tests/faults", *session.posargs)


@nox.session
def tutorials(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "tests/test_tutorials.py", *session.posargs)


BENCH_PEERS = [
    "celery[redis]==5.7.0",
    "rq==2.12.0",
    "huey==3.5.4",
    "dramatiq[redis]==2.2.1",
    "redis==8.1.0",
    "hiredis==3.5.0",
    "py-spy==0.4.3",
]


@nox.session
def bench(session: nox.Session) -> None:
    """pluq beside Celery, RQ, Huey and Dramatiq (pinned, installed in this session only).

    nox -s bench                   10,000 tasks, 3 runs: bench/results/latest.md and .json
    nox -s bench -- --quick        1,000 tasks, 1 run
    nox -s bench -- profile        CPU per task and py-spy while pluq drains on Redis
    """
    # Installed as a wheel, bytecode compiled, as the peers are: an editable install is
    # compiled again by every process where PYTHONDONTWRITEBYTECODE is set.
    session.install(".", *BENCH_PEERS)
    if session.posargs[:1] == ["profile"]:
        session.run("python", "-m", "bench.profile", *session.posargs[1:])
    else:
        session.run("python", "-m", "bench.run", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    paths = ["src", "tests", "transports", "bench", "noxfile.py", "conftest.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "src/pluq")
