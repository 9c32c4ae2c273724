"""The broadcaster: what it sends, and what it sends again after the broker lost the topics."""

from __future__ import annotations

from typing import Any

import pytest

from aggregator import broadcast
from aggregator.broadcast import Broadcaster
from client import Task
from client.models import Topics
from schema import dataplane
from schema.lifecycle import TaskStatus


class FakeWriter:
    """Records what would have been sent; `broker` and `renew` as the resend path uses them."""

    broker = "unused:9092"

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes]] = []
        self.renewed = 0

    def send(self, topic: str, *, kind: str, round: int, payload: bytes, **_: Any) -> str:
        self.sent.append((kind, round, payload))
        return "id"

    def renew(self) -> None:
        self.renewed += 1


class Encoder:
    """A payload maker that counts its calls."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return self.payload


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch) -> FakeWriter:
    class NoAdmin:
        def __init__(self, _broker: object) -> None: ...

        def create(self, _topics: list[str]) -> None: ...

    monkeypatch.setattr(broadcast, "TopicAdmin", NoAdmin)
    return FakeWriter()


def a_task() -> Task:
    return Task(task_id="t1", name="task", creator="alice", status=TaskStatus.STARTED,
                topics=Topics(broadcast="b", updates="u"))


def test_round_weights_are_encoded_to_send_and_again_only_for_a_resend(writer: FakeWriter) -> None:
    """The round's weights are encoded once to be sent, and kept only as how to encode them: a
    resend (after the broker lost the topics) encodes the latest round's again, the same bytes,
    after the architecture; an earlier round's encoder is never called again."""
    broadcaster = Broadcaster(writer, a_task())  # type: ignore[arg-type]
    round_1, round_2 = Encoder(b"weights of round 1"), Encoder(b"weights of round 2")
    broadcaster.architecture(b"architecture")
    broadcaster.weights(1, round_1)
    broadcaster.weights(2, round_2)

    broadcaster.resend()

    assert writer.sent == [(dataplane.ARCHITECTURE, 0, b"architecture"),
                           (dataplane.WEIGHTS, 1, b"weights of round 1"),
                           (dataplane.WEIGHTS, 2, b"weights of round 2"),
                           (dataplane.ARCHITECTURE, 0, b"architecture"),
                           (dataplane.WEIGHTS, 2, b"weights of round 2")]
    assert (round_1.calls, round_2.calls, writer.renewed) == (1, 2, 1)
