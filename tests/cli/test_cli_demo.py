"""`pluq demo` in this process (the real-process run is in test_cli_processes.py)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

import pluq
from pluq.cli import EXIT_OK, cli


def test_demo_runs_everything_and_shows_where_to_look(runner: CliRunner, tmp_path: Path) -> None:
    # when the demo runs in an empty folder (threads: quicker to start than processes)
    result = runner.invoke(cli, ["demo", "--pool", "threads"])
    # then it exits 0 with the tasks done, a dead letter, and the next commands to try
    assert result.exit_code == EXIT_OK, result.output
    out = result.stdout
    assert "queued 36 tasks on queue 'demo'" in out
    assert "done: 1 FAILURE, 35 SUCCESS" in out
    for step in (
        "pluq status",
        "pluq dlq list",
        "pluq result ",
        "pluq dlq retry ",
        "pluq worker -A pluq.demo",
        "sqlite-utils tables pluq.db --counts",
    ):
        assert step in out, step
    assert (
        "will retry in 1.00 s" in result.stderr
        and "failed, dead-lettered: pluq.demo.PaymentDeclined" in result.stderr
    )
    assert "Traceback" not in result.output
    # and everything is in ./pluq.db for those commands
    app = pluq.App(f"sqlite:///{tmp_path / 'pluq.db'}", serializer="json")
    [dead] = app.dead_letters()
    assert dead.task == "pluq.demo.charge" and "PaymentDeclined" in dead.reason
    assert dead.id in out  # the suggested `pluq result ID` names it
    app.close()
