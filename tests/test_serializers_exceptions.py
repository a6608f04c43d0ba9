"""A failed task's exception: built-in and pluq ones take the pickle shortcut, same bytes."""

from __future__ import annotations

import pickle
import subprocess
import sys

import cloudpickle
import pytest

from pluq import errors
from pluq.serializers import _plain_exception, get_serializer

CLOUDPICKLE = get_serializer("cloudpickle")


class AppError(Exception):
    """An exception class of the user's own: cloudpickle decides how it travels."""


def noted() -> ValueError:
    exc = ValueError("with a note")
    exc.add_note("raised while testing")
    return exc


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("boom"),
        KeyError("key"),
        OSError(2, "No such file", "/nowhere"),
        ConnectionError("attempt 0 failed"),
        TimeoutError(),
        noted(),
        errors.Retry(),
        errors.MessageError("cannot load the task's arguments"),
        errors.TaskError("x.Y: z", exc_type="x.Y"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_builtin_and_pluq_exceptions_pickle_to_the_bytes_cloudpickle_writes(
    exc: BaseException,
) -> None:
    assert _plain_exception(exc)
    assert CLOUDPICKLE.dumps(exc) == cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)


@pytest.mark.parametrize(
    "exc",
    [AppError("mine"), ValueError(lambda: 1), ValueError({1, 2})],
    ids=["own-class", "function-arg", "set-arg"],
)
def test_other_exceptions_go_through_cloudpickle(exc: BaseException) -> None:
    assert not _plain_exception(exc)
    assert CLOUDPICKLE.dumps(exc) == cloudpickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)


def test_plain_data_and_builtin_failures_never_import_cloudpickle() -> None:
    # A worker's child: it loads plain arguments and records a plain result or a failure.
    code = (
        "import sys\n"
        "from pluq.serializers import get_serializer\n"
        "s = get_serializer('cloudpickle')\n"
        "s.loads(s.dumps({'args': [1, 'x'], 'kwargs': {}}))\n"
        "s.loads(s.dumps(ValueError('boom')))\n"
        "print('cloudpickle' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
