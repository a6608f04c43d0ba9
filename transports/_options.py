"""The kit's command-line options, registered once by whichever conftest pytest loads first.

pytest accepts an option only if a conftest it loads *before* parsing the command line
registers it: the rootdir's and those next to the paths given. So `pytest transports
--transport-url URL` works with `transports/conftest.py` alone, while `pytest
--transport-url URL` run from a repository root (where `testpaths` names this folder) needs
the root `conftest.py` to register the options too. Both call `add_options`, which adds
each option only once. This module imports nothing but pytest, so a root conftest can use
it at no cost.
"""

from __future__ import annotations

import pytest

__all__ = ["DEFAULT_URLS", "add_options"]

DEFAULT_URLS = (
    "memory://kit-{uid}",
    "file://{tmp}/queue",
    "sqlite:///{tmp}/pluq.db",
    "redis://{redis}/0?prefix=kit-{uid}:",
)
"""The built-in transports, one URL template each, used when no --transport-url is given."""

_GROUP = "pluq-transports"


def add_options(parser: pytest.Parser) -> None:
    """Register --transport-url and --transport-capabilities (once)."""
    group = parser.getgroup(_GROUP, "pluq transport contract kit")
    if any("--transport-url" in option.names() for option in group.options):
        return
    group.addoption(
        "--transport-url",
        action="append",
        dest="transport_urls",
        default=None,
        metavar="URL",
        help="a transport URL to run the contract kit against (repeatable); may contain "
        "{tmp}, {uid} and {redis}. Default: " + ", ".join(DEFAULT_URLS),
    )
    group.addoption(
        "--transport-capabilities",
        dest="transport_capabilities",
        default=None,
        metavar="NAMES",
        help="comma-separated capabilities the transport has (the others are taken as "
        "missing), instead of the ones it declares; 'none' for none",
    )
