"""The `pluq` command line (typer for the commands, rich for what people read).

    pluq worker -A tasks:app [-c 4] [-Q default,high] [--pool processes|threads|solo]
                [--burst] [--beat] [--loglevel INFO] [--json-logs]
    pluq beat -A tasks:app
    pluq status (-A tasks:app | --broker URL) [--watch]
    pluq result TASK_ID
    pluq call tasks.add --args '[1, 2]' [--kwargs '{}'] [--queue q] [--countdown s]
    pluq dlq list | show ID | retry [ID...] | purge [ID...]
    pluq purge QUEUE
    pluq demo

`-A` also reads $PLUQ_APP; without -A, `--broker` defaults to $PLUQ_BROKER, else
`sqlite:///pluq.db` in the current directory. Each command lives in its own module and
imports rich and the rest of pluq's machinery only when it runs, so `pluq --help` is fast.
Typer itself (with click, some 40 ms to import) loads only when needed: the usual
`pluq worker` command line, where no person reads it, is parsed without it (see
`pluq.cli._lean`), and the names below load on first use.

Exit codes (constants in `pluq.cli._common`): 0 done, 1 the command could not do its job
(no such dead letter, a transport error), 2 a usage mistake (option, -A, URL, JSON, task
name), 69 a feature this installation lacks, 130 a worker stopped by a second Ctrl-C.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pluq.cli._commands import cli
    from pluq.cli._common import (
        EXIT_FAILURE,
        EXIT_INTERRUPTED,
        EXIT_OK,
        EXIT_UNAVAILABLE,
        EXIT_USAGE,
    )

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "cli",
    "main",
]

_LAZY = {
    "cli": "pluq.cli._commands",
    "EXIT_FAILURE": "pluq.cli._common",
    "EXIT_INTERRUPTED": "pluq.cli._common",
    "EXIT_OK": "pluq.cli._common",
    "EXIT_UNAVAILABLE": "pluq.cli._common",
    "EXIT_USAGE": "pluq.cli._common",
}
"""Public name -> the module (on typer) that defines it, imported when first read."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pluq.cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later reads skip this function
    return value


def main() -> None:
    """The `pluq` console script (and `python -m pluq`).

    A real program, not a test calling the commands in its own process: `pluq worker`
    replaces this process with a lean one (see `pluq.worker._run`), straight away for
    the usual command line where no person reads it (`pluq.cli._lean`).
    """
    from pluq.cli import _lean

    _lean.run(sys.argv[1:])  # returns only when typer is to read the command line
    from pluq.cli import worker as _worker
    from pluq.cli._commands import cli

    _worker.lean_exec = True
    cli(prog_name="pluq")
