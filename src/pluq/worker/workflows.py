"""Workflow steps the supervisor takes around a task's outcome (see pluq.canvas).

After a success: publish a chain's next step (built by the child) and count a chord
member, releasing the chord's parked callback when the count completes. After a final
failure: fail the rest of the chain and the chord. Before a chord's callback runs:
gather its members' stored results. All of it speaks only to the Broker and the
ResultBackend, and none of it loads a value.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any

from pluq import message as msg
from pluq.backend import FAILURE, SUCCESS, ResultBackend, TaskRecord
from pluq.broker import Broker, Outgoing
from pluq.canvas import CHORD_COUNTER, CHORD_MEMBER

__all__ = ["Workflows"]

log = logging.getLogger("pluq.worker")


class Workflows:
    def __init__(
        self,
        broker: Broker,
        backend: ResultBackend,
        *,
        keys: tuple[bytes, ...],
        expires: float,
        clock: Callable[[], float],
    ) -> None:
        self.broker = broker
        self.backend = backend
        self.keys = keys
        self.expires = expires
        self.clock = clock

    def after_success(self, header: msg.Header | None, followups: list[dict[str, Any]]) -> None:
        """Publish a chain's next step and count a chord member (before the ack)."""
        if followups:
            self.broker.publish_many(
                [
                    Outgoing(f["queue"], base64.b64decode(f["message"]), f["id"], f["not_before"])
                    for f in followups
                ]
            )
        if header is not None and "chord" in header.meta:
            self._chord_member_done(header)

    def _chord_member_done(self, header: msg.Header) -> None:
        chord = header.meta["chord"]
        callback_id, size = str(chord["id"]), int(chord["size"])
        member_key = CHORD_MEMBER.format(id=callback_id, member=header.id)
        first_time = self.backend.incr(member_key, expires=self.expires) == 1
        counter = CHORD_COUNTER.format(id=callback_id)
        count = self.backend.incr(counter, 1 if first_time else 0, expires=self.expires)
        if count >= size:
            self._release_chord(callback_id)
        elif not first_time:
            # A redelivery: a crash may have come between counting and releasing, so
            # check the members themselves (the slow way, on this rare path only).
            parked = self.backend.get(callback_id)
            if parked is not None and "chord_message" in parked.meta:
                members = self._parked_header(parked).meta.get("chord_members", [])
                if not isinstance(self.gather(members), str):
                    self._release_chord(callback_id)

    @staticmethod
    def _parked_header(parked: TaskRecord) -> msg.Header:
        return msg.decode(base64.b64decode(parked.meta["chord_message"]))[0]

    def _release_chord(self, callback_id: str) -> None:
        parked = self.backend.get(callback_id)
        if parked is None or parked.ready or "chord_message" not in parked.meta:
            return  # released already (and running or done), or failed
        message = base64.b64decode(parked.meta["chord_message"])
        header = msg.decode(message)[0]
        if self.broker.publish(header.queue, message, id=callback_id, not_before=header.eta):
            log.info("chord %s complete: queued its callback %s", callback_id, header.task)

    def gather(self, member_ids: list[str]) -> list[list[Any]] | str:
        """The members' stored results in order, or why the callback cannot run."""
        records = self.backend.get_many(member_ids)
        gathered = []
        for member_id, record in zip(member_ids, records, strict=True):
            if record is None or record.state != SUCCESS:
                state = record.state if record is not None else "missing (expired?)"
                return f"chord member {member_id} is {state}, not SUCCESS"
            gathered.append([record.result, record.result_encoding])
        return gathered

    def fail_downstream(self, header: msg.Header, failed: TaskRecord) -> None:
        """A failed step fails the rest of its chain, and a failed member its chord."""
        try:
            for step_id in header.meta.get("chain", []):
                downstream = TaskRecord(
                    id=step_id,
                    state=FAILURE,
                    result=failed.result,
                    result_encoding=failed.result_encoding,
                    exc_type=failed.exc_type,
                    exc_message=failed.exc_message,
                    traceback=failed.traceback,
                    finished_at=self.clock(),
                    meta={"failed_step": header.id, "failed_task": header.task},
                )
                self.backend.put(msg.sign_record(downstream, self.keys), expires=self.expires)
            chord = header.meta.get("chord")
            if chord:
                parked = self.backend.get(str(chord["id"]))
                if parked is not None and not parked.ready:
                    message = (
                        f"chord member {header.id} ({header.task}) failed: "
                        f"{failed.exc_type}: {failed.exc_message}"
                    )
                    record = parked.evolve(
                        state=FAILURE,
                        exc_type="pluq.errors.TaskError",
                        exc_message=message,
                        finished_at=self.clock(),
                        meta={"failed_member": header.id},
                    )
                    self.backend.put(msg.sign_record(record, self.keys), expires=self.expires)
        except Exception as exc:
            log.error("could not fail the workflow after %s: %s", header.id, exc)
