"""The tasks `pluq demo` queues: quick ones, slow ones, flaky ones and one that gives up.

They live in an importable module (not in the command) so that worker children, started
fresh under forkserver or spawn, can import them by name like any application's tasks.
Run them yourself too:

    pluq worker -A pluq.demo -Q demo
    pluq call pluq.demo.add --args '[2, 3]' --queue demo -A pluq.demo

The app uses the JSON serializer, so every message and result in the broker reads as plain
JSON (`sqlite-utils rows pluq.db pluq_messages`). Its broker is `$PLUQ_BROKER` or
`sqlite:///pluq.db`; `pluq demo --broker URL` points it elsewhere.
"""

from __future__ import annotations

import time
import zlib

import pluq

__all__ = ["QUEUE", "PaymentDeclined", "add", "app", "charge", "fetch", "report", "thumbnail"]

QUEUE = "demo"

app = pluq.App(serializer="json", default_queue=QUEUE)


class PaymentDeclined(Exception):
    """The (pretend) payment provider said no."""


@app.task
def add(x: int, y: int) -> int:
    """Quick: adds two numbers."""
    return x + y


@app.task
def thumbnail(image: str, width: int) -> dict[str, object]:
    """Slow-ish: pretends to resize an image (sleeps 0.1 to 0.4 s, the same for each name)."""
    time.sleep(0.1 + (zlib.crc32(image.encode()) % 4) / 10)
    return {"image": image, "width": width, "path": f"thumbs/{width}/{image}"}


@app.task(bind=True, max_retries=4, retry_jitter=False)
def fetch(self: pluq.Task[[str, int], str], url: str, failures: int) -> str:
    """Flaky: fails `failures` times (a retry 1 s later each time), then succeeds."""
    if self.request.retries < failures:
        raise self.retry(
            exc=ConnectionError(f"{url} did not answer (attempt {self.request.retries + 1})"),
            countdown=1,
        )
    return f"200 OK from {url} after {self.request.retries} retries"


@app.task(bind=True, max_retries=2, retry_jitter=False)
def charge(self: pluq.Task[[str], str], order: str) -> str:
    """Doomed: always declined; after 2 retries it fails and goes to the dead-letter queue."""
    raise self.retry(
        exc=PaymentDeclined(f"card declined for order {order} (try {self.request.retries + 1})"),
        countdown=1,
    )


@app.task
def report(count: int) -> str:
    """Delayed: queued with a countdown, it waits in the broker (not in a worker)."""
    return f"report on {count} tasks"
