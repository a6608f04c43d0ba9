"""Fixtures for the core and worker tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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
