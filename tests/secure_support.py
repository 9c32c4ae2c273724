"""A participant that speaks the secure-aggregation protocol without training, for tests that need
to know exactly what each member put in, and to make members vanish at a chosen step."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from client import Task
from participant.secure import SecureInputs
from participant.trained import Trained
from schema import dataplane
from streams.codec import bundle_to_weights, decode_bundle
from streams.reader import PayloadReader, Received
from streams.signing import Signer, Verifier
from streams.writer import PayloadWriter
from tests.training_support import Member

# Where a member may vanish: before advertising its keys, before its masked input, before revealing.
STEPS = ("advertise", "masked", "reveal")
_STEP_OF = {dataplane.WEIGHTS: "advertise", dataplane.SHARE_LIST: "masked", dataplane.UNMASK: "reveal"}


class ProtocolParticipant(threading.Thread):
    """Answers each round with global + `step` (every weight), weighted by `samples`."""

    def __init__(self, bootstrap: str, who: Member, task: Task, step: float, samples: int,
                 vanish: tuple[int, str] | None = None) -> None:
        super().__init__(name=f"secure-{who.name}", daemon=True)
        self.bootstrap, self.who, self.task, self.step, self.samples = bootstrap, who, task, step, samples
        self.vanish = vanish
        self.globals: dict[int, list[np.ndarray]] = {}
        self.log: list[str] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self._follow()
        except BaseException as exc:  # the test reports it
            self.error = exc

    def _follow(self) -> None:
        task, who = self.task, self.who
        writer = PayloadWriter(self.bootstrap, signer=Signer(who.keys.recorded(task.keys, task.name)))
        creator = [k for k in who.client.task_member_keys(task.name) if k.username == task.creator]
        secure = SecureInputs(task.task_id, who.name, task.definition, task.pom, len(task.participants),
                              lambda kind, r, data: writer.send(str(task.topics.updates), task_id=task.task_id,
                                                                round=r, kind=kind, sender=who.name, payload=data),
                              self.log.append)
        deadline = time.monotonic() + 300
        with PayloadReader(self.bootstrap, [str(task.topics.broadcast)], verifier=Verifier(creator)) as reader:
            while not self.stop.is_set() and time.monotonic() < deadline:
                for delivery in reader.poll(0.5):
                    if isinstance(delivery, Received) and not self._handle(secure, delivery):
                        return

    def _handle(self, secure: SecureInputs, delivery: Received) -> bool:
        """Take one broadcast; False once this member is done (the task ended, or it vanished)."""
        payload = delivery.payload
        if payload.kind in (dataplane.FINAL, dataplane.STOP):
            return False
        if self.vanish == (payload.round, _STEP_OF.get(payload.kind)):
            self.log.append(f"vanished in round {payload.round} before '{self.vanish[1]}'")
            return False
        bundle = decode_bundle(payload.data)
        if payload.kind == dataplane.WEIGHTS:
            global_weights = [np.array(w) for w in bundle_to_weights(bundle)]
            self.globals[payload.round] = global_weights
            trained = Trained(global_weights, [w + np.float32(self.step) for w in global_weights], self.samples,
                              0, {"loss": 1.0, "accuracy": 0.5}, 0.0)
            secure.start(payload.round, "update", secure.model_input(trained))
        elif payload.kind in dataplane.SECURE_BROADCASTS:
            secure.on_broadcast(payload.kind, payload.round, bundle)
        return True


def started_task(people: list[Member], definition: dict[str, Any], pom: int, name: str) -> None:
    """Create and join; every member registers the key its (in-test) daemon signs with."""
    alice, *sites = people
    alice.client.create_task(name, definition, pom=pom)
    for site in sites:
        site.client.join(name)
        site.register_key()
