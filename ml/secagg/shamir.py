"""Shamir secret sharing over the prime field GF(2^521 - 1), for 256-bit secrets.

A secret s is the constant term of a random polynomial of degree t - 1; the share of the member
at x (x >= 1) is the polynomial's value there. Any t shares give s back by Lagrange
interpolation at 0; fewer say nothing about it (every secret fits them equally well).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

PRIME = 2**521 - 1  # a Mersenne prime, larger than any 256-bit secret


class SharingError(ValueError):
    """Shares cannot give a secret back (too few, repeated or out of the field)."""


def split(secret: int, threshold: int, xs: Iterable[int],
          coefficients: list[int] | None = None) -> dict[int, int]:
    """The shares of `secret` at each x, any `threshold` of which rebuild it.

    `coefficients` (degree 1 and up) are random unless given; tests give them to check
    against hand-computed values.
    """
    xs = list(xs)
    if not 0 <= secret < PRIME:
        raise SharingError("the secret must be a non-negative integer below the field's prime")
    if not 1 <= threshold <= len(xs):
        raise SharingError(f"threshold {threshold} must be between 1 and the {len(xs)} shareholders")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise SharingError("share positions must be distinct and non-zero")
    if coefficients is None:
        coefficients = [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    if len(coefficients) != threshold - 1:
        raise SharingError(f"a threshold of {threshold} needs {threshold - 1} coefficients")
    polynomial = [secret, *coefficients]
    return {x: _evaluate(polynomial, x) for x in xs}


def combine(shares: Mapping[int, int]) -> int:
    """The secret behind `shares` (exactly `threshold` or more of them), by interpolation at 0."""
    if not shares:
        raise SharingError("no shares to combine")
    total = 0
    for x_i, y_i in shares.items():
        numerator, denominator = 1, 1
        for x_j in shares:
            if x_j != x_i:
                numerator = numerator * -x_j % PRIME
                denominator = denominator * (x_i - x_j) % PRIME
        total = (total + y_i * numerator * pow(denominator, -1, PRIME)) % PRIME
    return total


def _evaluate(polynomial: list[int], x: int) -> int:
    result = 0
    for coefficient in reversed(polynomial):  # Horner's rule
        result = (result * x + coefficient) % PRIME
    return result
