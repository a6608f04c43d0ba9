"""`pluq worker` where no person reads it: its usual options, read without typer.

`pluq worker` (the real program) parses its options and replaces itself with the lean
worker process (`pluq.worker._run`), which checks them, prints the banner and runs. Typer
would cost more than all the rest of that (typer and click take some 40 ms to import), so
where stderr is not a terminal (systemd, containers, the bench) the options are read here,
as typer reads them, and the process execs at once:

    -A/--app MODULE[:APP] (else $PLUQ_APP)   -b/--broker URL   -c/--concurrency N
    -Q/--queues QUEUE[,QUEUE]   -P/--pool processes|threads|solo   -n/--name NAME
    -l/--loglevel LEVEL (any case)   --burst   --beat   --json-logs

each as `-A x`, `-Ax`, `--app x` or `--app=x`; -Q adds up, any other option given twice
takes the last value, as in click. Anything else goes to typer, which says what it always
said: --help, a positional argument, an unknown option, a value typer would refuse, an
empty one or one starting with "-", and any terminal. A test checks that both read the
same command lines alike.

It imports only light standard modules (json, and subprocess for the interpreter's flags):
that is its point.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

__all__ = ["LEAN_MODULE", "SETTINGS_ENV", "become_lean", "run", "worker_options"]

SETTINGS_ENV: Final = "PLUQ_WORKER_SETTINGS"
"""Carries the options (`pluq.worker._run.Settings`, as JSON) to the lean process."""
LEAN_MODULE: Final = "pluq.worker._run"

_VALUED: Final = {
    "-A": "app_spec",
    "--app": "app_spec",
    "-b": "broker",
    "--broker": "broker",
    "-c": "concurrency",
    "--concurrency": "concurrency",
    "-Q": "queues",
    "--queues": "queues",
    "-P": "pool",
    "--pool": "pool",
    "-n": "name",
    "--name": "name",
    "-l": "loglevel",
    "--loglevel": "loglevel",
}
_FLAGS: Final = {"--burst": "burst", "--beat": "beat", "--json-logs": "json_logs"}
_POOLS: Final = ("processes", "threads", "solo")  # pluq.cli._common.Pool
_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")  # pluq.cli.worker.LogLevel


def worker_options(args: Sequence[str], environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The options `pluq worker ARGS` gives, as `pluq.worker._run.Settings` fields, or
    None where typer is to read them (see the module doc)."""
    options: dict[str, Any] = {
        "app_spec": None,
        "broker": None,
        "concurrency": None,
        "queues": [],
        "pool": "processes",
        "name": None,
        "burst": False,
        "beat": False,
        "loglevel": "INFO",
        "json_logs": False,
    }
    app_given = False
    rest = iter(args)
    for arg in rest:
        if arg in _FLAGS:
            options[_FLAGS[arg]] = True
            continue
        attached: str | None = None
        if arg.startswith("--"):
            opt, equals, after = arg.partition("=")
            attached = after if equals else None
        elif arg.startswith("-") and len(arg) > 2:
            opt, attached = arg[:2], arg[2:]  # -c2, as click reads it
        else:
            opt = arg
        key = _VALUED.get(opt)
        if key is None:
            return None  # --help, "--", an argument, an unknown option or flag value
        value = attached if attached is not None else next(rest, None)
        if not value or value.startswith("-"):
            return None  # missing, empty, or an option typer might read as the value
        if key == "concurrency":
            if not (value.isascii() and value.isdigit()) or int(value) < 1:
                return None
            options[key] = int(value)
        elif key == "pool":
            if value not in _POOLS:  # typer's choice of pool is case-sensitive
                return None
            options[key] = value
        elif key == "loglevel":
            if not value.isascii() or value.upper() not in _LEVELS:
                return None
            options[key] = value.upper()
        elif key == "queues":
            options[key].append(value)
        else:
            options[key] = value
            app_given = app_given or key == "app_spec"
    if not app_given:
        options["app_spec"] = environ.get("PLUQ_APP") or None  # click skips an empty one
    return options


def _no_terminal(environ: Mapping[str, str]) -> bool:
    """Whether rich would call stderr no terminal, known without importing rich (the
    lean process's `_terminal` decides the same way)."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        tty = False
    return not (tty or environ.get("FORCE_COLOR") or environ.get("TTY_COMPATIBLE") == "1")


def run(argv: Sequence[str]) -> None:
    """Become the lean worker for `pluq worker ...` read here (see the module doc);
    returns only where typer is to read `argv` (the command line after `pluq`)."""
    environ = os.environ
    if not argv or argv[0] != "worker" or "_PLUQ_COMPLETE" in environ:  # click's completion
        return
    if not _no_terminal(environ):
        return
    options = worker_options(argv[1:], environ)
    if options is None:
        return
    import json

    become_lean(json.dumps(options, separators=(",", ":")), list(argv))


def become_lean(settings: str, argv: list[str]) -> None:
    """Replace this process with the lean worker (see `pluq.worker._run`) given its
    `settings` (JSON); returns only when it cannot (no POSIX exec, no known interpreter):
    the caller then serves itself.

    `argv` (the command's arguments) is passed on for people reading `ps`, not read.
    """
    if os.name != "posix" or not sys.executable:
        return
    import subprocess

    # -X, -W, -O...: how this interpreter runs (multiprocessing's spawn passes the same).
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    if not (sys.flags.safe_path or sys.flags.isolated):
        flags.append("-P")
    env = {**os.environ, SETTINGS_ENV: settings}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # "pluq worker ..." stays in the command line: `pgrep -f "pluq worker"` finds it.
        os.execve(sys.executable, [sys.executable, *flags, "-m", LEAN_MODULE, "pluq", *argv], env)
    except OSError:
        return  # still this process, unchanged: it runs the worker itself
