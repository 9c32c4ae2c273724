"""Broadcast: the aggregator writes each model once to the task's broadcast topic.

It remembers what the participants must have (the statistics, the architecture, the open
round's weights), so a broker that lost the topics can be sent all of it again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from client import Task
from schema import dataplane
from streams.codec import ArrayBundle, encode_bundle
from streams.topics import TopicAdmin
from streams.writer import ResilientWriter


class Broadcaster:
    """Sends the task's broadcasts as its creator; `resend` after the broker lost the topics."""

    def __init__(self, writer: ResilientWriter, task: Task) -> None:
        if not task.topics.broadcast or not task.topics.updates:
            raise ValueError(f"task '{task.name}' has no data-plane topics")
        self.writer = writer
        self.task = task
        self.topic = task.topics.broadcast
        # What to send again after a broker restart: each kind's round and how to make its payload.
        self._kept: dict[str, tuple[int, Callable[[], bytes]]] = {}

    def statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
        """The global per-feature mean and standard deviation (round 0)."""
        arrays = {"mean": np.asarray(mean, dtype=np.float64), "std": np.asarray(std, dtype=np.float64)}
        self._send(dataplane.STANDARDISE, 0, encode_bundle(ArrayBundle(arrays=arrays, meta={})), keep=True)

    def architecture(self, payload: bytes) -> None:
        """The model's architecture and initial weights (round 0)."""
        self._send(dataplane.ARCHITECTURE, 0, payload, keep=True)

    def keep_architecture(self, payload: bytes) -> None:
        """Remember (without sending) the architecture to resend: a resumed aggregator's."""
        self._kept[dataplane.ARCHITECTURE] = (0, _given(payload))

    def weights(self, round_no: int, make_payload: Callable[[], bytes]) -> None:
        """The model every participant trains in `round_no`, encoded by `make_payload`.

        Why a function and not the bytes: the round's weights are held anyway, and a resend
        encodes them again, so a model-sized payload lives only while it is being sent.
        The previous round's is forgotten before this one is encoded.
        """
        self._kept[dataplane.WEIGHTS] = (round_no, make_payload)
        self._send(dataplane.WEIGHTS, round_no, make_payload())

    def final(self, round_no: int, payload: bytes) -> None:
        """The final model."""
        self._send(dataplane.FINAL, round_no, payload)

    def control(self, kind: str, round_no: int, meta: dict[str, Any],
                arrays: dict[str, np.ndarray] | None = None) -> None:
        """A protocol message (secure aggregation's roster, share list and unmask request)."""
        self._send(kind, round_no, encode_bundle(ArrayBundle(arrays=arrays or {}, meta=meta)))

    def stop(self, reason: str) -> None:
        """Tell participants the task failed or was stopped."""
        self._send(dataplane.STOP, 0, encode_bundle(ArrayBundle(arrays={}, meta={"reason": reason})))

    def resend(self) -> None:
        """After a broker restart lost the topics: recreate them and send what must be there."""
        TopicAdmin(self.writer.broker).create([self.topic, str(self.task.topics.updates)])
        self.writer.renew()  # a new producer: nothing queued for the lost topics, fresh metadata
        for kind in (dataplane.STANDARDISE, dataplane.ARCHITECTURE, dataplane.WEIGHTS):
            if kind in self._kept:
                round_no, make_payload = self._kept[kind]
                self._send(kind, round_no, make_payload())

    def _send(self, kind: str, round_no: int, payload: bytes, keep: bool = False) -> None:
        if keep:
            self._kept[kind] = (round_no, _given(payload))
        self.writer.send(self.topic, task_id=self.task.task_id, round=round_no, kind=kind,
                         sender=self.task.creator, payload=payload, key=self.task.creator)


def _given(payload: bytes) -> Callable[[], bytes]:
    """A payload kept as it is (small, or sent once at the start: the statistics, the architecture)."""
    return lambda: payload
