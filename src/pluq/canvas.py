"""Signatures: a task with (some of) its arguments and options, to call later."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pluq.app import App
    from pluq.result import AsyncResult

__all__ = ["Signature"]


class Signature:
    """A task name, arguments and options: `add.s(1, 2)`; `add.si(1, 2)` is immutable.

    `sig.delay(*more)` / `sig.apply_async(args=more)` queue the task with the stored
    arguments followed by `more` (a partial signature completed at call time).
    """

    def __init__(
        self,
        task: str,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: App,
        options: Mapping[str, Any] | None = None,
        immutable: bool = False,
    ) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.app = app
        self.options = dict(options or {})
        self.immutable = immutable

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}{'.si' if self.immutable else '.s'}({', '.join(parts)})"

    def set(self, **options: Any) -> Signature:
        """A copy with these options (queue=, countdown=, eta=, expires=, ...) added."""
        return Signature(
            self.task, self.args, self.kwargs, app=self.app,
            options={**self.options, **options}, immutable=self.immutable,
        )  # fmt: skip

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None
    ) -> Signature:
        """A copy with `args` appended (unless immutable) and `kwargs` merged."""
        if self.immutable:
            return self
        return Signature(
            self.task, self.args + tuple(args), {**self.kwargs, **(kwargs or {})},
            app=self.app, options=self.options,
        )  # fmt: skip

    def apply_async(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        sig = self.clone(args, kwargs)
        return self.app.send_task(sig.task, sig.args, sig.kwargs, **{**self.options, **options})

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)
