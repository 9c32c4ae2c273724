"""A typed Python client of the Musketeer HTTP API (v1), for notebooks, the CLI and daemons.

with MusketeerClient.from_profile() as client:
    for task in client.iter_tasks(status="CREATED"):
        print(task.name, task.participant_count)
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from client.contributions import ContributionCalls
from client.credentials import load_credentials, same_url
from client.errors import ServerError, error_from_response, unreachable
from client.models import (
    ModelInfo,
    Round,
    StoredModel,
    Task,
    TaskEvent,
    TaskPage,
    TaskState,
    Token,
    User,
    VerifyReport,
)
from client.profile import Profile, environment_token
from client.retry import NO_RETRY, RetryPolicy, retry_after

USER_AGENT = "musketeer-client/0.1"


class MusketeerClient(ContributionCalls):
    """A synchronous client of the Musketeer HTTP API v1."""

    def __init__(
        self,
        api_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        self.api_url = same_url(api_url)
        self.token = token
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        # Daemons pass a callback so a long wait says what it waits for.
        self.on_wait = on_wait
        self._http = httpx.Client(
            base_url=self.api_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        )

    def __repr__(self) -> str:
        return f"MusketeerClient({self.api_url!r}, authenticated={self.token is not None})"

    @classmethod
    def from_profile(
        cls, *, api_url: str | None = None, profile: Profile | None = None, **kwargs: Any
    ) -> MusketeerClient:
        """A client for the platform in the profile, logged in with the saved credentials.

        `MUSKETEER_TOKEN` overrides the saved token. Saved credentials are used only
        for the API they were issued by, so a token never leaks to another server.
        """
        profile = profile or Profile.load()
        url = same_url(api_url or profile.api_url)
        token = environment_token()
        if token is None:
            saved = load_credentials(profile.credentials_path())
            if saved is not None and saved.api_url == url:
                token = saved.access_token
        return cls(url, token, **kwargs)

    # -- lifecycle

    def close(self) -> None:
        """Close the underlying connections."""
        self._http.close()

    def __enter__(self) -> MusketeerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- users and auth

    def register(
        self, username: str, password: str, organization: str, *, idempotency_key: str | None = None
    ) -> User:
        """Create a user account."""
        body = {"username": username, "password": password, "organization": organization}
        return User.model_validate(self._post("/v1/users", json=body, key=idempotency_key))

    def login(self, username: str, password: str) -> Token:
        """Exchange a username and password for a bearer token, and use it from now on."""
        form = {"username": username, "password": password}
        token = Token.model_validate(self._post("/v1/auth/token", data=form))
        self.token = token.access_token
        return token

    def me(self) -> User:
        """The user the token belongs to."""
        return User.model_validate(self._get("/v1/users/me"))

    # -- tasks

    def create_task(
        self,
        name: str,
        definition: dict[str, Any],
        *,
        topology: str = "STAR",
        pom: int = 1,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> Task:
        """Create a federated task; the definition is sent as given (the server normalises it)."""
        body: dict[str, Any] = {
            "name": name,
            "definition": definition,
            "topology": topology,
            "pom": pom,
        }
        if description is not None:
            body["description"] = description
        return Task.model_validate(self._post("/v1/tasks", json=body, key=idempotency_key))

    def list_tasks(
        self,
        *,
        status: str | None = None,
        pom: int | None = None,
        search: str | None = None,
        creator: str | None = None,
        joined: bool | None = None,
        created_after: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of tasks matching the filters, newest first."""
        params = _task_filters(status, pom, search, creator, joined, created_after, limit, cursor)
        return TaskPage.model_validate(self._get("/v1/tasks", params=params))

    def iter_tasks(self, **filters: Any) -> Iterator[Task]:
        """Every task matching the filters (same as `list_tasks`), following cursors."""
        cursor: str | None = filters.pop("cursor", None)
        seen: set[str] = set()
        while True:
            page = self.list_tasks(cursor=cursor, **filters)
            yield from page.items
            if not page.next_cursor:
                return
            # A server bug returning the same cursor again would loop forever.
            if page.next_cursor in seen:
                raise ServerError("the server returned the same cursor twice", code="cursor_loop")
            seen.add(page.next_cursor)
            cursor = page.next_cursor

    def get_task(self, name: str) -> Task:
        """One task by name."""
        return Task.model_validate(self._get(_task_path(name)))

    def join(self, name: str, *, idempotency_key: str | None = None) -> Task:
        """Join a task as a participant."""
        return Task.model_validate(self._post(_task_path(name, "join"), key=idempotency_key))

    def leave(self, name: str, *, idempotency_key: str | None = None) -> Task:
        """Leave a task."""
        return Task.model_validate(self._post(_task_path(name, "leave"), key=idempotency_key))

    def delete_task(self, name: str, *, idempotency_key: str | None = None) -> Task:
        """Delete a task (creator only); returns it with status DELETED."""
        body = self._command("DELETE", _task_path(name), key=idempotency_key)
        return Task.model_validate(body)

    def task_events(self, name: str) -> list[TaskEvent]:
        """The task's events, oldest first."""
        body = self._get(_task_path(name, "events"))
        return [TaskEvent.model_validate(item) for item in body.get("items", [])]

    def task_state(self, name: str, version: int) -> TaskState:
        """The task as it was after its first `version` events."""
        body = self._get(_task_path(name, "state"), params={"version": version})
        return TaskState.model_validate(body)

    # -- training (the aggregator's commands are the task creator's)

    def start_task(self, name: str, *, idempotency_key: str | None = None) -> Task:
        """Record TaskStarted (creator only, once the quorum has joined)."""
        return Task.model_validate(self._post(_task_path(name, "start"), key=idempotency_key))

    def record_round(self, name: str, round: int, *, participants: list[str],
                     model_sha256: str, samples: dict[str, int] | None = None,
                     metrics: dict[str, float] | None = None,
                     eval_metrics: dict[str, float] | None = None,
                     duration_s: float | None = None,
                     idempotency_key: str | None = None) -> Task:
        """Record a completed round (its model must be uploaded first)."""
        body = {"round": round, "participants": participants, "model_sha256": model_sha256,
                "samples": samples or {}, "metrics": metrics or {},
                "eval_metrics": eval_metrics or {}, "duration_s": duration_s}
        return Task.model_validate(
            self._post(_task_path(name, "rounds"), json=body, key=idempotency_key))

    def record_missed(self, name: str, round: int, participants: list[str]) -> Task:
        """Record who the round now closing goes without (one ParticipantMissedRound each)."""
        body = {"round": round, "participants": participants}
        return Task.model_validate(self._post(_task_path(name, "missed"), json=body))

    def reject_update(self, name: str, round: int, sender: str, reason: str,
                      message_id: str | None = None) -> Task:
        """Record an update the aggregator refused, with the reason."""
        body = {"round": round, "sender": sender, "reason": reason, "message_id": message_id}
        return Task.model_validate(self._post(_task_path(name, "rejections"), json=body))

    def upload_model(self, name: str, content: bytes, *, round: int | None = None,
                     final: bool = False, idempotency_key: str | None = None) -> StoredModel:
        """Store model bytes as an artifact of the task; returns its digest."""
        params: dict[str, Any] = {"final": "true" if final else "false"}
        if round is not None:
            params["round"] = round
        body = self._command("PUT", _task_path(name, "model"), key=idempotency_key,
                             content=content, params=params,
                             headers={"Content-Type": "application/octet-stream"})
        return StoredModel.model_validate(body)

    def download_model(self, name: str, sha256: str | None = None) -> tuple[str, bytes]:
        """The task's final model (or the artifact `sha256`): (digest, bytes), digest checked."""
        params = {"sha256": sha256} if sha256 else None
        response = self._send("GET", _task_path(name, "model"), params=params)
        if response.status_code >= 400:
            raise error_from_response(response)
        digest = response.headers.get("X-Model-SHA256", "")
        if hashlib.sha256(response.content).hexdigest() != digest:
            raise ServerError("the downloaded model does not match its X-Model-SHA256 header",
                              code="digest_mismatch")
        return digest, response.content

    def complete_task(self, name: str, model_sha256: str) -> Task:
        """Record TaskCompleted with the final model's digest."""
        return Task.model_validate(
            self._post(_task_path(name, "complete"), json={"model_sha256": model_sha256}))

    def fail_task(self, name: str, reason: str) -> Task:
        """Record TaskFailed with the reason."""
        return Task.model_validate(self._post(_task_path(name, "fail"), json={"reason": reason}))

    def rounds(self, name: str) -> list[Round]:
        """The task's completed rounds, oldest first."""
        body = self._get(_task_path(name, "rounds"))
        return [Round.model_validate(item) for item in body.get("items", [])]

    def models(self) -> list[ModelInfo]:
        """Final models of the tasks you created or joined, with lineage."""
        return [ModelInfo.model_validate(item) for item in self._get("/v1/models").get("items", [])]

    # -- audit and health

    def verify(self) -> VerifyReport:
        """Walk the event log's hash chain on the server."""
        return VerifyReport.model_validate(self._get("/v1/audit/verify"))

    def health(self) -> dict[str, Any]:
        """Liveness of the API process."""
        body: dict[str, Any] = self._get("/healthz", retry=False)
        return body

    def ready(self) -> dict[str, Any]:
        """Readiness of the API (database, broker); raises ServiceUnavailable if not ready."""
        # No retry: a readiness probe should answer about now, not in ten seconds.
        body: dict[str, Any] = self._get("/readyz", retry=False)
        return body

    # -- plumbing

    def _get(self, path: str, *, params: dict[str, Any] | None = None, retry: bool = True) -> Any:
        policy = self.retry if retry else NO_RETRY
        return self._json(self._send("GET", path, policy=policy, params=params))

    def _post(self, path: str, *, key: str | None = None, **kwargs: Any) -> Any:
        return self._command("POST", path, key=key, **kwargs)

    def _command(self, method: str, path: str, *, key: str | None, **kwargs: Any) -> Any:
        # A fresh key per call makes our own retries safe: the server returns the
        # first result for a repeated key and appends nothing.
        headers = {**kwargs.pop("headers", {}), "Idempotency-Key": key or str(uuid.uuid4())}
        return self._json(self._send(method, path, headers=headers, **kwargs))

    def _send(
        self, method: str, path: str, *, policy: RetryPolicy | None = None, **kwargs: Any
    ) -> httpx.Response:
        """Send a request, retrying only where a repeat cannot apply a command twice."""
        policy = policy or self.retry
        headers = {**kwargs.pop("headers", {}), **self._auth_headers()}
        idempotent = is_idempotent(method, headers)
        attempt, waited = 0, 0.0
        while True:
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                # A refused connection never reached the server, so any request may
                # be repeated; a read failure may have, so only idempotent ones.
                safe = idempotent or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                delay = policy.delay(attempt, waited) if safe else None
                if delay is None:
                    raise unreachable(self.api_url, exc) from exc
                why = f"cannot reach it ({type(exc).__name__})"
            else:
                if response.status_code != 503 or not idempotent:
                    return response
                delay = policy.delay(attempt, waited, retry_after(response))
                if delay is None:
                    return response
                why = f"it is unavailable: {_message_of(response)}"
            if self.on_wait is not None:
                self.on_wait(f"waiting for the API at {self.api_url} ({method} {path}): {why}; "
                             f"retrying in {delay:.1f} s ({waited:.0f} of "
                             f"{policy.total_wait:.0f} s waited)")
            self._sleep(delay)
            attempt, waited = attempt + 1, waited + delay

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise error_from_response(response)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            return {"status": response.text.strip()}


def _message_of(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.status_code))
    except (ValueError, AttributeError):
        return str(response.status_code)


def is_idempotent(method: str, headers: dict[str, str]) -> bool:
    """Whether sending the request twice has the effect of sending it once."""
    return method in ("GET", "HEAD") or "Idempotency-Key" in headers


def _task_path(name: str, action: str | None = None) -> str:
    # safe="": a "/" or "?" in a name must stay part of the name.
    path = f"/v1/tasks/{quote(name, safe='')}"
    return f"{path}/{action}" if action else path


def _task_filters(
    status: str | None,
    pom: int | None,
    search: str | None,
    creator: str | None,
    joined: bool | None,
    created_after: datetime | str | None,
    limit: int | None,
    cursor: str | None,
) -> dict[str, Any]:
    if isinstance(created_after, datetime):
        created_after = created_after.isoformat()
    params: dict[str, Any] = {
        "status": status,
        "pom": pom,
        "search": search,
        "creator": creator,
        "joined": None if joined is None else str(joined).lower(),
        "created_after": created_after,
        "limit": limit,
        "cursor": cursor,
    }
    return {k: v for k, v in params.items() if v is not None}
