"""Repository-root conftest: makes the contract kit's options known from the root.

`pytest --transport-url URL` run here (no path given, so `testpaths` applies) parses the
command line before it reaches `transports/conftest.py`; pytest only accepts options that
the rootdir's conftest (or one next to a path given) registers. See transports/_options.py.
"""

from __future__ import annotations

import pytest
from transports._options import add_options


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
