"""One round of secure aggregation, both sides, as plain objects: what each message carries and
what each side computes. The daemons move the messages over the task's topics.

    participant                          aggregator
    advertise()          ── keys ──▶     add_advertise()        (U1: who advertised)
                         ◀── roster ──   roster()
    shares(roster)       ── shares ──▶   add_shares()           (U2: who shared)
                         ◀── share list  share_list()
    masked(x, list)      ── masked ──▶   add_masked()           (U3: who sent a masked input)
                         ◀── unmask ──   unmask_request()
    reveal(request)      ── reveal ──▶   add_reveal(); total()  (the sum over U3)

`context` binds every derived key to one task, round and purpose, so nothing carries over from
one round to the next. Members are ordered by name; member i's share position is its index + 1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ml.secagg.masking import agree, derive, keystream, private_bytes, public_bytes
from ml.secagg.shamir import SharingError, combine, split

Array = np.ndarray[Any, Any]


class ProtocolError(ValueError):
    """A secure-aggregation message or step is wrong (the message says what and whose)."""


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError as exc:
        raise ProtocolError(f"{what} is not base64") from exc


def context(task_id: str, round_no: int, instance: str) -> bytes:
    """What binds one secure sum's keys: the task, the round and the instance."""
    return f"musketeer/secagg/{task_id}/{round_no}/{instance}".encode()


def positions(members: list[str]) -> dict[str, int]:
    """Each member's Shamir share position: its place among the names, from 1."""
    return {name: index for index, name in enumerate(sorted(members), start=1)}


def pair_sign(me: str, other: str) -> int:
    """+1 if my pairwise mask with `other` is added, -1 if subtracted (the other does the opposite)."""
    return 1 if me < other else -1


@dataclass
class Advertised:
    """A member's keys for one round: c (to receive shares), s (pairwise masks), and a
    commitment to its self-mask seed (so a rebuilt seed can be checked)."""

    c_public: bytes
    s_public: bytes
    b_commitment: str

    def to_meta(self) -> dict[str, str]:
        return {"c_public": _b64(self.c_public), "s_public": _b64(self.s_public),
                "b_commitment": self.b_commitment}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], who: str) -> Advertised:
        try:
            advertised = cls(_unb64(meta["c_public"], f"{who}'s c_public"),
                             _unb64(meta["s_public"], f"{who}'s s_public"), str(meta["b_commitment"]))
        except KeyError as exc:
            raise ProtocolError(f"{who}'s keys lack {exc.args[0]}") from exc
        if len(advertised.c_public) != 32 or len(advertised.s_public) != 32 or len(advertised.b_commitment) != 64:
            raise ProtocolError(f"{who}'s keys are not two X25519 public keys and a sha256")
        return advertised


def _commit(seed: bytes) -> str:
    return hashlib.sha256(b"musketeer/secagg/self-mask" + seed).hexdigest()


class ClientRound:
    """One participant's side of one round."""

    def __init__(self, me: str, context: bytes, threshold: int) -> None:
        self.me, self.context, self.threshold = me, context, threshold
        self._c = X25519PrivateKey.generate()
        self._s = X25519PrivateKey.generate()
        self._b = secrets.token_bytes(32)
        self.roster: dict[str, Advertised] = {}
        self.held: dict[str, tuple[int, int]] = {}  # from member: (its s share, its b share)
        self.answered: tuple[list[str], list[str]] | None = None

    def advertise(self) -> dict[str, str]:
        """Step 1: this round's public keys and self-mask commitment."""
        return Advertised(public_bytes(self._c), public_bytes(self._s), _commit(self._b)).to_meta()

    def shares(self, roster: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """Step 2: my s key and b seed in t-of-n shares, one encrypted to each other member."""
        self.roster = {name: Advertised.from_meta(meta, name) for name, meta in roster.items()}
        if self.me not in self.roster or len(self.roster) < self.threshold:
            raise ProtocolError(f"the roster ({len(self.roster)} members) lacks me or is under the "
                                f"threshold of {self.threshold}")
        where = positions(list(self.roster))
        s_shares = split(int.from_bytes(private_bytes(self._s), "big"), self.threshold, where.values())
        b_shares = split(int.from_bytes(self._b, "big"), self.threshold, where.values())
        self.held[self.me] = (s_shares[where[self.me]], b_shares[where[self.me]])
        sealed = {}
        for name, x in where.items():
            if name != self.me:
                plain = json.dumps({"from": self.me, "to": name, "s": hex(s_shares[x]), "b": hex(b_shares[x])})
                sealed[name] = self._seal(name, plain.encode())
        return sealed

    def _box(self, other: str) -> AESGCM:
        return AESGCM(agree(self._c, self.roster[other].c_public, self.context + b"/shares"))

    def _seal(self, to: str, plain: bytes) -> str:
        nonce = os.urandom(12)
        aad = self.context + f"/{self.me}/{to}".encode()
        return _b64(nonce + self._box(to).encrypt(nonce, plain, aad))

    def masked(self, x: Array, share_list: Mapping[str, Mapping[str, str]]) -> Array:
        """Step 3: open the shares addressed to me; my input plus self and pairwise masks."""
        for sender, sealed in share_list.items():
            if sender != self.me and self.me in sealed:
                self.held[sender] = self._open(sender, sealed[self.me])
        peers = [name for name in share_list if name != self.me]
        y = np.asarray(x, dtype=np.uint64) + keystream(derive(self._b, self.context + b"/self"), len(x))
        for peer in peers:
            mask = keystream(agree(self._s, self.roster[peer].s_public, self.context + b"/pair"), len(x))
            y = y + mask if pair_sign(self.me, peer) > 0 else y - mask
        return y

    def _open(self, sender: str, sealed: str) -> tuple[int, int]:
        if sender not in self.roster:
            raise ProtocolError(f"shares from {sender}, who is not on the roster")
        raw = _unb64(sealed, f"{sender}'s shares")
        try:
            plain = self._box(sender).decrypt(raw[:12], raw[12:], self.context + f"/{sender}/{self.me}".encode())
            content = json.loads(plain)
            if content["from"] != sender or content["to"] != self.me:
                raise ProtocolError(f"{sender}'s shares name other members")
            return int(content["s"], 16), int(content["b"], 16)
        except (InvalidTag, ValueError, KeyError) as exc:
            raise ProtocolError(f"cannot open the shares {sender} sent me: {exc}") from exc

    def reveal(self, survivors: list[str], dropped: list[str]) -> dict[str, dict[str, str]]:
        """Step 4: b shares of the survivors, s shares of the dropped; never both of one member."""
        request = (sorted(survivors), sorted(dropped))
        if set(survivors) & set(dropped):
            raise ProtocolError("the aggregator asks for both shares of one member: refused")
        if self.answered is not None and self.answered != request:
            # Two different answers could together give both shares of one member.
            raise ProtocolError("the aggregator asks again with other survivors: refused")
        if len(survivors) < self.threshold:
            raise ProtocolError(f"only {len(survivors)} survivors, under the threshold of {self.threshold}")
        self.answered = request
        return {"b": {n: hex(self.held[n][1]) for n in survivors if n in self.held},
                "s": {n: hex(self.held[n][0]) for n in dropped if n in self.held}}


@dataclass
class ServerRound:
    """The aggregator's side of one round: it only ever holds masked inputs and their sum."""

    context: bytes
    threshold: int
    length: int
    roster_: dict[str, Advertised] = field(default_factory=dict)
    sealed: dict[str, dict[str, str]] = field(default_factory=dict)
    total_: Array | None = None
    inputs: list[str] = field(default_factory=list)
    reveals: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    def add_advertise(self, who: str, meta: Mapping[str, Any]) -> None:
        self.roster_[who] = Advertised.from_meta(meta, who)

    def roster(self) -> dict[str, dict[str, str]]:
        return {name: keys.to_meta() for name, keys in sorted(self.roster_.items())}

    def add_shares(self, who: str, sealed: Mapping[str, Any]) -> None:
        expected = set(self.roster_) - {who}
        if who not in self.roster_ or set(sealed) != expected:
            raise ProtocolError(f"{who}'s shares are not one for each other member of the roster")
        self.sealed[who] = {to: str(value) for to, value in sealed.items()}

    def share_list(self) -> dict[str, dict[str, str]]:
        return dict(sorted(self.sealed.items()))

    def add_masked(self, who: str, y: Array) -> None:
        """Fold a masked input into the running sum (modulo 2^64), then forget it."""
        if who not in self.sealed:
            raise ProtocolError(f"a masked input from {who}, who did not share its secrets")
        if y.dtype != np.uint64 or y.shape != (self.length,):
            raise ProtocolError(f"{who}'s masked input is not {self.length} ring elements")
        self.total_ = y.copy() if self.total_ is None else self.total_ + y
        self.inputs.append(who)

    def unmask_request(self) -> dict[str, list[str]]:
        """Who survived (sent a masked input) and who dropped after sharing."""
        return {"survivors": sorted(self.inputs), "dropped": sorted(set(self.sealed) - set(self.inputs))}

    def add_reveal(self, who: str, meta: Mapping[str, Any]) -> None:
        if who not in self.inputs:
            raise ProtocolError(f"a reveal from {who}, who is not a survivor")
        self.reveals[who] = {"b": dict(meta.get("b", {})), "s": dict(meta.get("s", {}))}

    def total(self) -> Array:
        """The unmasked sum of the survivors' inputs (ProtocolError naming what is missing)."""
        if self.total_ is None or len(self.inputs) < self.threshold:
            raise ProtocolError(f"{len(self.inputs)} masked inputs, under the threshold of {self.threshold}")
        if len(self.reveals) < self.threshold:
            raise ProtocolError(f"{len(self.reveals)} members revealed shares, under the threshold of "
                                f"{self.threshold}; missing: {', '.join(sorted(set(self.inputs) - set(self.reveals)))}")
        request = self.unmask_request()
        total = self.total_.copy()
        for name in request["survivors"]:
            seed = self._rebuild(name, "b").to_bytes(32, "big")
            if _commit(seed) != self.roster_[name].b_commitment:
                raise ProtocolError(f"the self-mask seed rebuilt for {name} does not match its commitment")
            total = total - keystream(derive(seed, self.context + b"/self"), self.length)
        for gone in request["dropped"]:
            private = X25519PrivateKey.from_private_bytes(self._rebuild(gone, "s").to_bytes(32, "big"))
            if public_bytes(private) != self.roster_[gone].s_public:
                raise ProtocolError(f"the pairwise key rebuilt for {gone} does not match its public key")
            for name in request["survivors"]:
                mask = keystream(agree(private, self.roster_[name].s_public, self.context + b"/pair"), self.length)
                # The survivor added the mask where it sorts before the dropped member.
                total = total - mask if pair_sign(name, gone) > 0 else total + mask
        return total

    def _rebuild(self, owner: str, kind: str) -> int:
        where = positions(list(self.roster_))
        shares = {where[holder]: int(sealed[kind][owner], 16)
                  for holder, sealed in self.reveals.items() if owner in sealed[kind]}
        if len(shares) < self.threshold:
            raise ProtocolError(f"{len(shares)} shares of {owner}'s secret, under the threshold of {self.threshold}")
        try:
            return combine(dict(list(shares.items())[:self.threshold]))
        except SharingError as exc:
            raise ProtocolError(f"cannot rebuild {owner}'s secret: {exc}") from exc
