"""Trust on the data plane, unit by unit: signatures, the refusals they drive, bounded claims and
robust aggregation. The same refusals on a real task, against an outsider on the broker, are in
tests/test_forged_updates.py."""

from __future__ import annotations

import base64
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aggregator.fold import Refused, fold_update
from aggregator.verify import Accepted, Gate
from ml.strategies import for_round
from schema import dataplane
from schema.dataplane import UpdateMeta
from schema.envelope import Envelope, EnvelopeError
from schema.keys import MemberKey
from streams.codec import decode_bundle, encode_bundle, keras_weights_to_bundle
from streams.framing import FrameError, Payload, Reassembler, split
from streams.reader import Received
from streams.signing import Signer, Verifier


def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


def member_key(name: str, who: Signer, revoked: bool = False) -> MemberKey:
    return MemberKey(name, who.fingerprint, who.public_key, revoked)


def signed_frames(who: Signer | None, payload: bytes = b"x" * 3000, **fields: object) -> list[tuple[Envelope, bytes]]:
    names = {"task_id": "task-a", "round": 1, "kind": "update", "sender": "john", **fields}
    frames = [(env, bytes(chunk)) for env, chunk in split(payload=payload, chunk_size=1000, **names)]  # type: ignore[arg-type]
    if who is None:
        return frames
    signature = who.sign(frames[0][0])
    return [(replace(env, signature=signature), chunk) for env, chunk in frames]


def feed(reassembler: Reassembler, frames: list[tuple[Envelope, bytes]]) -> list[Payload | str]:
    """Each frame's outcome: a completed payload, or the refusal's message."""
    out: list[Payload | str] = []
    for envelope, chunk in frames:
        try:
            payload = reassembler.add(envelope, chunk)
        except FrameError as exc:
            out.append(str(exc))
        else:
            if payload is not None:
                out.append(payload)
    return out


# --- signatures ---------------------------------------------------------------------------------


def test_a_signature_covers_task_round_kind_sender_message_and_digest() -> None:
    """Changing any signed field of a signed envelope breaks its signature."""
    john = signer()
    verify = Verifier([member_key("john", john)])
    envelope = signed_frames(john)[0][0]
    assert verify(envelope) is None
    for change in ({"task_id": "task-b"}, {"round": 2}, {"kind": "stats"}, {"message_id": "other"},
                   {"payload_sha256": "0" * 64}):
        assert "bad signature" in (verify(replace(envelope, **change)) or ""), change
    # The sender is signed too: another member's name on john's signature is not believed.
    jack = signer()
    both = Verifier([member_key("john", john), member_key("jack", jack)])
    assert "bad signature" in (both(replace(envelope, sender="jack")) or "")


def test_a_signature_travels_in_the_headers_and_round_trips() -> None:
    """The signature header survives to_headers / from_headers; unsigned frames carry none."""
    envelope = signed_frames(signer())[0][0]
    assert Envelope.from_headers(envelope.to_headers()) == envelope
    plain = signed_frames(None)[0][0]
    assert all(name != "signature" for name, _ in plain.to_headers())
    assert Envelope.from_headers(plain.to_headers()).signature == ""
    with pytest.raises(EnvelopeError, match="signature"):
        replace(envelope, signature="not-a-signature")


@pytest.mark.parametrize("case, words", [
    ("unsigned", "unsigned message"),
    ("wrong key", "bad signature"),
    ("revoked key", "was revoked"),
    ("non-member", "no signing key is recorded for 'mallory'"),
])
def test_each_refusal_of_the_verifier_names_its_reason(case: str, words: str) -> None:
    """Unsigned, signed by another key, signed by a revoked key, or from a non-member: refused."""
    john, mallory = signer(), signer()
    keys = [member_key("john", john, revoked=case == "revoked key")]
    frames = {
        "unsigned": signed_frames(None),
        "wrong key": signed_frames(mallory),
        "revoked key": signed_frames(john),
        "non-member": signed_frames(mallory, sender="mallory"),
    }[case]
    assert words in (Verifier(keys)(frames[0][0]) or "")


def test_a_refused_payload_keeps_no_byte_and_does_not_block_the_real_one() -> None:
    """The reassembler asks the verifier at the first frame: a forgery is refused once, its
    other frames dropped quietly, and the member's genuine payload still completes."""
    john, mallory = signer(), signer()
    reassembler = Reassembler(verifier=Verifier([member_key("john", john)]))
    forged = signed_frames(mallory, payload=b"f" * 3000)
    genuine = signed_frames(john, payload=b"g" * 3000)

    outcomes = feed(reassembler, forged) + feed(reassembler, genuine)

    assert len(outcomes) == 2
    assert isinstance(outcomes[0], str) and "bad signature" in outcomes[0]
    assert isinstance(outcomes[1], Payload) and outcomes[1].data == b"g" * 3000
    assert reassembler.pending_bytes == 0


def test_a_frame_with_another_signature_cannot_join_a_genuine_payload() -> None:
    """A forged chunk under a genuine message id (another signature) is refused; the rest completes."""
    john, mallory = signer(), signer()
    reassembler = Reassembler(verifier=Verifier([member_key("john", john)]))
    genuine = signed_frames(john, payload=b"g" * 3000)
    forged_chunk = (replace(genuine[1][0], signature=mallory.sign(genuine[1][0])), b"f" * len(genuine[1][1]))

    outcomes = feed(reassembler, [genuine[0], forged_chunk, *genuine[1:]])

    assert isinstance(outcomes[0], str) and "signature" in outcomes[0]
    assert isinstance(outcomes[-1], Payload) and outcomes[-1].data == b"g" * 3000


# --- the gate: replays into another task or round --------------------------------------------


class RecordingRecorder:
    def __init__(self) -> None:
        self.rejections: list[tuple[int, str, str]] = []

    def reject(self, round_no: int, sender: str, reason: str, message_id: str | None) -> None:
        self.rejections.append((round_no, sender, reason))


def delivered(frames: list[tuple[Envelope, bytes]]) -> Received:
    envelope = frames[0][0]
    data = b"".join(chunk for _, chunk in frames)
    payload = Payload(envelope.task_id, envelope.round, envelope.kind, envelope.sender,
                      envelope.message_id, envelope.payload_size, envelope.payload_sha256, data)
    return Received(payload, "updates", 0, 0)


@pytest.mark.parametrize("replayed, words", [
    ({"task_id": "task-b"}, "message for another task"),
    ({"round": 1}, "stale update"),
])
def test_a_genuine_update_replayed_into_another_task_or_round_is_refused(replayed: dict[str, object],
                                                                        words: str) -> None:
    """A member's validly signed update, replayed elsewhere, passes the signature check (it is
    genuine) and is refused by the gate, recorded with the reason."""
    john = signer()
    frames = signed_frames(john, payload=encode_bundle(keras_weights_to_bundle([np.zeros(3)])), **replayed)
    assert Verifier([member_key("john", john)])(frames[0][0]) is None
    recorder = RecordingRecorder()
    gate = Gate("task-a", ["jack", "john"], recorder)  # type: ignore[arg-type]

    assert gate.accept(delivered(frames), 2, dataplane.UPDATE, set()) is None
    assert len(recorder.rejections) == 1 and words in recorder.rejections[0][2]


# --- bounded claims ------------------------------------------------------------------------------


def update(weights: list[np.ndarray], samples: int) -> Accepted:
    meta = UpdateMeta(samples=samples, test_samples=1, metrics={})
    bundle = decode_bundle(encode_bundle(keras_weights_to_bundle(weights, meta.model_dump())))
    return Accepted("john", "m1", bundle)


def test_an_update_claiming_more_samples_than_allowed_is_refused() -> None:
    """Over the cap (max_samples, else training_size), the update is refused, not capped."""
    weights = [np.ones((2, 2), np.float32)]
    strategy = for_round({}, weights)

    outcome = fold_update(strategy, update(weights, 1_000_000_000), sample_cap=500)

    assert isinstance(outcome, Refused) and "claims 1000000000 samples" in outcome.reason
    assert strategy.count == 0
    assert not isinstance(fold_update(strategy, update(weights, 500), sample_cap=500), Refused)


# --- robust aggregation --------------------------------------------------------------------------


def folded(definition: dict[str, object], updates: list[float], global_value: float = 0.0) -> float:
    """One coordinate's result when each update sets every weight to a value."""
    global_weights = [np.full((4, 3), global_value, np.float32), np.full(5, global_value, np.float32)]
    strategy = for_round(definition, global_weights)
    for value in updates:
        strategy.add([np.full_like(w, value) for w in global_weights], 10)
    result = strategy.result()
    assert [r.shape for r in result] == [(4, 3), (5,)] and all(r.dtype == np.float32 for r in result)
    return float(result[0][0, 0])


def test_median_and_trimmed_mean_ignore_a_hundredfold_update() -> None:
    """With one member sending ×100, fedavg moves far; median and trimmed mean do not."""
    values = [1.0, 2.0, 3.0, 4.0, 400.0]
    assert folded({"aggregation": "fedavg"}, values) == pytest.approx(82.0)
    assert folded({"aggregation": "median"}, values) == pytest.approx(3.0)
    assert folded({"aggregation": "trimmed_mean", "trim": 0.2}, values) == pytest.approx(3.0)


def test_trimmed_mean_trims_per_coordinate_and_never_everything() -> None:
    """Each coordinate drops its own extremes; with two updates nothing can be dropped."""
    global_weights = [np.zeros(2, np.float32)]
    strategy = for_round({"aggregation": "trimmed_mean", "trim": 0.25}, global_weights)
    for row in ([0, 100], [1, 1], [2, 2], [100, 0]):
        strategy.add([np.asarray(row, np.float32)], 1)
    assert strategy.result()[0].tolist() == [1.5, 1.5]
    assert folded({"aggregation": "trimmed_mean", "trim": 0.4}, [1.0, 3.0]) == pytest.approx(2.0)


@pytest.mark.parametrize("definition", [{"aggregation": "median"}, {"aggregation": "trimmed_mean", "trim": 0.34}])
def test_a_robust_rule_spools_an_update_without_copying_it(definition: dict[str, object]) -> None:
    """Each 4 MB update is written to the spool from its own memory (read-only, as a mapped
    update is): Python allocates well under one update's size for it, where `.tobytes()` made a
    4 MB copy, and the result is still the middle value of each coordinate."""
    import tracemalloc

    global_weights = [np.zeros(1_000_000, np.float32), np.zeros(3, np.float32)]
    strategy = for_round(definition, global_weights)
    peaks = []
    for value in (1.0, 5.0, 2.0):
        update = [np.full_like(w, value) for w in global_weights]
        for array in update:
            array.flags.writeable = False
        tracemalloc.start()
        strategy.add(update, 10)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert max(peaks) < 1_000_000, peaks
    assert [float(r[0]) for r in strategy.result()] == [2.0, 2.0]


def test_clip_norm_bounds_each_updates_step_from_the_global_model() -> None:
    """An update's difference from the global model is scaled to clip_norm when longer."""
    global_weights = [np.zeros((3,), np.float32), np.zeros((1,), np.float32)]
    strategy = for_round({"aggregation": "fedavg", "clip_norm": 1.0}, global_weights)
    strategy.add([np.asarray([3.0, 0, 0], np.float32), np.asarray([4.0], np.float32)], 1)  # norm 5
    strategy.add([np.asarray([0.1, 0, 0], np.float32), np.asarray([0.0], np.float32)], 1)  # norm .1
    first, second = strategy.result()
    assert first.tolist() == pytest.approx([(0.6 + 0.1) / 2, 0, 0])
    assert second.tolist() == pytest.approx([0.8 / 2])


def test_unknown_aggregations_and_trims_are_refused_at_creation() -> None:
    """The definition names a rule from the registry, with a trim below one half."""
    from pydantic import ValidationError

    from schema.definition import TaskDefinition

    with pytest.raises(ValidationError, match="unknown aggregation 'krum'"):
        TaskDefinition.model_validate({"quorum": 1, "rounds": 1, "aggregation": "krum"})
    with pytest.raises(ValidationError, match="trim"):
        TaskDefinition.model_validate({"quorum": 1, "rounds": 1, "trim": 0.5})
    with pytest.raises(ValidationError, match="clip_norm"):
        TaskDefinition.model_validate({"quorum": 1, "rounds": 1, "clip_norm": 0})


def test_signatures_are_base64_of_64_bytes() -> None:
    """What travels in the header is a plain Ed25519 signature."""
    envelope = signed_frames(signer())[0][0]
    assert len(base64.b64decode(envelope.signature)) == 64
