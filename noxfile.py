"""Development sessions: tests, the contract kit per transport, lint, typecheck, faults, bench.

nox -s tests                 the whole suite (what CI runs)
nox -s contract              the transport contract kit, once per built-in transport
nox -s lint typecheck        ruff and mypy --strict
nox -s faults                the fault and bad-input suite alone
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
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "transports", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "transports", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]")
    session.run("mypy", "src/pluq")
