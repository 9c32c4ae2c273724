"""The client's training endpoints: the aggregator's commands (the task creator's) and their reads."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, Protocol

from client.endpoints import Endpoints, task_path
from client.errors import ServerError, error_from_response
from client.models import ModelInfo, Round, StoredModel, Task


class SizedChunks(Protocol):
    """A body sent a chunk at a time, whose total length is known (e.g. streams.codec.EncodedBundle);
    iterable again from the start, so a retried request sends it whole."""

    def __iter__(self) -> Iterator[bytes]: ...

    def __len__(self) -> int: ...


class _Lent:
    """Chunks lent to httpx for one upload (and its retries), given back when it is over.

    Why: httpx's request, which holds the body it sent, stays in a reference cycle with its
    response and connection stream until the garbage collector runs. The aggregator's round
    model is chunks that view the round's weights, so every uploaded model kept a model's worth
    of arrays alive after the round that made it (38 MiB at 10M parameters, until a full
    collection); what stays in the cycle now is this empty shell.
    """

    def __init__(self, content: SizedChunks) -> None:
        self._content: SizedChunks | None = content
        self._size = len(content)

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        if self._content is None:
            raise RuntimeError("the upload is over: its chunks were given back")
        return iter(self._content)

    def give_back(self) -> None:
        self._content = None


class TrainingApi:
    """Training methods of MusketeerClient."""

    def start_task(self: Endpoints, name: str, *, idempotency_key: str | None = None) -> Task:
        """Record TaskStarted (creator only, once the quorum has joined)."""
        return Task.model_validate(self._post(task_path(name, "start"), key=idempotency_key))

    def record_round(self: Endpoints, name: str, round: int, *, participants: list[str],
                     model_sha256: str, samples: dict[str, int] | None = None,
                     metrics: dict[str, float] | None = None,
                     eval_metrics: dict[str, float] | None = None,
                     duration_s: float | None = None, epsilon: float | None = None,
                     idempotency_key: str | None = None) -> Task:
        """Record a completed round (its model must be uploaded first)."""
        body = {"round": round, "participants": participants, "model_sha256": model_sha256,
                "samples": samples or {}, "metrics": metrics or {},
                "eval_metrics": eval_metrics or {}, "duration_s": duration_s, "epsilon": epsilon}
        return Task.model_validate(
            self._post(task_path(name, "rounds"), json=body, key=idempotency_key))

    def record_missed(self: Endpoints, name: str, round: int, participants: list[str]) -> Task:
        """Record who the round now closing goes without (one ParticipantMissedRound each)."""
        body = {"round": round, "participants": participants}
        return Task.model_validate(self._post(task_path(name, "missed"), json=body))

    def reject_update(self: Endpoints, name: str, round: int, sender: str, reason: str,
                      message_id: str | None = None) -> Task:
        """Record an update the aggregator refused, with the reason."""
        body = {"round": round, "sender": sender, "reason": reason, "message_id": message_id}
        return Task.model_validate(self._post(task_path(name, "rejections"), json=body))

    def upload_model(self: Endpoints, name: str, content: bytes | SizedChunks, *, round: int | None = None,
                     final: bool = False, idempotency_key: str | None = None) -> StoredModel:
        """Store model bytes (or chunks of them, with their total length) as an artifact of the
        task; returns its digest."""
        params: dict[str, Any] = {"final": "true" if final else "false"}
        if round is not None:
            params["round"] = round
        # The length is stated for chunks too: the API refuses an oversized model before reading it.
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(content))}
        lent = content if isinstance(content, bytes) else _Lent(content)
        try:
            body = self._command("PUT", task_path(name, "model"), key=idempotency_key,
                                 content=lent, params=params, headers=headers)
        finally:
            if isinstance(lent, _Lent):
                lent.give_back()
        return StoredModel.model_validate(body)

    def download_model(self: Endpoints, name: str, sha256: str | None = None,
                       format: str = "bundle") -> tuple[str, bytes]:
        """The final model (or artifact `sha256`) as (digest, bytes), digest checked; `format`
        "keras" is the .keras file users take away, "bundle" the data plane's format."""
        params = {"sha256": sha256} if sha256 else {"format": format}
        response = self._send("GET", task_path(name, "model"), params=params)
        if response.status_code >= 400:
            raise error_from_response(response)
        digest = response.headers.get("X-Model-SHA256", "")
        if hashlib.sha256(response.content).hexdigest() != digest:
            raise ServerError("the downloaded model does not match its X-Model-SHA256 header",
                              code="digest_mismatch")
        return digest, response.content

    def complete_task(self: Endpoints, name: str, model_sha256: str, reason: str | None = None, *,
                      keras_sha256: str | None = None) -> Task:
        """Record TaskCompleted: the final model's digest, its `.keras` export's, and why, if early."""
        body = {"model_sha256": model_sha256, **({"keras_sha256": keras_sha256} if keras_sha256 else {}),
                **({"reason": reason} if reason else {})}
        return Task.model_validate(self._post(task_path(name, "complete"), json=body))

    def fail_task(self: Endpoints, name: str, reason: str) -> Task:
        """Record TaskFailed with the reason."""
        return Task.model_validate(self._post(task_path(name, "fail"), json={"reason": reason}))

    def rounds(self: Endpoints, name: str) -> list[Round]:
        """The task's completed rounds, oldest first."""
        body = self._get(task_path(name, "rounds"))
        return [Round.model_validate(item) for item in body.get("items", [])]

    def models(self: Endpoints) -> list[ModelInfo]:
        """Final models of the tasks you created or joined, with lineage."""
        return [ModelInfo.model_validate(item) for item in self._get("/v1/models").get("items", [])]
