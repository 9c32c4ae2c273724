"""Verify: what the aggregator believes of a message on the updates topic, and why it refuses.

Every delivery passes the gate before its payload is decoded: refused frames, other tasks,
strangers, wrong kinds, stale or future rounds and duplicates are recorded with the reason and
never take a participant's place. Messages an earlier aggregator of this task already dealt
with (after a restart), updates it left for the round after the one it was recording, and an
update re-sent after a broker restart are skipped quietly.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass

import numpy as np

from aggregator.record import Recorder
from schema import dataplane
from schema.dataplane import UpdateMeta
from streams.codec import ArrayBundle, CodecError, decode_bundle
from streams.framing import Payload
from streams.reader import Delivery, Rejected


@dataclass(frozen=True)
class Accepted:
    """A message that passed the gate: who sent it, its id, and its decoded bundle."""

    sender: str
    message_id: str
    bundle: ArrayBundle


class Gate:
    """Checks each delivery for the step under way; records every refusal."""

    def __init__(self, task_id: str, participants: list[str], recorder: Recorder,
                 resume_point: int = -1, forget: Callable[[str], None] | None = None) -> None:
        self.task_id = task_id
        self.participants = participants
        self.recorder = recorder
        # Rounds up to here were recorded by an earlier aggregator (-1: a fresh start).
        self.resume_point = resume_point
        # Told the id of a message put aside, so that its next copy is delivered (the reader's).
        self.forget = forget
        self._counted: dict[str, str] = {}

    def new_round(self) -> None:
        """Forget which message ids counted: a new round starts."""
        self._counted = {}

    def counted(self, accepted: Accepted) -> None:
        """Note that this update counted, so a re-send of it is known for one."""
        self._counted[accepted.sender] = accepted.message_id

    def accept(self, delivery: Delivery, round_no: int, kind: str, done: Container[str]) -> Accepted | None:
        """The message if it is valid for this step; anything else is recorded (or skipped)."""
        if isinstance(delivery, Rejected):
            envelope = delivery.envelope
            self.recorder.reject(envelope.round if envelope else round_no,
                                 envelope.sender if envelope else "unknown", delivery.reason,
                                 envelope.message_id if envelope else None)
            return None
        payload = delivery.payload
        if self._left_over(payload, round_no):
            # Its sender sends it again when its round is broadcast again; the reader, told to
            # forget this copy, delivers that one instead of dropping it as a repeat.
            if self.forget is not None:
                self.forget(payload.message_id)
            return None
        if self._historical(payload, kind) or self._counted.get(payload.sender) == payload.message_id:
            return None
        problem = envelope_problem(payload, self.task_id, round_no, kind, self.participants, done)
        if problem:
            self.recorder.reject(payload.round, payload.sender, problem, payload.message_id)
            return None
        try:
            return Accepted(payload.sender, payload.message_id, decode_bundle(payload.data))
        except CodecError as exc:
            self.recorder.reject(round_no, payload.sender, f"undecodable payload: {exc}", payload.message_id)
            return None

    def _left_over(self, payload: Payload, round_no: int) -> bool:
        # In a restarted aggregator's first round (round N), an update for round N+1 answers the
        # earlier aggregator, which sent round N+1's weights while it was still recording round
        # N (see `Backlog`): set aside quietly, not refused.
        return (self.resume_point >= 0 and payload.task_id == self.task_id
                and payload.sender in self.participants and payload.kind == dataplane.UPDATE
                and round_no == self.resume_point + 1 and payload.round == round_no + 1)

    def _historical(self, payload: Payload, kind: str) -> bool:
        # After a restart the updates topic is read from its start: rounds already recorded
        # (and round 0's statistics and K-means candidates, once past them) are history, not
        # attacks; skip them quietly.
        if self.resume_point < 0 or payload.task_id != self.task_id:
            return False
        opening = (dataplane.STATS, dataplane.CANDIDATES)
        if payload.kind in opening:
            return kind != payload.kind
        return payload.round <= self.resume_point


def envelope_problem(payload: Payload, task_id: str, round_no: int, kind: str,
                     participants: list[str], done: Container[str]) -> str | None:
    """Why a payload's envelope does not fit the step under way, or None if it does."""
    if task_id and payload.task_id != task_id:
        return f"message for another task ({payload.task_id})"
    if payload.sender not in participants:
        return f"unknown sender '{payload.sender}' (not a participant of this task)"
    if payload.kind != kind:
        return f"unexpected message kind '{payload.kind}' (expected '{kind}')"
    if payload.round < round_no:
        return f"stale update for round {payload.round} (now round {round_no})"
    if payload.round > round_no:
        return f"update for future round {payload.round} (now round {round_no})"
    if payload.sender in done:
        return f"duplicate update from {payload.sender} for round {round_no}"
    return None


def metrics_problem(meta: UpdateMeta) -> str | None:
    """Why an update's local metrics cannot be averaged, or None."""
    bad = sorted(k for k, v in meta.metrics.items() if not np.isfinite(v))
    return f"non-finite local metrics: {', '.join(bad)}" if bad else None
