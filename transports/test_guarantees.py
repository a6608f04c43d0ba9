"""The kit keeps pace with the interface: every guarantee named in a docstring has its test."""

from __future__ import annotations

import re

import pytest

from pluq.backend import ResultBackend
from pluq.broker import Broker

from .test_admin import AdminContract
from .test_backend import BackendContract
from .test_concurrency import ConcurrencyContract
from .test_lease import LeaseContract
from .test_publish import PublishContract
from .test_reserve import ReserveContract

CONTRACTS = (
    PublishContract,
    ReserveContract,
    LeaseContract,
    ConcurrencyContract,
    BackendContract,
    AdminContract,
)
GUARANTEE = re.compile(r"^\s*- (\w+):", re.MULTILINE)


@pytest.mark.parametrize("interface", [Broker, ResultBackend], ids=lambda c: c.__name__)
def test_every_documented_guarantee_has_a_kit_test(interface: type) -> None:
    names = GUARANTEE.findall(interface.__doc__ or "")
    assert names, f"{interface.__name__}'s docstring lists no guarantees"
    tests = {name for contract in CONTRACTS for name in dir(contract)}
    assert sorted(n for n in names if f"test_{n}" not in tests) == []
