"""Secure aggregation's pieces against reference values, and one round of the protocol with every
kind of dropout, in memory (the same round over Kafka is in tests/test_secure_aggregation.py)."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ml.secagg.dp import Budget, NoisySum, clip, epsilon
from ml.secagg.masking import agree, dequantize, derive, keystream, quantize
from ml.secagg.protocol import ClientRound, ProtocolError, ServerRound
from ml.secagg.shamir import PRIME, SharingError, combine, split


def test_shamir_matches_the_textbook_example() -> None:
    """f(x) = 1234 + 166x + 94x^2 gives the shares of Shamir's worked example (as on Wikipedia);
    any three rebuild 1234, two do not."""
    shares = split(1234, 3, range(1, 7), coefficients=[166, 94])
    assert shares == {1: 1494, 2: 1942, 3: 2578, 4: 3402, 5: 4414, 6: 5614}
    assert combine({2: 1942, 4: 3402, 5: 4414}) == 1234
    assert combine({1: 1494, 6: 5614}) != 1234


def test_shamir_rebuilds_256_bit_secrets_from_any_threshold_subset() -> None:
    """Random 256-bit secrets, 3 of 5: every 3-subset rebuilds it."""
    secret = int.from_bytes(bytes(range(32)), "big")
    shares = split(secret, 3, [1, 2, 3, 4, 5])
    for left_out in ((1, 2), (3, 4), (1, 5)):
        assert combine({x: y for x, y in shares.items() if x not in left_out}) == secret
    with pytest.raises(SharingError):
        split(PRIME, 2, [1, 2])
    with pytest.raises(SharingError):
        split(1, 4, [1, 2, 3])


def test_x25519_agreement_and_hkdf_match_their_rfc_vectors() -> None:
    """RFC 7748 §6.1 (X25519 Diffie-Hellman) and RFC 5869 test case 3 (HKDF-SHA256, no salt, no
    info), the two primitives every mask seed comes from."""
    alice = X25519PrivateKey.from_private_bytes(bytes.fromhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    bob_public = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert agree(alice, bob_public, b"") == derive(shared, b"")
    assert derive(b"\x0b" * 22, b"").hex() == "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"


def test_quantised_values_survive_the_ring_and_masks_cancel() -> None:
    """Quantise, add and subtract a keystream mod 2^64, dequantise: the values come back."""
    values = np.array([-3.25, 0.0, 1e6, 7.125e-6])
    scale = 2.0**30
    mask = keystream(b"k" * 32, len(values))
    assert np.allclose(dequantize((quantize(values, scale) + mask) - mask, scale), values, atol=1e-9)
    assert len(set(keystream(b"a" * 32, 1000).tolist())) == 1000
    with pytest.raises(ValueError, match="too large"):
        quantize(np.array([2.0**40]), 2.0**30)


def run_round(names: list[str], threshold: int, vanish: dict[str, str]) -> tuple[np.ndarray, list[str]]:
    """One in-memory round where members vanish before 'share', 'mask' or 'reveal'."""
    rng = np.random.default_rng(3)
    inputs = {n: rng.normal(size=50) for n in names}
    clients = {n: ClientRound(n, b"ctx", threshold) for n in names}
    server = ServerRound(b"ctx", threshold, 50)
    for n, c in clients.items():
        server.add_advertise(n, c.advertise())
    for n, c in clients.items():
        if vanish.get(n) != "share":
            server.add_shares(n, c.shares(server.roster()))
    for n in server.share_list():
        if vanish.get(n) != "mask":
            server.add_masked(n, clients[n].masked(quantize(inputs[n], 2.0**32), server.share_list()))
    request = server.unmask_request()
    for n in request["survivors"]:
        if vanish.get(n) != "reveal":
            server.add_reveal(n, clients[n].reveal(**request))
    total = dequantize(server.total(), 2.0**32)
    assert np.allclose(total, sum(inputs[n] for n in request["survivors"]), atol=1e-7)
    return total, request["survivors"]


def test_a_round_survives_dropouts_at_every_step_down_to_the_threshold() -> None:
    """Six members, threshold three: one vanishes before sharing, one before masking, one before
    revealing; the sum of the four who sent masked inputs comes out exact from three reveals."""
    _, survivors = run_round(["ann", "bea", "cid", "dan", "eve", "fay"], 3,
                             {"bea": "share", "dan": "mask", "eve": "reveal"})
    assert survivors == ["ann", "cid", "eve", "fay"]


def test_under_the_threshold_the_sum_cannot_be_unmasked() -> None:
    """With too few reveals the aggregator cannot rebuild the masks, and says who is missing."""
    with pytest.raises(ProtocolError, match="under the threshold of 3; missing: cid"):
        run_round(["ann", "bea", "cid", "dan"], 3, {"dan": "mask", "cid": "reveal"})


def test_a_member_never_reveals_both_shares_of_anyone() -> None:
    """Asked for a member's self-mask and pairwise shares at once, or asked twice differently,
    a participant refuses."""
    client = ClientRound("ann", b"ctx", 2)
    with pytest.raises(ProtocolError, match="both shares"):
        client.reveal(["ann", "bea"], ["bea"])
    client.held = {"ann": (1, 2), "bea": (3, 4), "cid": (5, 6)}
    client.reveal(["ann", "bea"], ["cid"])
    with pytest.raises(ProtocolError, match="again with other survivors"):
        client.reveal(["ann", "cid"], ["bea"])


def test_epsilon_grows_with_rounds_and_shrinks_with_noise() -> None:
    """The RDP accountant: more rounds spend more, more noise spends less; the budget stops
    before the round that would pass the target."""
    assert epsilon(1.0, 1, 1e-5) < epsilon(1.0, 10, 1e-5)
    assert epsilon(2.0, 10, 1e-5) < epsilon(1.0, 10, 1e-5)
    budget = Budget(1.0, 1e-5, target=(epsilon(1.0, 3, 1e-5) + epsilon(1.0, 4, 1e-5)) / 2)
    assert budget.stop_before(3) is None and "round 4" in (budget.stop_before(4) or "")


def test_central_dp_clips_each_update_and_noises_the_sum() -> None:
    """Mode 1 with noise: each difference clipped to clip_norm; noise of stddev z x clip_norm on
    the sum, divided by the number of updates."""
    global_weights = [np.zeros(20000, np.float32)]
    strategy = NoisySum(global_weights, clip_norm=1.0, noise_multiplier=2.0, rng=np.random.default_rng(0))
    strategy.add([np.full(20000, 10.0, np.float32)], 5)
    strategy.add([np.full(20000, -10.0, np.float32)], 5)
    result = strategy.result()[0].astype(np.float64)
    assert abs(result.mean()) < 0.05  # the clipped updates cancel
    assert result.std() == pytest.approx(2.0 * 1.0 / 2, rel=0.05)
    clipped, norm = clip([np.array([3.0, 4.0])], 1.0)
    assert norm == 5.0 and np.allclose(clipped[0], [0.6, 0.8])
