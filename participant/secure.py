"""Secure aggregation on a participant's side: what it sends at each step of a secure sum.

The worker hands over each broadcast of the protocol (roster, share list, unmask request); this
keeps one `ClientRound` per (round, instance) from the moment the input is ready until its
shares are revealed, then forgets it. Its input never leaves unmasked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ml.secagg import dp
from ml.secagg.encoding import ModelLayout
from ml.secagg.protocol import ClientRound, ProtocolError, context
from participant.trained import Trained
from schema import dataplane, privacy
from streams.codec import ArrayBundle, encode_bundle

Array = np.ndarray[Any, Any]
# kind, round, payload -> message id
Send = Callable[[str, int, bytes], str]


class SecureInputs:
    """The participant's open secure sums, and its answers to each step."""

    def __init__(self, task_id: str, me: str, definition: dict[str, Any], pom: int, members: int,
                 send: Send, say: Callable[[str], None]) -> None:
        self.task_id, self.me, self.definition, self.pom = task_id, me, definition, pom
        self.members = members
        self.threshold = privacy.threshold(definition, members)
        self.send, self.say = send, say
        self.open: dict[tuple[int, str], tuple[ClientRound, Array]] = {}

    def start(self, round_no: int, instance: str, x: Array) -> None:
        """Step 1: a fresh round of keys for this input; advertise them."""
        client = ClientRound(self.me, context(self.task_id, round_no, instance), self.threshold)
        self.open[(round_no, instance)] = (client, x)
        self._send(dataplane.ADVERTISE, round_no, {"instance": instance, "keys": client.advertise(),
                                                    "length": len(x)})

    def model_input(self, trained: Trained) -> Array:
        """A trained round as its secure input: weighted difference (mode 2), or clipped and
        noised difference with weight 1 (mode 3)."""
        layout = ModelLayout.of(trained.global_weights, self.definition, self.pom, self.members)
        weights, weight = trained.weights, float(trained.samples)
        if self.pom == 3:
            clip_norm = float(self.definition["clip_norm"])
            noise_multiplier = float(self.definition["noise_multiplier"])
            clipped, _ = dp.clip([np.asarray(w, np.float64) - g for w, g in zip(weights, trained.global_weights)],
                                 clip_norm)
            # Each of n members adds 1/sqrt(n) of the noise: the sum carries all of it.
            noise = dp.noise([c.shape for c in clipped], noise_multiplier * clip_norm / np.sqrt(self.members))
            weights = [g + c + e for g, c, e in zip(trained.global_weights, clipped, noise)]
            weight = 1.0
        return layout.encode(trained.global_weights, weights, weight, trained.metrics)

    def on_broadcast(self, kind: str, round_no: int, bundle: ArrayBundle) -> None:
        """Steps 2 to 4: answer the roster, the share list and the unmask request."""
        instance = str(bundle.meta.get("instance"))
        entry = self.open.get((round_no, instance))
        if entry is None:
            return  # not a sum of ours (or one from before a restart: we no longer hold its keys)
        client, x = entry
        try:
            self._answer(kind, round_no, instance, client, x, bundle.meta)
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            self.say(f"round {round_no} ({instance}): left the secure sum: {exc}")
            del self.open[(round_no, instance)]

    def _answer(self, kind: str, round_no: int, instance: str, client: ClientRound, x: Array,
                meta: dict[str, Any]) -> None:
        if kind == dataplane.ROSTER:
            self._send(dataplane.SHARES, round_no, {"instance": instance, "shares": client.shares(meta["roster"])})
        elif kind == dataplane.SHARE_LIST:
            if self.me not in meta["shares"]:
                raise ProtocolError("my shares are not on the aggregator's list")
            masked = client.masked(x, meta["shares"])
            self._send(dataplane.UPDATE, round_no, {"instance": instance}, {"masked": masked})
        elif kind == dataplane.UNMASK:
            reveal = client.reveal(list(meta["survivors"]), list(meta["dropped"]))
            self._send(dataplane.REVEAL, round_no, {"instance": instance, **reveal})
            del self.open[(round_no, instance)]

    def _send(self, kind: str, round_no: int, meta: dict[str, Any], arrays: dict[str, Array] | None = None) -> None:
        self.send(kind, round_no, encode_bundle(ArrayBundle(arrays=arrays or {}, meta=meta)))
