"""What signing costs on the hot path: per payload, one Ed25519 signature by the sender and one
verification by each reader, next to what a payload costs anyway (its sha256 and framing).

    .venv/bin/python bench/signing_bench.py [--params 1000000,10000000] [--repeat 20]

Prints a markdown table. Seconds per round with and without signatures come from
bench/round_bench.py, run on this commit and on the one before signing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schema.keys import MemberKey
from streams.codec import encode_bundle, keras_weights_to_bundle
from streams.framing import Reassembler, split
from streams.signing import Signer, Verifier


def timed(action: Callable[[], object], repeat: int) -> float:
    """Median seconds of `repeat` runs."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def row(params: int, signer: Signer, verifier: Verifier, repeat: int) -> str:
    """One table row: the costs for a model of `params` float32 parameters."""
    payload = encode_bundle(keras_weights_to_bundle([np.random.default_rng(0).random(params, np.float32)]))
    frames = split("task", 1, "update", "john", payload)
    signature = signer.sign(frames[0][0])
    signed = [(replace(env, signature=signature), bytes(chunk)) for env, chunk in frames]

    def reassemble() -> None:
        reassembler = Reassembler(verifier=verifier)
        for envelope, chunk in signed:
            reassembler.add(envelope, chunk)

    split_s = timed(lambda: split("task", 1, "update", "john", payload), repeat)
    sign_s = timed(lambda: signer.sign(frames[0][0]), repeat)
    verify_s = timed(lambda: verifier(signed[0][0]), repeat)
    reassemble_s = timed(reassemble, max(3, repeat // 4))
    share = (sign_s + verify_s) / (split_s + reassemble_s)
    return (f"| {params:,} | {len(payload) / 2**20:.1f} | {len(frames)} | {split_s * 1e3:.2f} | "
            f"{sign_s * 1e3:.3f} | {verify_s * 1e3:.3f} | {reassemble_s * 1e3:.1f} | {share:.3%} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="1000000,10000000", help="model sizes in float32 parameters")
    parser.add_argument("--repeat", type=int, default=20, help="runs per measurement (median shown)")
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    verifier = Verifier([MemberKey("john", signer.fingerprint, signer.public_key)])
    print("| params | payload MiB | frames | split + sha256 ms | sign ms | verify ms | reassemble ms "
          "| signing share of split + reassemble |")
    print("|---|---|---|---|---|---|---|---|")
    for params in (int(p) for p in args.params.split(",")):
        print(row(params, signer, verifier, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
