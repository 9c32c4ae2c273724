"""Unit tests of the HTTP client and the `musketeer` account/task/audit commands.

The API is replaced by an httpx.MockTransport: these pin the client's own logic
(error mapping, retries, cursors, credentials) and the CLI's output and exit
codes. Behaviour against the real API is covered by the integration tests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import typer
from typer.testing import CliRunner

from client import (
    AuthenticationError,
    ClientError,
    ConflictError,
    IdempotencyKeyReusedError,
    MusketeerClient,
    NotFoundError,
    PermissionDenied,
    RetryPolicy,
    ServerError,
    ServiceUnavailable,
    ValidationFailed,
    VersionConflictError,
    cli,
)
from client.credentials import Credentials, load_credentials, save_credentials
from client.http import is_idempotent
from infra.audit import audit_replay
from schema.keys import fingerprint

API = "http://api.test"
NOW = "2026-01-02T03:04:05+00:00"


# --- a fake API -------------------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeApi:
    """Routes (method, path) to handlers and records every request."""

    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, *responses: httpx.Response) -> None:
        """Answer `method path` with these responses in turn (the last one repeats)."""
        queue = list(responses)
        self.routes[(method, path)] = lambda _: queue.pop(0) if len(queue) > 1 else queue[0]

    def handle(self, method: str, path: str, handler: Handler) -> None:
        """Answer `method path` by calling `handler`."""
        self.routes[(method, path)] = handler

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.raw_path.decode().split("?")[0]
        route = self.routes.get((request.method, path))
        if route is None:
            return error(404, "not_found", f"no route {request.method} {path}")
        return route(request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)


def error(status: int, code: str, message: str, details: Any = None) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "message": message, "details": details})


def task_view(name: str = "mnist", **overrides: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "task_id": f"id-{name}",
        "name": name,
        "creator": "alice",
        "status": "CREATED",
        "definition": {"quorum": 3, "rounds": 5, "epochs": 1},
        "topology": "STAR",
        "pom": 1,
        "description": "digits",
        "quorum": 3,
        "max_participants": None,
        "participants": [{"username": "john", "organization": "ACME", "joined_at": NOW}],
        "participant_count": 1,
        "topics": {
            "broadcast": f"musketeer.task.id-{name}.broadcast",
            "updates": f"musketeer.task.id-{name}.updates",
        },
        "version": 2,
        "created_at": NOW,
        "updated_at": NOW,
    }
    view.update(overrides)
    return view


class RecordingSleep:
    """Stands in for time.sleep: records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def client(api: FakeApi, sleep: RecordingSleep) -> MusketeerClient:
    return MusketeerClient(API, token="tok-123", transport=api.transport(), sleep=sleep)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own profile and credentials paths and no ambient settings."""
    monkeypatch.setenv("MUSKETEER_PROFILE", str(tmp_path / "profile.json"))
    monkeypatch.setenv("MUSKETEER_CREDENTIALS", str(tmp_path / "credentials.json"))
    for name in ("MUSKETEER_TOKEN", "MUSKETEER_API_URL", "DATABASE_URL", "MUSKETEER_PASSWORD",
                 "MUSKETEER_KEYS_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@dataclass
class FakeKeys:
    """The API's key endpoints for alice: what was registered, in order."""

    registered: list[str] = field(default_factory=list)

    def install(self, api: FakeApi) -> None:
        api.on("GET", "/v1/users/me", httpx.Response(200, json={"username": "alice", "organization": "IBM"}))
        api.handle("GET", "/v1/users/me/keys", lambda _: httpx.Response(200, json={"items": [
            {"username": "alice", "fingerprint": fingerprint(base64.b64decode(k)), "public_key": k,
             "status": "active" if i == len(self.registered) - 1 else "rotated"}
            for i, k in enumerate(self.registered)][::-1]}))
        api.handle("PUT", "/v1/users/me/keys", self._put)

    def _put(self, request: httpx.Request) -> httpx.Response:
        key = json.loads(request.content)["public_key"]
        self.registered.append(key)
        return httpx.Response(201, json={"username": "alice", "fingerprint": fingerprint(base64.b64decode(key)),
                                         "public_key": key, "status": "active"})


@pytest.fixture
def keys(api: FakeApi) -> FakeKeys:
    """Key endpoints on the fake API."""
    fake = FakeKeys()
    fake.install(api)
    return fake


# --- client: error mapping ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (401, "not_authenticated", AuthenticationError),
        (403, "forbidden", PermissionDenied),
        (404, "not_found", NotFoundError),
        (409, "conflict", ConflictError),
        (409, "version_conflict", VersionConflictError),
        (409, "idempotency_key_reused", IdempotencyKeyReusedError),
        (422, "invalid_input", ValidationFailed),
        (503, "unavailable", ServiceUnavailable),
        (500, "error", ServerError),
    ],
)
def test_error_responses_map_to_typed_errors(
    api: FakeApi, status: int, code: str, expected: type[ClientError]
) -> None:
    """Each status/code pair of the API becomes its own exception, carrying the body."""
    api.on("GET", "/v1/tasks/x", error(status, code, "it failed", {"field": "quorum"}))
    client = MusketeerClient(API, transport=api.transport(), retry=RetryPolicy(total_wait=0))

    with pytest.raises(expected) as caught:
        client.get_task("x")

    assert (caught.value.status, caught.value.code) == (status, code)
    assert caught.value.message == "it failed"
    assert caught.value.details == {"field": "quorum"}


def test_framework_error_bodies_and_plain_text_are_understood(api: FakeApi) -> None:
    """A FastAPI `{"detail": ...}` body or a non-JSON 502 still gives a typed, readable error."""
    api.on("GET", "/v1/users/me", httpx.Response(401, json={"detail": "Not authenticated"}))
    api.on("GET", "/v1/tasks/x", httpx.Response(502, text="Bad Gateway"))
    client = MusketeerClient(API, transport=api.transport())

    with pytest.raises(AuthenticationError, match="Not authenticated") as auth:
        client.me()
    with pytest.raises(ServerError, match="Bad Gateway") as server:
        client.get_task("x")

    assert auth.value.code == "not_authenticated"
    assert server.value.status == 502


# --- client: retries -----------------------------------------------------------------


def test_get_is_retried_on_503_then_succeeds(
    client: MusketeerClient, api: FakeApi, sleep: RecordingSleep
) -> None:
    """Two 503s then a 200: the caller sees the task, after exponential backoff."""
    unavailable = error(503, "unavailable", "database restarting")
    api.on(
        "GET", "/v1/tasks/mnist", unavailable, unavailable, httpx.Response(200, json=task_view())
    )

    task = client.get_task("mnist")

    assert task.name == "mnist"
    assert len(api.requests) == 3
    assert sleep.delays == [0.25, 0.5]


def test_post_retries_reuse_the_same_idempotency_key(
    client: MusketeerClient, api: FakeApi, sleep: RecordingSleep
) -> None:
    """A retried POST repeats its key (so the server applies it once); a new call gets a new key."""
    unavailable = error(503, "unavailable", "busy")
    api.on("POST", "/v1/tasks/mnist/join", unavailable, httpx.Response(200, json=task_view()))

    client.join("mnist")
    client.join("mnist")

    keys = [r.headers["Idempotency-Key"] for r in api.requests]
    assert len(keys) == 3
    assert keys[0] == keys[1] != keys[2]


def test_conflict_is_never_retried(
    client: MusketeerClient, api: FakeApi, sleep: RecordingSleep
) -> None:
    """A 409 is an answer, not a glitch: one request, no sleep, a ConflictError."""
    api.on("POST", "/v1/tasks", error(409, "conflict", "task 'mnist' already exists"))

    with pytest.raises(ConflictError, match="already exists"):
        client.create_task("mnist", {"quorum": 2, "rounds": 1})

    assert len(api.requests) == 1
    assert sleep.delays == []


def test_delete_carries_a_key_and_is_retried(
    client: MusketeerClient, api: FakeApi, sleep: RecordingSleep
) -> None:
    """DELETE sends an Idempotency-Key too, so a 503 is retried with the same key."""
    unavailable = error(503, "unavailable", "busy")
    deleted = httpx.Response(200, json=task_view(status="DELETED"))
    api.on("DELETE", "/v1/tasks/mnist", unavailable, deleted)

    task = client.delete_task("mnist")

    assert task.status == "DELETED"
    keys = {r.headers["Idempotency-Key"] for r in api.requests}
    assert len(api.requests) == 2 and len(keys) == 1


def test_retries_stop_within_the_total_wait(api: FakeApi, sleep: RecordingSleep) -> None:
    """A server that stays down is given up on once the waits add up to the budget."""
    api.on("GET", "/v1/audit/verify", error(503, "unavailable", "down"))
    policy = RetryPolicy(total_wait=3.0, initial_delay=0.5, max_delay=1.0)
    client = MusketeerClient(API, transport=api.transport(), retry=policy, sleep=sleep)

    with pytest.raises(ServiceUnavailable, match="down"):
        client.verify()

    assert sleep.delays == [0.5, 1.0, 1.0, 0.5]
    assert sum(sleep.delays) == pytest.approx(3.0)


def test_unreachable_api_names_the_url_and_the_fix(sleep: RecordingSleep) -> None:
    """Connection refused is retried, then reported with the URL and `musketeer platform up`."""
    calls: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    client = MusketeerClient(API, transport=httpx.MockTransport(refuse), sleep=sleep)

    with pytest.raises(ServiceUnavailable) as caught:
        client.list_tasks()

    assert API in caught.value.message
    assert "musketeer platform up" in caught.value.message
    assert len(calls) > 1
    assert sum(sleep.delays) <= 10.0


def test_only_requests_safe_to_repeat_count_as_idempotent() -> None:
    """GETs and keyed commands may be repeated after a read failure; an unkeyed command not."""
    assert is_idempotent("GET", {})
    assert is_idempotent("POST", {"Idempotency-Key": "k"})
    assert is_idempotent("DELETE", {"Idempotency-Key": "k"})
    assert not is_idempotent("POST", {})
    assert not is_idempotent("DELETE", {})


def test_read_timeout_of_a_get_is_retried(sleep: RecordingSleep) -> None:
    """A GET that timed out reading is repeated within the wait budget, then reported."""
    calls: list[httpx.Request] = []

    def time_out(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("timed out", request=request)

    policy = RetryPolicy(total_wait=1.0, initial_delay=0.5, max_delay=0.5)
    client = MusketeerClient(
        API, transport=httpx.MockTransport(time_out), retry=policy, sleep=sleep
    )

    with pytest.raises(ServiceUnavailable, match="ReadTimeout"):
        client.get_task("mnist")

    assert len(calls) == 3
    assert sleep.delays == [0.5, 0.5]


def test_readiness_is_answered_at_once(
    client: MusketeerClient, api: FakeApi, sleep: RecordingSleep
) -> None:
    """ready() reports a 503 immediately (a probe wants "now"), with the server's reasons."""
    checks = {"database": "ok", "broker": "cannot reach 127.0.0.1:9092"}
    body = {"status": "not ready", "checks": checks}
    api.on("GET", "/readyz", httpx.Response(503, json=body))
    api.on("GET", "/healthz", httpx.Response(200, json={"status": "ok"}))

    with pytest.raises(ServiceUnavailable) as caught:
        client.ready()

    assert client.health() == {"status": "ok"}
    assert caught.value.details == body
    assert sleep.delays == []


# --- client: requests ----------------------------------------------------------------


def test_iter_tasks_follows_cursors_and_keeps_filters(
    client: MusketeerClient, api: FakeApi
) -> None:
    """Pages are fetched until next_cursor is null; each request keeps the filters."""
    pages = {
        None: {"items": [task_view("c"), task_view("b")], "next_cursor": "p2"},
        "p2": {"items": [task_view("a")], "next_cursor": None},
    }

    def page(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params.get("cursor")])

    api.handle("GET", "/v1/tasks", page)

    names = [t.name for t in client.iter_tasks(status="CREATED", joined=False, limit=2)]

    assert names == ["c", "b", "a"]
    params = [parse_qs(r.url.query.decode()) for r in api.requests]
    assert all(p["status"] == ["CREATED"] and p["joined"] == ["false"] for p in params)
    assert "cursor" not in params[0] and params[1]["cursor"] == ["p2"]


def test_iter_tasks_refuses_a_repeating_cursor(client: MusketeerClient, api: FakeApi) -> None:
    """A server returning the same cursor forever cannot hang the client."""
    api.on("GET", "/v1/tasks", httpx.Response(200, json={"items": [], "next_cursor": "same"}))

    with pytest.raises(ServerError, match="same cursor"):
        list(client.iter_tasks())


def test_list_tasks_serialises_datetimes(client: MusketeerClient, api: FakeApi) -> None:
    """created_after may be a datetime; it is sent as ISO 8601."""
    api.on("GET", "/v1/tasks", httpx.Response(200, json={"items": [], "next_cursor": None}))

    client.list_tasks(created_after=datetime(2026, 1, 2, tzinfo=UTC), pom=1)

    params = api.requests[0].url.params
    assert params["created_after"] == "2026-01-02T00:00:00+00:00"
    assert params["pom"] == "1"


def test_task_names_are_url_encoded(client: MusketeerClient, api: FakeApi) -> None:
    """A name with a space or a slash stays one path segment."""
    api.on("POST", "/v1/tasks/a%20b%2Fc/leave", httpx.Response(200, json=task_view("a b/c")))

    task = client.leave("a b/c")

    assert task.name == "a b/c"
    assert api.requests[0].url.raw_path == b"/v1/tasks/a%20b%2Fc/leave"


def test_login_uses_the_form_flow_and_keeps_the_token(api: FakeApi) -> None:
    """login posts form fields, and later requests carry the bearer token."""
    api.on(
        "POST",
        "/v1/auth/token",
        httpx.Response(
            200, json={"access_token": "secret-tok", "token_type": "bearer", "expires_in": 3600}
        ),
    )
    api.on(
        "GET",
        "/v1/users/me",
        httpx.Response(200, json={"username": "alice", "organization": "ACME", "created_at": NOW}),
    )
    client = MusketeerClient(API, transport=api.transport())

    token = client.login("alice", "pw")
    user = client.me()

    assert parse_qs(api.requests[0].content.decode()) == {"username": ["alice"], "password": ["pw"]}
    assert api.requests[1].headers["Authorization"] == "Bearer secret-tok"
    assert user.username == "alice"
    assert "secret-tok" not in repr(token)


def test_models_accept_fields_added_by_newer_servers(client: MusketeerClient, api: FakeApi) -> None:
    """An unknown field in a response is kept, not rejected."""
    api.on("GET", "/v1/tasks/mnist", httpx.Response(200, json=task_view(rounds_done=4)))

    task = client.get_task("mnist")

    assert task.model_extra == {"rounds_done": 4}


def test_create_task_sends_the_definition_as_given(client: MusketeerClient, api: FakeApi) -> None:
    """The seed's spelling goes to the server untouched (the server normalises it)."""
    api.on("POST", "/v1/tasks", httpx.Response(201, json=task_view()))
    seed = {"quorum": 2, "round": 3, "epoch": 1, "aggregator": "neural_network.Aggregator"}

    client.create_task("mnist", seed, description="digits", idempotency_key="k-1")

    sent = json.loads(api.requests[0].content)
    assert sent == {
        "name": "mnist",
        "definition": seed,
        "topology": "STAR",
        "pom": 1,
        "description": "digits",
    }
    assert api.requests[0].headers["Idempotency-Key"] == "k-1"


# --- client: profile and credentials ----------------------------------------------------


def test_credentials_file_is_private(tmp_path: Path) -> None:
    """The token file is 0600 when created, and when it replaces a world-readable one."""
    path = tmp_path / "creds" / "credentials.json"
    path.parent.mkdir()
    path.write_text("{}")
    path.chmod(0o644)

    save_credentials(Credentials.issued(API, "alice", "tok", 60), path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_credentials(path)
    assert loaded is not None and loaded.access_token == "tok" and not loaded.expired()
    assert "tok" not in repr(loaded)
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]


def test_expiry_is_computed_from_expires_in() -> None:
    """expires_at = now + expires_in, so a stale token is recognisable offline."""
    creds = Credentials.issued(API, "alice", "tok", 60)

    assert creds.expires_at is not None
    assert not creds.expired()
    assert creds.expired(now=datetime.now(UTC) + timedelta(seconds=61))


def test_from_profile_uses_saved_token_only_for_its_own_api(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved credentials apply to the API that issued them; MUSKETEER_TOKEN overrides."""
    save_credentials(
        Credentials.issued(API + "/", "alice", "saved", 60), isolated_env / "credentials.json"
    )

    same = MusketeerClient.from_profile(api_url=API)
    other = MusketeerClient.from_profile(api_url="http://elsewhere.test")
    monkeypatch.setenv("MUSKETEER_TOKEN", "from-env")
    env = MusketeerClient.from_profile(api_url=API)

    assert same.token == "saved"
    assert other.token is None
    assert env.token == "from-env"


def test_from_profile_reads_the_api_url_from_the_profile(isolated_env: Path) -> None:
    """With no override, the profile written by `platform up` says where the API is."""
    (isolated_env / "profile.json").write_text(json.dumps({"api_url": "http://profiled.test:9000"}))

    with MusketeerClient.from_profile() as client:
        assert client.api_url == "http://profiled.test:9000"


# --- CLI ------------------------------------------------------------------------------


@pytest.fixture
def run(api: FakeApi, sleep: RecordingSleep) -> Callable[..., Any]:
    """Invoke the commands on a local Typer app whose client talks to the fake API."""
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """musketeer (test app)"""

    def factory(api_url: str | None) -> MusketeerClient:
        return MusketeerClient.from_profile(
            api_url=api_url or API, transport=api.transport(), sleep=sleep
        )

    groups = cli.register(app, client_factory=factory)
    groups["audit"].command("replay")(audit_replay)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Any:
        return runner.invoke(app, list(args), input=input, env={"COLUMNS": "120", **(env or {})})

    return invoke


def logged_in(path: Path, token: str = "tok-123") -> None:
    save_credentials(Credentials.issued(API, "alice", token, 3600), path / "credentials.json")


def test_login_saves_a_private_token_and_never_prints_it(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path
) -> None:
    """`login --password-stdin` stores api_url, username, token and expiry with mode 0600."""
    api.on(
        "POST",
        "/v1/auth/token",
        httpx.Response(
            200, json={"access_token": "very-secret", "token_type": "bearer", "expires_in": 600}
        ),
    )

    result = run("login", "alice", "--password-stdin", input="pw\n")

    assert result.exit_code == 0, result.output
    assert "very-secret" not in result.output
    path = isolated_env / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = json.loads(path.read_text())
    assert saved["current"] == "alice"
    login = saved["logins"]["alice"]
    assert login["api_url"] == API and login["username"] == "alice"
    assert login["access_token"] == "very-secret" and login["expires_at"]
    assert parse_qs(api.requests[0].content.decode())["password"] == ["pw"]


def test_login_with_a_wrong_password_fails_cleanly(run: Callable[..., Any], api: FakeApi) -> None:
    """A 401 at login says so, exits 1, and saves nothing."""
    api.on("POST", "/v1/auth/token", error(401, "not_authenticated", "wrong username or password"))

    result = run("login", "alice", env={"MUSKETEER_PASSWORD": "nope"})

    assert result.exit_code == 1
    assert "wrong username or password" in result.stderr
    assert "Traceback" not in result.output


def test_register_reads_the_password_from_the_environment(
    run: Callable[..., Any], api: FakeApi
) -> None:
    """`register` sends username, password and organisation, and says what to do next."""
    api.on(
        "POST",
        "/v1/users",
        httpx.Response(201, json={"username": "john", "organization": "ACME", "created_at": NOW}),
    )

    result = run("register", "john", "--organization", "ACME", env={"MUSKETEER_PASSWORD": "s3cret"})

    assert result.exit_code == 0, result.output
    assert json.loads(api.requests[0].content) == {
        "username": "john",
        "password": "s3cret",
        "organization": "ACME",
    }
    assert "musketeer login john" in result.stdout


def test_logout_and_whoami(run: Callable[..., Any], api: FakeApi, isolated_env: Path) -> None:
    """whoami shows the user; logout removes the token file."""
    logged_in(isolated_env)
    api.on(
        "GET",
        "/v1/users/me",
        httpx.Response(200, json={"username": "alice", "organization": "ACME", "created_at": NOW}),
    )

    who = run("whoami")
    out = run("logout")

    assert who.exit_code == 0 and "alice" in who.stdout and "ACME" in who.stdout
    assert out.exit_code == 0
    assert not (isolated_env / "credentials.json").exists()


def test_not_logged_in_tells_you_to_log_in(run: Callable[..., Any], api: FakeApi) -> None:
    """Without a saved token a 401 exits 1 with a pointer to `musketeer login`."""
    api.on("GET", "/v1/tasks", error(401, "not_authenticated", "missing bearer token"))

    result = run("tasks", "list")

    assert result.exit_code == 1
    assert "musketeer login" in result.stderr
    assert "not logged in" in result.stderr
    assert "Authorization" not in api.requests[0].headers


def test_tasks_list_prints_a_table(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path
) -> None:
    """The table shows name, status, creator, participants/quorum and rounds; filters are sent."""
    logged_in(isolated_env)
    api.on(
        "GET",
        "/v1/tasks",
        httpx.Response(200, json={"items": [task_view("mnist")], "next_cursor": "more"}),
    )

    result = run(
        "tasks", "list", "--status", "created", "--joined", "--created-after", "2026-01-01"
    )

    assert result.exit_code == 0, result.output
    for text in ("mnist", "CREATED", "alice", "1/3", "5", "--cursor more"):
        assert text in result.stdout
    params = api.requests[0].url.params
    assert params["status"] == "CREATED" and params["joined"] == "true"
    assert params["created_after"] == "2026-01-01T00:00:00"
    assert api.requests[0].headers["Authorization"] == "Bearer tok-123"


def test_tasks_list_all_as_json(run: Callable[..., Any], api: FakeApi, isolated_env: Path) -> None:
    """`--all --json` follows every cursor and prints one JSON document."""
    logged_in(isolated_env)

    def page(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("cursor") == "p2":
            return httpx.Response(200, json={"items": [task_view("old")], "next_cursor": None})
        return httpx.Response(200, json={"items": [task_view("new")], "next_cursor": "p2"})

    api.handle("GET", "/v1/tasks", page)

    result = run("tasks", "list", "--all", "--json")

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert [t["name"] for t in body["items"]] == ["new", "old"]
    assert body["next_cursor"] is None


def test_bad_created_after_is_a_usage_error(run: Callable[..., Any], api: FakeApi) -> None:
    """A malformed date exits 2 before any request is sent."""
    result = run("tasks", "list", "--created-after", "yesterday")

    assert result.exit_code == 2
    assert api.requests == []


def test_tasks_show_renders_and_dumps_json(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path
) -> None:
    """show draws a panel with the definition and members; --json prints the raw view."""
    logged_in(isolated_env)
    api.on("GET", "/v1/tasks/mnist", httpx.Response(200, json=task_view()))

    panel = run("tasks", "show", "mnist")
    raw = run("tasks", "show", "mnist", "--json")

    assert panel.exit_code == 0, panel.output
    for text in ("mnist", "quorum", "rounds", "john", "ACME", "musketeer.task.id-mnist.broadcast"):
        assert text in panel.stdout
    assert json.loads(raw.stdout)["task_id"] == "id-mnist"


def test_missing_task_exits_1_with_the_server_message(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path
) -> None:
    """A 404 is printed on stderr (no traceback) and exits 1."""
    logged_in(isolated_env)
    api.on("GET", "/v1/tasks/ghost", error(404, "not_found", "task 'ghost' not found"))

    result = run("tasks", "show", "ghost")

    assert result.exit_code == 1
    assert "task 'ghost' not found" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output


def test_expired_session_says_to_log_in_again(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path
) -> None:
    """With a saved token a 401 means the session ended, and says so."""
    logged_in(isolated_env)
    api.on("GET", "/v1/tasks/mnist", error(401, "not_authenticated", "token expired"))

    result = run("tasks", "show", "mnist")

    assert result.exit_code == 1
    assert (
        "token expired" in result.stderr and "login" in result.stderr and "again" in result.stderr
    )


def test_tasks_create_from_flags_and_set(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path
) -> None:
    """Flags and --set build the definition; the seed's `round` spelling is sent as-is."""
    logged_in(isolated_env)
    api.on("POST", "/v1/tasks", httpx.Response(201, json=task_view()))

    result = run(
        "tasks",
        "create",
        "mnist",
        "--quorum",
        "3",
        "--learning-rate",
        "0.01",
        "--set",
        "round=5",
        "--set",
        "point=[1,2]",
        "--set",
        "aggregator=neural_network.Aggregator",
        "--description",
        "digits",
        "--json",
    )

    assert result.exit_code == 0, result.output
    sent = json.loads(api.requests[0].content)
    assert sent["definition"] == {
        "quorum": 3,
        "learning_rate": 0.01,
        "round": 5,
        "point": [1, 2],
        "aggregator": "neural_network.Aggregator",
    }
    assert sent["description"] == "digits" and sent["topology"] == "STAR" and sent["pom"] == 1
    assert json.loads(result.stdout)["name"] == "mnist"


def test_tasks_create_from_a_seed_definition_file(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path
) -> None:
    """A definition file in the seed's JSON goes through unchanged; flags override it."""
    logged_in(isolated_env)
    api.on("POST", "/v1/tasks", httpx.Response(201, json=task_view()))
    seed = {
        "quorum": 2,
        "round": 10,
        "epoch": 2,
        "batch_size": 16,
        "aggregator": "neural_network.Aggregator",
    }
    path = isolated_env / "task.json"
    path.write_text(json.dumps(seed))

    result = run("tasks", "create", "mnist", "--definition", str(path), "--quorum", "4")

    assert result.exit_code == 0, result.output
    assert json.loads(api.requests[0].content)["definition"] == {**seed, "quorum": 4}
    assert "Created task" in result.stdout


def test_tasks_create_needs_a_definition(run: Callable[..., Any], api: FakeApi) -> None:
    """Neither a file nor flags is a usage error (exit 2), with no request sent."""
    result = run("tasks", "create", "mnist")

    assert result.exit_code == 2
    assert api.requests == []


def test_rejected_definition_shows_the_field_errors(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path
) -> None:
    """A 422 prints the server's message and each field error."""
    logged_in(isolated_env)
    details = [
        {"loc": ["body", "definition", "quorum"], "msg": "must be >= 1", "type": "value_error"}
    ]
    api.on("POST", "/v1/tasks", error(422, "invalid_input", "invalid task definition", details))

    result = run("tasks", "create", "mnist", "--quorum", "0", "--rounds", "1")

    assert result.exit_code == 1
    assert "invalid task definition" in result.stderr
    assert "definition.quorum: must be >= 1" in result.stderr


def test_join_and_leave(run: Callable[..., Any], api: FakeApi, isolated_env: Path, keys: FakeKeys) -> None:
    """join and leave report the participant count."""
    logged_in(isolated_env)
    api.on("POST", "/v1/tasks/mnist/join", httpx.Response(200, json=task_view(participant_count=2)))
    api.on(
        "POST", "/v1/tasks/mnist/leave", httpx.Response(200, json=task_view(participant_count=1))
    )

    joined = run("tasks", "join", "mnist")
    left = run("tasks", "leave", "mnist")

    assert joined.exit_code == 0 and "2 participants of a quorum of 3" in joined.stdout
    assert left.exit_code == 0 and "1 participant remains" in left.stdout


def test_join_conflict_exits_1(run: Callable[..., Any], api: FakeApi, isolated_env: Path,
                               keys: FakeKeys) -> None:
    """A 409 is reported once, with its code, and not retried."""
    logged_in(isolated_env)
    api.on("POST", "/v1/tasks/mnist/join", error(409, "conflict", "task has already started"))

    result = run("tasks", "join", "mnist")

    assert result.exit_code == 1
    assert "conflict: task has already started" in result.stderr
    assert sum(1 for r in api.requests if r.url.path.endswith("/join")) == 1


# --- signing keys ------------------------------------------------------------------


def test_join_makes_and_registers_a_key_once(run: Callable[..., Any], api: FakeApi, isolated_env: Path,
                                             keys: FakeKeys) -> None:
    """The first join makes an Ed25519 key (0600, in a 0700 folder beside the login) and registers
    its public half; a second join reuses it."""
    logged_in(isolated_env)
    api.on("POST", "/v1/tasks/mnist/join", httpx.Response(200, json=task_view(participant_count=2)))

    assert run("tasks", "join", "mnist").exit_code == 0
    assert run("tasks", "join", "mnist").exit_code == 0

    assert len(keys.registered) == 1
    folder = isolated_env / "keys" / "alice"
    pems = list(folder.glob("*.pem"))
    assert [p.stem for p in pems] == [fingerprint(base64.b64decode(keys.registered[0]))]
    assert stat.S_IMODE(pems[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert b"PRIVATE KEY" in pems[0].read_bytes()
    assert all(b"PRIVATE" not in r.content for r in api.requests), "the private key left the machine"


def test_rotate_keeps_the_old_key_and_registers_a_new_one(run: Callable[..., Any], api: FakeApi,
                                                         isolated_env: Path, keys: FakeKeys) -> None:
    """rotate registers a second key; the first stays on disk for tasks that recorded it."""
    logged_in(isolated_env)
    assert run("keys", "register").exit_code == 0
    rotated = run("keys", "rotate")

    assert rotated.exit_code == 0 and "Rotated" in rotated.stdout
    assert len(keys.registered) == 2 and keys.registered[0] != keys.registered[1]
    assert len(list((isolated_env / "keys" / "alice").glob("*.pem"))) == 2
    shown = run("keys", "show")
    assert shown.exit_code == 0
    newest = fingerprint(base64.b64decode(keys.registered[1]))
    assert f"active   {newest} (on this machine)" in shown.stdout


def test_delete_asks_first(run: Callable[..., Any], api: FakeApi, isolated_env: Path) -> None:
    """The creator is asked first (answering no deletes nothing); --yes deletes without asking."""
    logged_in(isolated_env)
    api.on("GET", "/v1/tasks/mnist", httpx.Response(200, json=task_view()))
    api.on("GET", "/v1/users/me", httpx.Response(200, json={"username": "alice"}))
    api.on("DELETE", "/v1/tasks/mnist", httpx.Response(200, json=task_view(status="DELETED")))

    refused = run("tasks", "delete", "mnist", input="n\n")
    asked = [r.method for r in api.requests]
    done = run("tasks", "delete", "mnist", "--yes")

    assert refused.exit_code == 1 and "Delete task 'mnist' (CREATED, 1 participant)?" in refused.stdout
    assert asked == ["GET", "GET"]
    assert done.exit_code == 0 and "DELETED" in done.stdout
    assert [r.method for r in api.requests] == ["GET", "GET", "DELETE"]


def test_delete_by_someone_else_fails_before_asking(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path
) -> None:
    """A user who may not delete the task is told so at once, never asked to confirm."""
    logged_in(isolated_env)
    api.on("GET", "/v1/tasks/mnist", httpx.Response(200, json=task_view()))
    api.on("GET", "/v1/users/me", httpx.Response(200, json={"username": "john"}))

    result = run("tasks", "delete", "mnist", input="y\n")

    assert result.exit_code == 1
    assert "only the creator of task 'mnist' (alice) may delete it" in result.stderr
    assert "Delete task" not in result.stdout
    assert "DELETE" not in [r.method for r in api.requests]


def test_history_is_a_timeline(run: Callable[..., Any], api: FakeApi, isolated_env: Path) -> None:
    """history lists position, type, actor and a one-line data summary."""
    logged_in(isolated_env)
    events = [
        {
            "position": 7,
            "version": 1,
            "type": "TaskCreated",
            "data": {"name": "mnist", "definition": {"quorum": 3}},
            "actor": "alice",
            "recorded_at": NOW,
            "hash": "ab",
        },
        {
            "position": 9,
            "version": 2,
            "type": "ParticipantJoined",
            "data": {"username": "john"},
            "actor": "john",
            "recorded_at": NOW,
            "hash": "cd",
        },
    ]
    api.on("GET", "/v1/tasks/mnist/events", httpx.Response(200, json={"items": events}))

    table = run("tasks", "history", "mnist")
    raw = run("tasks", "history", "mnist", "--json")

    assert table.exit_code == 0, table.output
    for text in ("TaskCreated", "ParticipantJoined", "username=john", 'definition={"quorum":3}'):
        assert text in table.stdout
    assert [e["position"] for e in json.loads(raw.stdout)["items"]] == [7, 9]


def test_state_as_of_a_version(run: Callable[..., Any], api: FakeApi, isolated_env: Path) -> None:
    """state asks for the version and says which version it shows."""
    logged_in(isolated_env)
    api.on(
        "GET",
        "/v1/tasks/mnist/state",
        httpx.Response(200, json={**task_view(), "as_of_version": 1}),
    )

    result = run("tasks", "state", "mnist", "--version", "1")

    assert result.exit_code == 0, result.output
    assert "as of version 1" in result.stdout
    assert api.requests[0].url.params["version"] == "1"


def test_audit_verify_broken_chain_exits_1(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path
) -> None:
    """A broken chain names the first bad position and exits 1; an intact one exits 0."""
    logged_in(isolated_env)
    api.on(
        "GET",
        "/v1/audit/verify",
        httpx.Response(200, json={"events": 40, "ok": False, "first_bad_position": 17}),
        httpx.Response(200, json={"events": 40, "ok": True, "first_bad_position": None}),
    )

    broken = run("audit", "verify")
    intact = run("audit", "verify")

    assert broken.exit_code == 1 and "position 17" in broken.stderr
    assert intact.exit_code == 0 and "40 events" in intact.stdout


@dataclass
class FakeDiff:
    rows_before: int
    rows_after: int
    differences: list[str]


@dataclass
class FakeReport:
    ok: bool
    tables: dict[str, FakeDiff]


def test_audit_replay_prints_each_projection(
    run: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """replay shows a table per projection and exits 1 when a rebuild differs."""
    seen: list[str] = []

    def replay(database_url: str) -> FakeReport:
        seen.append(database_url)
        return FakeReport(
            ok=False,
            tables={
                "tasks": FakeDiff(3, 3, []),
                "memberships": FakeDiff(5, 4, ["row (t1, john) missing"]),
            },
        )

    monkeypatch.setattr("infra.audit.replay", replay)

    result = run("audit", "replay", env={"DATABASE_URL": "postgresql://db.test/m"})
    raw = run("audit", "replay", "--database-url", "postgresql://other.test/m", "--json")

    assert seen == ["postgresql://db.test/m", "postgresql://other.test/m"]
    assert result.exit_code == 1
    for text in ("tasks", "identical", "memberships", "row (t1, john) missing", "replay differs"):
        assert text in result.stdout
    assert raw.exit_code == 1
    assert json.loads(raw.stdout)["tables"]["memberships"]["rows_after"] == 4


def test_audit_replay_without_a_database_is_a_usage_error(run: Callable[..., Any]) -> None:
    """No --database-url, no DATABASE_URL and none in the profile: exit 2."""
    result = run("audit", "replay")

    assert result.exit_code == 2


def test_every_command_explains_itself(run: Callable[..., Any]) -> None:
    """Each command has --help text and takes --api-url."""
    commands = [["register"], ["login"], ["logout"], ["whoami"], ["audit", "verify"]]
    commands += [["tasks", name] for name in cli.TASK_COMMANDS]
    commands += [["keys", name] for name in cli.KEY_COMMANDS]
    for command in commands:
        result = run(*command, "--help")
        assert result.exit_code == 0, command
        assert "--api-url" in result.stdout, command


def test_unreachable_api_in_the_cli(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path
) -> None:
    """A down platform exits 1 with the suggestion to start it, never a traceback."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    api.handle("GET", "/v1/users/me", refuse)

    result = run("whoami")

    assert result.exit_code == 1
    assert "musketeer platform up" in result.stderr
    assert "Traceback" not in result.output


# --- models download ----------------------------------------------------------------

CONTENT = b"PK\x03\x04 a .keras zip, as far as this test is concerned"
DIGEST = hashlib.sha256(CONTENT).hexdigest()


def keras_response(content: bytes = CONTENT, digest: str = DIGEST) -> httpx.Response:
    return httpx.Response(200, content=content, headers={"X-Model-SHA256": digest})


def test_download_saves_the_keras_file_and_prints_its_digest(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path, tmp_path: Path
) -> None:
    """It asks for format=keras, writes the bytes to -o and prints the sha256."""
    logged_in(isolated_env)
    api.on("GET", "/v1/tasks/t1/model", keras_response())
    target = tmp_path / "out" / "model.keras"
    result = run("models", "download", "t1", "-o", str(target))
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == CONTENT and DIGEST in result.output.replace("\n", "")
    assert api.requests[-1].url.params["format"] == "keras"


def test_a_digest_mismatch_writes_nothing(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path, tmp_path: Path
) -> None:
    """Bytes that do not hash to X-Model-SHA256 are refused: exit 1, no file."""
    logged_in(isolated_env)
    api.on("GET", "/v1/tasks/t1/model", keras_response(digest="0" * 64))
    folder = tmp_path / "models"
    result = run("models", "download", "t1", "-o", str(folder / "model.keras"))
    assert result.exit_code == 1 and "X-Model-SHA256" in result.output
    assert not folder.exists()


def test_an_existing_file_is_kept_without_force(
    run: Callable[..., Any], api: FakeApi, isolated_env: Path, tmp_path: Path
) -> None:
    """An existing file is not overwritten unless --force is given."""
    logged_in(isolated_env)
    api.on("GET", "/v1/tasks/t1/model", keras_response())
    target = tmp_path / "model.keras"
    target.write_bytes(b"mine")
    refused = run("models", "download", "t1", "-o", str(target))
    assert refused.exit_code == 1 and "--force" in refused.output and target.read_bytes() == b"mine"
    assert run("models", "download", "t1", "-o", str(target), "--force").exit_code == 0
    assert target.read_bytes() == CONTENT
