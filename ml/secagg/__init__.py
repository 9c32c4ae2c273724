"""Secure aggregation (privacy modes 2 and 3): the aggregator learns only the sum of a round's
updates, never one participant's, and the round survives participants who vanish.

The protocol follows Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
Machine Learning" (CCS 2017), for an honest-but-curious aggregator: per round, each participant
advertises two fresh X25519 public keys (signed, like everything on the data plane, by its member
key); shares its mask secrets among the others with Shamir t-of-n (encrypted to each with
AES-GCM under an X25519/HKDF key); sends its update quantised to a ring of 2^64 and masked with a
self mask plus pairwise masks (AES-CTR keystreams from X25519/HKDF seeds) that cancel in the sum;
then reveals, for each other member, the share the aggregator needs: the self-mask share of a
survivor, or the pairwise-key share of one that dropped, never both.

`shamir.py` is the secret sharing, `masking.py` the ring arithmetic and keystreams,
`protocol.py` the two sides of one round as plain objects (no Kafka), `dp.py` clipping, noise and
the privacy accountant.
"""
