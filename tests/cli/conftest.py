"""Fixtures for the CLI tests: a clean environment in a temporary working directory."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import write_tasks_module
from typer.testing import CliRunner

import pluq


@pytest.fixture(autouse=True)
def clean_cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test runs in its own folder, without the PLUQ_* variables of the caller."""
    for name in ("PLUQ_APP", "PLUQ_BROKER", "PLUQ_SECRET"):
        monkeypatch.delenv(name, raising=False)
    # Wide enough that rich never folds an id or a message across lines.
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # -A adds the current folder
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("cli_tasks_"):
            del sys.modules[name]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A SQLite broker (and backend) in this test's folder: sqlite:////abs/path/x.db."""
    return f"sqlite:///{tmp_path / 'x.db'}"


@pytest.fixture
def tasks(tmp_path: Path, db_url: str) -> Iterator[tuple[str, pluq.App]]:
    """A tasks module on `db_url` in the working folder: (module name, its app)."""
    import importlib

    name = write_tasks_module(tmp_path, db_url)
    sys.path.insert(0, str(tmp_path))
    module = importlib.import_module(name)
    app: pluq.App = module.app
    yield name, app
    app.close()


@pytest.fixture
def memory_app() -> Iterator[pluq.App]:
    """A bare app on a fresh memory:// broker (the CLI in the same process sees it)."""
    app = pluq.App(f"memory://cli-{uuid.uuid4().hex}", serializer="json")
    yield app
    app.close()
