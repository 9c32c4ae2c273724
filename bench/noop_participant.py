"""A participant without training, as a process of its own, for benches: it answers every round
with the global weights unchanged (plain), or speaks secure aggregation with a zero change
(privacy modes 2 and 3; mode 3 still clips and adds its noise). It signs what it sends and
believes only the creator's broadcasts, as the real daemon does. No TensorFlow is loaded.

    python bench/noop_participant.py TASK --api URL --bootstrap HOST:PORT --keys-dir DIR \\
        [--samples 100] [--scale 1] [--stats FILE] [--send-lock FILE]   # token: MUSKETEER_TOKEN

--scale S sends the weights times S instead (plain tasks only): with S a power of two (or 0) the
update is exact in float32, so a test can know the sample-weighted mean to the bit.

--send-lock makes the processes that name the same file send one at a time (flock), a diagnostic
to tell reassembling interleaved updates apart from the rest of a round.

On the final model it writes {"rounds": [...], "bytes_sent": N} to --stats and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from client import MusketeerClient
from client.keys import KeyRing
from client.keys_api import ensure_registered
from schema import dataplane, privacy
from schema.dataplane import UpdateMeta
from streams.codec import bundle_to_weights, decode_bundle, encode_bundle, keras_weights_to_bundle
from streams.reader import PayloadReader, Received
from streams.signing import Signer, Verifier
from streams.writer import PayloadWriter

if TYPE_CHECKING:
    # Loaded only for a secure task: its DP accountant pulls in SciPy, about 1.2 s of a ~2 s
    # start-up, which 32 processes on two cores would pay for nothing on a plain task.
    from participant.secure import SecureInputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task")
    parser.add_argument("--api", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--keys-dir", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--scale", type=float, default=1.0, help="send the weights times this (plain tasks)")
    parser.add_argument("--stats", type=Path)
    parser.add_argument("--send-lock", type=Path, help="send while holding flock on this file")
    args = parser.parse_args()
    client = MusketeerClient(args.api, os.environ.get("MUSKETEER_TOKEN"))
    ring = KeyRing(args.keys_dir, client.me().username)
    ensure_registered(client, ring)
    deadline = time.monotonic() + 600
    while (task := client.get_task(args.task)).status != "STARTED":
        if time.monotonic() > deadline or task.status in ("FAILED", "DELETED", "COMPLETED"):
            print(f"task {args.task} is {task.status}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    return follow(client, task, ring, args)


def follow(client: MusketeerClient, task: Any, ring: KeyRing, args: argparse.Namespace) -> int:
    writer = PayloadWriter(args.bootstrap, signer=Signer(ring.recorded(task.keys, task.name)))
    sent = {"bytes": 0}

    def send(kind: str, round_no: int, payload: bytes) -> str:
        sent["bytes"] += len(payload)
        with held(args.send_lock):
            return writer.send(str(task.topics.updates), task_id=task.task_id, round=round_no, kind=kind,
                               sender=ring.username, payload=payload)

    secure = secure_inputs(task, ring, send) if privacy.secure(task.pom) else None
    creator = [k for k in client.task_member_keys(task.name) if k.username == task.creator]
    rounds: list[int] = []
    # When each round's weights were complete here, and when the update was acknowledged (epoch s).
    timeline: list[dict[str, float]] = []
    with PayloadReader(args.bootstrap, [str(task.topics.broadcast)], verifier=Verifier(creator)) as reader:
        while True:
            for delivery in reader.poll(1.0):
                if not isinstance(delivery, Received):
                    continue
                payload = delivery.payload
                if payload.kind in (dataplane.FINAL, dataplane.STOP):
                    if args.stats:
                        args.stats.write_text(json.dumps({"rounds": rounds, "bytes_sent": sent["bytes"],
                                                          "timeline": timeline}))
                    return 0 if payload.kind == dataplane.FINAL else 1
                bundle = decode_bundle(payload.data)
                if payload.kind == dataplane.WEIGHTS and payload.round not in rounds:
                    rounds.append(payload.round)
                    received = time.time()
                    answer(secure, send, payload.round, bundle_to_weights(bundle), args.samples, args.scale)
                    timeline.append({"round": payload.round, "received": received, "sent": time.time()})
                elif payload.kind in dataplane.SECURE_BROADCASTS and secure is not None:
                    secure.on_broadcast(payload.kind, payload.round, bundle)


def secure_inputs(task: Any, ring: KeyRing, send: Any) -> SecureInputs:
    """This participant's side of secure aggregation (imported here: see TYPE_CHECKING above)."""
    from participant.secure import SecureInputs

    return SecureInputs(task.task_id, ring.username, task.definition, task.pom, len(task.participants),
                        send, lambda text: print(text, flush=True))


@contextlib.contextmanager
def held(lock: Path | None) -> Iterator[None]:
    """An exclusive flock on `lock` for the block (nothing when None)."""
    if lock is None:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def answer(secure: SecureInputs | None, send: Any, round_no: int, weights: list[np.ndarray], samples: int,
           scale: float = 1.0) -> None:
    """The global weights back, unchanged or times `scale` (plain), or a zero change in the secure sum."""
    if secure is None:
        meta = UpdateMeta(samples=samples, test_samples=0, metrics={})
        sent = weights if scale == 1.0 else [(w * scale).astype(w.dtype) for w in weights]
        send(dataplane.UPDATE, round_no, encode_bundle(keras_weights_to_bundle(sent, meta.model_dump())))
    else:
        from participant.trained import Trained

        trained = Trained(list(weights), list(weights), samples, 0, {}, 0.0)
        secure.start(round_no, "update", secure.model_input(trained))


if __name__ == "__main__":
    raise SystemExit(main())
