"""`-A` finds the app (module:attr, module, factory, $PLUQ_APP) or says in one line why not."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

from pluq.cli import EXIT_USAGE, cli


def module(folder: Path, source: str) -> str:
    name = f"cli_tasks_{uuid.uuid4().hex[:10]}"
    (folder / f"{name}.py").write_text(source)
    return name


def status_json(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> dict:
    result = runner.invoke(cli, ["status", "--json", *args], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def queue_one(url: str, queue: str = "marker") -> None:
    import pluq

    app = pluq.App(url, serializer="json")
    app.send_task("anything", queue=queue)
    app.close()


APP_AT = "import pluq\n{name} = pluq.App({url!r})\n"


def test_module_colon_attribute_names_the_app(runner: CliRunner, tmp_path: Path) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    name = module(tmp_path, APP_AT.format(name="celery_like", url=url))
    queue_one(url)
    assert "marker" in status_json(runner, "-A", f"{name}:celery_like")["queues"]


def test_a_module_alone_means_its_attribute_app(runner: CliRunner, tmp_path: Path) -> None:
    url, other = f"memory://{uuid.uuid4().hex}", f"memory://{uuid.uuid4().hex}"
    name = module(tmp_path, APP_AT.format(name="app", url=url) + f"other = pluq.App({other!r})\n")
    queue_one(url)
    assert "marker" in status_json(runner, "-A", name)["queues"]


def test_a_module_alone_with_one_app_under_another_name(runner: CliRunner, tmp_path: Path) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    name = module(tmp_path, APP_AT.format(name="tasks_app", url=url))
    queue_one(url)
    assert "marker" in status_json(runner, "-A", name)["queues"]


def test_a_file_name_is_accepted_too(runner: CliRunner, tmp_path: Path) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    name = module(tmp_path, APP_AT.format(name="app", url=url))
    queue_one(url)
    assert "marker" in status_json(runner, "-A", f"{name}.py")["queues"]


def test_a_factory_function_is_called(runner: CliRunner, tmp_path: Path) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    name = module(tmp_path, f"import pluq\ndef create_app():\n    return pluq.App({url!r})\n")
    queue_one(url)
    assert "marker" in status_json(runner, "-A", f"{name}:create_app")["queues"]


def test_dotted_module_attribute_like_celery(runner: CliRunner, tmp_path: Path) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    name = module(tmp_path, APP_AT.format(name="app", url=url))
    queue_one(url)
    assert "marker" in status_json(runner, "-A", f"{name}.app")["queues"]


def test_pluq_app_environment_variable(runner: CliRunner, tmp_path: Path) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    name = module(tmp_path, APP_AT.format(name="app", url=url))
    queue_one(url)
    assert "marker" in status_json(runner, env={"PLUQ_APP": name})["queues"]


def test_broker_option_overrides_the_apps_broker(runner: CliRunner, tmp_path: Path) -> None:
    url, other = f"memory://{uuid.uuid4().hex}", f"memory://{uuid.uuid4().hex}"
    name = module(tmp_path, APP_AT.format(name="app", url=url))
    queue_one(other, queue="elsewhere")
    assert list(status_json(runner, "-A", name, "--broker", other)["queues"]) == ["elsewhere"]


@pytest.mark.parametrize(
    ("source", "spec", "words"),
    [
        (None, "no_such_module_here", ["no module named 'no_such_module_here'", "folder"]),
        ("x = 1\n", "{name}", ["has no pluq.App", "-A {name}:"]),
        (
            "import pluq\na = pluq.App('memory://a')\nb = pluq.App('memory://b')\n",
            "{name}",
            ["several apps (a, b)", "-A {name}:a"],
        ),
        (
            "import pluq\napp = pluq.App('memory://')\n",
            "{name}:nope",
            ["no attribute 'nope'", "app"],
        ),
        ("number = 3\n", "{name}:number", ["is not a pluq.App (its type is int)"]),
        ("raise RuntimeError('boom at import')\n", "{name}", ["RuntimeError: boom at import"]),
        ("import not_installed_dep_xyz\n", "{name}", ["not_installed_dep_xyz", "install"]),
        ("def broken(:\n", "{name}", ["SyntaxError"]),
        ("import pluq\napp = pluq.App('reddis://localhost')\n", "{name}", ["reddis"]),
        (None, "{name}:", ["write it as module:app"]),
    ],
    ids=[
        "missing module",
        "no app",
        "two apps",
        "no attribute",
        "not an app",
        "raises",
        "missing dependency",
        "syntax error",
        "bad url in the module",
        "empty attribute",
    ],
)
def test_a_wrong_app_is_one_line_and_exit_2(
    runner: CliRunner, tmp_path: Path, source: str | None, spec: str, words: list[str]
) -> None:
    name = module(tmp_path, source) if source is not None else "unused"
    result = runner.invoke(cli, ["status", "-A", spec.format(name=name)])
    assert_one_line_error(result, EXIT_USAGE, *(w.format(name=name) for w in words))


@pytest.mark.parametrize(
    ("url", "word"),
    [
        ("reddis://localhost", "unknown transport scheme 'reddis'"),
        ("pluq.db", "not a transport URL"),
    ],
)
def test_a_bad_broker_url_is_one_line_and_exit_2(runner: CliRunner, url: str, word: str) -> None:
    for command in (["status"], ["worker", "--burst"], ["call", "x"], ["dlq", "list"]):
        result = runner.invoke(cli, [*command, "--broker", url])
        assert_one_line_error(result, EXIT_USAGE, word)
