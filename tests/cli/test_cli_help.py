"""`--help` of every command reads well: it names what the command does and its options."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import pluq
from pluq.cli import cli

HELP_WORDS = {
    (): ["worker", "beat", "demo", "status", "result", "dlq", "call", "purge", "pluq demo"],
    ("worker",): [
        "SIGTERM",
        "graceful",
        "--app",
        "PLUQ_APP",
        "--broker",
        "--concurrency",
        "--queues",
        "--pool",
        "processes",
        "threads",
        "solo",
        "--burst",
        "--beat",
        "--loglevel",
        "--json-logs",
        "travel by value",
    ],
    ("beat",): ["periodic", "--app", "once"],
    ("status",): ["ready", "delayed", "running", "dead", "workers", "--watch", "--json"],
    ("result",): ["TASK_ID", "state", "retries", "history", "tracebacks", "--backend"],
    ("call",): [
        "NAME",
        "--args",
        "JSON array",
        "--kwargs",
        "JSON object",
        "--queue",
        "--countdown",
        "-A",
    ],
    ("dlq",): ["dead-letter", "list", "show", "retry", "purge"],
    ("dlq", "list"): ["reason", "--queue"],
    ("dlq", "show"): ["ID", "traceback"],
    ("dlq", "retry"): ["back on their queues", "[ID]..."],
    ("dlq", "purge"): ["Delete", "--yes"],
    ("purge",): ["QUEUE", "waiting", "--yes"],
    ("demo",): ["demo tasks", "pluq.db", "--broker", "dead-letter"],
}


@pytest.mark.parametrize("command", list(HELP_WORDS), ids=lambda c: " ".join(c) or "pluq")
def test_help_names_what_the_command_does(runner: CliRunner, command: tuple[str, ...]) -> None:
    result = runner.invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    for word in HELP_WORDS[command]:
        assert word in result.stdout, f"{word!r} missing from pluq {' '.join(command)} --help"


def test_pluq_without_arguments_shows_the_help(runner: CliRunner) -> None:
    result = runner.invoke(cli, [])
    assert "worker" in result.output and "status" in result.output
    assert result.exit_code == 2  # no command is a usage error, as click has it


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"pluq {pluq.__version__}"


def test_an_unknown_option_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["status", "--no-such-option"])
    assert result.exit_code == 2
    assert "No such option" in result.output
    assert "Traceback" not in result.output
