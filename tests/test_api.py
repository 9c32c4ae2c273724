"""HTTP API v1 against a real API process, the real PostgreSQL and the real broker."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.keys import public_text
from streams.topics import TopicAdmin
from tests.conftest import ApiProcess, unique

pytestmark = pytest.mark.integration

SEED_DEFINITION = {
    "quorum": 2, "round": 5, "epoch": 2, "batch_size": 128, "learning_rate": 0.001,
    "training_size": 4000, "test_size": 1000, "aggregator": "neural_network.Aggregator",
    "model": "mnist-cnn",
}


@dataclass
class User:
    name: str
    token: str
    http: httpx.Client

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.http.get(path, headers=self.auth, **kw)

    def post(self, path: str, headers: dict[str, str] | None = None, **kw: Any) -> httpx.Response:
        return self.http.post(path, headers={**self.auth, **(headers or {})}, **kw)

    def delete(self, path: str) -> httpx.Response:
        return self.http.delete(path, headers=self.auth)

    def register_key(self) -> None:
        """A signing key on record, as a daemon registers one (a task starts only when all have one)."""
        key = public_text(Ed25519PrivateKey.generate())
        response = self.http.put("/v1/users/me/keys", headers=self.auth, json={"public_key": key})
        assert response.status_code in (200, 201), response.text

    def create_task(self, name: str | None = None, **definition: Any) -> dict[str, Any]:
        body = {"name": name or unique("task"), "definition": {"quorum": 1, "rounds": 2, "model": "digits-mlp",
                                                                 **definition}}
        response = self.post("/v1/tasks", json=body)
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture()
def http(api: ApiProcess) -> httpx.Client:
    with httpx.Client(base_url=api.url, timeout=30) as client:
        yield client


def register(http: httpx.Client, organization: str = "Org") -> User:
    name = unique("u")
    response = http.post("/v1/users", json={"username": name, "password": "s3cret-pass",
                                            "organization": organization})
    assert response.status_code == 201, response.text
    token = http.post("/v1/auth/token", data={"username": name, "password": "s3cret-pass"})
    assert token.status_code == 200, token.text
    return User(name, token.json()["access_token"], http)


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "details"}
    assert body["message"]
    if code:
        assert body["error"] == code
    return body


# --- users and tokens ------------------------------------------------------------

def test_register_returns_the_user_and_refuses_a_taken_name(http: httpx.Client) -> None:
    """Registration gives 201 once; the same name again is a 409."""
    name = unique("alice")
    body = {"username": name, "password": "long-enough", "organization": "Acme"}
    first = http.post("/v1/users", json=body)
    assert first.status_code == 201
    assert first.json()["username"] == name and first.json()["organization"] == "Acme"
    assert "password" not in first.text
    assert_error(http.post("/v1/users", json=body), 409, "conflict")


@pytest.mark.parametrize("body, field", [
    ({"username": "ab", "password": "long-enough", "organization": "O"}, "username"),
    ({"username": "bad name!", "password": "long-enough", "organization": "O"}, "username"),
    ({"username": "x" * 65, "password": "long-enough", "organization": "O"}, "username"),
    ({"username": "okname", "password": "short", "organization": "O"}, "password"),
    ({"username": "okname", "password": "long-enough"}, "organization"),
])
def test_register_rejects_bad_input_naming_the_field(http: httpx.Client, body: dict[str, Any],
                                                     field: str) -> None:
    """Bad names and short passwords are 422s whose message names the field."""
    error = assert_error(http.post("/v1/users", json=body), 422, "invalid_input")
    assert field in error["message"]


def test_token_by_form_and_json_and_refusal_of_a_wrong_pair(http: httpx.Client) -> None:
    """Form and JSON logins both work; a wrong password or unknown user is 401."""
    user = register(http)
    by_json = http.post("/v1/auth/token", json={"username": user.name, "password": "s3cret-pass"})
    assert by_json.status_code == 200
    token = by_json.json()
    assert token["token_type"] == "bearer" and token["expires_in"] > 0
    wrong = http.post("/v1/auth/token", data={"username": user.name, "password": "nope-nope"})
    assert_error(wrong, 401, "not_authenticated")
    unknown = http.post("/v1/auth/token", json={"username": unique("ghost"), "password": "x" * 9})
    assert_error(unknown, 401)
    assert_error(http.post("/v1/auth/token", json={"username": "only"}), 422)
    # A name the database cannot even look up (the NUL character; found by the fuzzer): 422.
    nul = assert_error(http.post("/v1/auth/token", data={"username": "a\x00b", "password": "x" * 9}), 422)
    assert "cannot store" in nul["message"], nul


def test_me_needs_a_valid_token(http: httpx.Client) -> None:
    """/v1/users/me answers the token's owner; no token or a bad one is 401."""
    user = register(http, organization="Hospital")
    me = user.get("/v1/users/me")
    assert me.status_code == 200 and me.json()["organization"] == "Hospital"
    assert_error(http.get("/v1/users/me"), 401)
    assert_error(http.get("/v1/users/me", headers={"Authorization": "Bearer forged"}), 401)


def test_passwords_are_stored_hashed_and_never_in_the_log(http: httpx.Client, database_url: str) -> None:
    """The credential row holds an argon2 hash; no event mentions the password."""
    user = register(http)
    with psycopg.connect(database_url) as conn:
        stored = conn.execute("SELECT password_hash FROM credentials WHERE username = %s",
                              (user.name,)).fetchone()[0]
        leaks = conn.execute("SELECT count(*) FROM events WHERE data::text LIKE %s",
                             ("%s3cret-pass%",)).fetchone()[0]
    assert stored.startswith("$argon2id$")
    assert leaks == 0


# --- tasks -----------------------------------------------------------------------

def test_create_task_normalises_the_seed_definition_and_creates_topics(
    http: httpx.Client, broker: Any
) -> None:
    """The seed's spelling is accepted and normalised; both topics exist on the broker."""
    alice = register(http)
    name = unique("seed-task")
    response = alice.post("/v1/tasks", json={"name": name, "definition": SEED_DEFINITION,
                                             "topology": "STAR", "pom": 1,
                                             "description": "MNIST"})
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["status"] == "CREATED" and task["creator"] == alice.name
    assert task["definition"]["rounds"] == 5 and task["definition"]["epochs"] == 2
    assert task["definition"]["algorithm"] == "fedavg"
    assert "round" not in task["definition"] and "aggregator" not in task["definition"]
    assert task["quorum"] == 2 and task["participants"] == []
    admin = TopicAdmin(broker.bootstrap)
    assert admin.exists(task["topics"]["broadcast"]) and admin.exists(task["topics"]["updates"])
    assert_error(alice.post("/v1/tasks", json={"name": name, "definition": SEED_DEFINITION}),
                 409, "conflict")


MODEL = {"model": "digits-mlp"}


@pytest.mark.parametrize("definition, words", [
    ({**MODEL, "quorum": 0, "rounds": 1}, "quorum"),
    ({**MODEL, "quorum": 1, "rounds": 0}, "rounds"),
    ({**MODEL, "quorum": 1, "rounds": 1, "learning_rate": 0}, "learning_rate"),
    ({**MODEL, "quorum": 3, "rounds": 1, "max_participants": 2}, "max_participants"),
    ({**MODEL, "quorum": 1, "rounds": 1, "aggregator": "os.system"}, "algorithm"),
    ({**MODEL, "rounds": 1}, "quorum"),
    ({**MODEL, "quorum": 1125899906842623, "rounds": 1}, "quorum"),  # beyond PostgreSQL's int (fuzzer)
    ({**MODEL, "quorum": 1, "rounds": 1, "max_participants": 2**40}, "max_participants"),
    ({"quorum": 1, "rounds": 1, "model": "resnet-9000"}, "unknown model 'resnet-9000'"),
    ({"quorum": 1, "rounds": 1}, "no model"),
])
def test_create_task_rejects_a_bad_definition(http: httpx.Client, definition: dict[str, Any],
                                              words: str) -> None:
    """A bad definition is a 422 naming what is wrong; nothing is created."""
    alice = register(http)
    name = unique("bad")
    error = assert_error(alice.post("/v1/tasks", json={"name": name, "definition": definition}),
                         422, "invalid_input")
    assert words in error["message"] or words in str(error["details"])
    assert_error(alice.get(f"/v1/tasks/{name}"), 404)


def test_text_the_database_cannot_store_is_a_422_and_nothing_is_stored(http: httpx.Client) -> None:
    """The NUL character (which PostgreSQL cannot hold) in a definition key, a nested value or the
    description: 422 naming where, not a 500, and no task (the fuzzer found the definition case)."""
    alice = register(http)
    for body, where in (
        ({"definition": {"quorum": 1, "rounds": 1, "model": "digits-mlp", "note\u0000": 1}}, "definition"),
        ({"definition": {"quorum": 1, "rounds": 1, "model": "digits-mlp", "extra": {"a": ["ok", "b\u0000"]}}},
         "definition.extra.a[1]"),
        ({"definition": {"quorum": 1, "rounds": 1, "model": "digits-mlp"}, "description": "MNIST\u0000"},
         "description"),
    ):
        name = unique("nul")
        error = assert_error(alice.post("/v1/tasks", json={"name": name, **body}), 422, "invalid_input")
        assert where in error["message"] and "NUL" in error["message"], error
        assert_error(alice.get(f"/v1/tasks/{name}"), 404)


def test_create_task_needs_a_token(http: httpx.Client) -> None:
    """Commands are authorised: no token, no task."""
    body = {"name": unique("t"), "definition": {"quorum": 1, "rounds": 1, "model": "digits-mlp"}}
    assert_error(http.post("/v1/tasks", json=body), 401)


def test_idempotent_create_returns_the_first_result_and_appends_nothing(
    http: httpx.Client, database_url: str
) -> None:
    """A retried POST with the same Idempotency-Key gives the same task and one event."""
    alice = register(http)
    body = {"name": unique("idem"), "definition": {"quorum": 1, "rounds": 1, "model": "digits-mlp"}}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = alice.post("/v1/tasks", json=body, headers=key)
    second = alice.post("/v1/tasks", json=body, headers=key)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    with psycopg.connect(database_url) as conn:
        count = conn.execute("SELECT count(*) FROM events WHERE type = 'TaskCreated'"
                             " AND data->>'name' = %s", (body["name"],)).fetchone()[0]
    assert count == 1
    other = {"name": unique("other"), "definition": {"quorum": 1, "rounds": 1, "model": "digits-mlp"}}
    assert_error(alice.post("/v1/tasks", json=other, headers=key), 409, "idempotency_key_reused")


def test_show_task_and_404(http: httpx.Client) -> None:
    """A task shows status, creator, definition, participants, quorum, topics and times."""
    alice = register(http)
    task = alice.create_task()
    shown = alice.get(f"/v1/tasks/{task['name']}").json()
    for field in ("status", "creator", "definition", "participants", "quorum", "topics",
                  "created_at", "updated_at"):
        assert field in shown
    assert shown == task
    assert_error(alice.get(f"/v1/tasks/{unique('missing')}"), 404, "not_found")


def test_list_filters_and_pages_newest_first(http: httpx.Client) -> None:
    """Filters narrow the list; cursors walk it newest first without repeats."""
    alice, john = register(http), register(http)
    marker = unique("list")
    names = [alice.create_task(f"{marker}-{i}")["name"] for i in range(5)]
    assert john.post(f"/v1/tasks/{names[1]}/join").status_code == 200
    # The creator cannot join: 403, nothing changes.
    assert_error(alice.post(f"/v1/tasks/{names[4]}/join"), 403, "forbidden")
    alice.delete(f"/v1/tasks/{names[0]}")

    page = alice.get("/v1/tasks", params={"search": marker, "limit": 2}).json()
    seen = [t["name"] for t in page["items"]]
    while page["next_cursor"]:
        page = alice.get("/v1/tasks", params={"search": marker, "limit": 2,
                                              "cursor": page["next_cursor"]}).json()
        seen += [t["name"] for t in page["items"]]
    assert seen == list(reversed(names))

    def names_for(user: User, **params: Any) -> list[str]:
        response = user.get("/v1/tasks", params={"search": marker, **params})
        assert response.status_code == 200, response.text
        return [t["name"] for t in response.json()["items"]]

    assert names_for(john, joined="true") == [names[1]]
    assert names[1] not in names_for(john, joined="false")
    assert names_for(alice, status="DELETED") == [names[0]]
    assert len(names_for(alice, creator=alice.name)) == 5
    assert names_for(alice, creator=john.name) == []
    assert names_for(alice, pom=2) == []
    assert len(names_for(alice, created_after="2000-01-01T00:00:00Z")) == 5
    assert names_for(alice, created_after="2999-01-01T00:00:00Z") == []
    assert_error(alice.get("/v1/tasks", params={"cursor": "garbage!"}), 422)
    assert_error(alice.get("/v1/tasks", params={"limit": 0}), 422)
    assert_error(alice.get("/v1/tasks", params={"status": "SLEEPING"}), 422)
    assert_error(http.get("/v1/tasks"), 401)


def test_join_rules(http: httpx.Client) -> None:
    """Joining works once; the creator cannot join; a missing task is 404."""
    alice, john = register(http), register(http)
    task = alice.create_task()
    path = f"/v1/tasks/{task['name']}/join"
    joined = john.post(path)
    assert joined.status_code == 200
    assert [p["username"] for p in joined.json()["participants"]] == [john.name]
    assert_error(john.post(path), 409, "conflict")
    assert_error(alice.post(path), 403, "forbidden")
    assert_error(john.post(f"/v1/tasks/{unique('nope')}/join"), 404)


def test_join_a_full_task_is_409(http: httpx.Client) -> None:
    """max_participants caps the members."""
    alice, john, jack = register(http), register(http), register(http)
    task = alice.create_task(max_participants=1)
    assert john.post(f"/v1/tasks/{task['name']}/join").status_code == 200
    error = assert_error(jack.post(f"/v1/tasks/{task['name']}/join"), 409)
    assert "full" in error["message"]


def test_fifty_concurrent_joins_give_exactly_five_members(http: httpx.Client, api: ApiProcess) -> None:
    """50 users join a task with max_participants 5 at once: 5 succeed, 45 get a clean 409."""
    alice = register(http)
    task = alice.create_task(quorum=2, max_participants=5)
    users = [register(http) for _ in range(50)]

    def join(user: User) -> int:
        with httpx.Client(base_url=api.url, timeout=60) as own:
            for _ in range(5):  # a 503 (no database connection free within 3 s) is retryable
                response = own.post(f"/v1/tasks/{task['name']}/join", headers=user.auth)
                if response.status_code != 503:
                    break
            if response.status_code == 409:
                assert response.json()["error"] == "conflict"
            return response.status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(join, users))

    assert statuses.count(200) == 5
    assert statuses.count(409) == 45
    shown = alice.get(f"/v1/tasks/{task['name']}").json()
    assert shown["participant_count"] == 5 and len(shown["participants"]) == 5


def test_leave_while_created_only(http: httpx.Client) -> None:
    """A participant may leave a CREATED task; a stranger is 403; after start it is 409."""
    alice, john, jack = register(http), register(http), register(http)
    task = alice.create_task()
    john.post(f"/v1/tasks/{task['name']}/join")
    jack.post(f"/v1/tasks/{task['name']}/join")
    left = john.post(f"/v1/tasks/{task['name']}/leave")
    assert left.status_code == 200
    assert [p["username"] for p in left.json()["participants"]] == [jack.name]
    assert_error(john.post(f"/v1/tasks/{task['name']}/leave"), 403)
    alice.register_key()
    jack.register_key()
    assert alice.post(f"/v1/tasks/{task['name']}/start").status_code == 200
    assert_error(jack.post(f"/v1/tasks/{task['name']}/leave"), 409, "conflict")
    assert_error(register(http).post(f"/v1/tasks/{task['name']}/join"), 409)


def test_delete_by_creator_only_removes_topics(http: httpx.Client, broker: Any) -> None:
    """Only the creator deletes; the task turns DELETED, its topics go, later commands are 409."""
    alice, john = register(http), register(http)
    task = alice.create_task()
    path = f"/v1/tasks/{task['name']}"
    assert_error(john.delete(path), 403, "forbidden")
    deleted = alice.delete(path)
    assert deleted.status_code == 200 and deleted.json()["status"] == "DELETED"
    admin = TopicAdmin(broker.bootstrap)
    assert not admin.exists(task["topics"]["broadcast"])
    assert not admin.exists(task["topics"]["updates"])
    assert_error(alice.delete(path), 409)
    assert_error(john.post(f"{path}/join"), 409)
    assert_error(alice.delete(f"/v1/tasks/{unique('nope')}"), 404)


def test_events_and_time_travel_for_insiders_only(http: httpx.Client) -> None:
    """Creator and participants see the history and past states; others get 403."""
    alice, john, jack, eve = register(http), register(http), register(http), register(http)
    task = alice.create_task()
    john.post(f"/v1/tasks/{task['name']}/join")
    jack.post(f"/v1/tasks/{task['name']}/join")

    history = john.get(f"/v1/tasks/{task['name']}/events")
    assert history.status_code == 200
    items = history.json()["items"]
    assert [e["type"] for e in items] == ["TaskCreated", "ParticipantJoined", "ParticipantJoined"]
    assert [e["version"] for e in items] == [1, 2, 3]
    assert [e["actor"] for e in items] == [alice.name, john.name, jack.name]
    assert items[0]["position"] < items[1]["position"] < items[2]["position"]
    assert all(len(e["hash"]) == 64 for e in items)

    then = alice.get(f"/v1/tasks/{task['name']}/state", params={"version": 2}).json()
    assert then["as_of_version"] == 2
    assert [p["username"] for p in then["participants"]] == [john.name]
    now = alice.get(f"/v1/tasks/{task['name']}/state", params={"version": 3}).json()
    assert now["participant_count"] == 2
    assert_error(alice.get(f"/v1/tasks/{task['name']}/state", params={"version": 4}), 404)
    assert_error(alice.get(f"/v1/tasks/{task['name']}/state", params={"version": 0}), 422)
    assert_error(eve.get(f"/v1/tasks/{task['name']}/events"), 403)
    assert_error(eve.get(f"/v1/tasks/{task['name']}/state", params={"version": 1}), 403)


def test_audit_verify_walks_the_chain(http: httpx.Client) -> None:
    """The whole log verifies."""
    alice = register(http)
    report = alice.get("/v1/audit/verify").json()
    assert report["ok"] is True and report["first_bad_position"] is None and report["events"] > 0
    assert_error(http.get("/v1/audit/verify"), 401)


def test_health_and_readiness(http: httpx.Client) -> None:
    """Liveness always; readiness checks PostgreSQL and the broker."""
    assert http.get("/healthz").status_code == 200
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}


def test_readiness_names_an_unreachable_broker(database_url: str, tmp_path: Any, topic_prefix: str) -> None:
    """With no broker at the configured address, /readyz is 503 and says why."""
    from infra.procs import find_free_port
    from tests.conftest import start_api

    dead = f"127.0.0.1:{find_free_port('127.0.0.1')}"
    process = start_api(database_url, dead, tmp_path, topic_prefix, MUSKETEER_RELAY="false")
    try:
        ready = httpx.get(f"{process.url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "ok"
        assert dead in ready.json()["checks"]["broker"]
    finally:
        process.stop()


def test_unknown_route_and_method_give_json_errors(http: httpx.Client) -> None:
    """Even routing errors use the error body."""
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.put("/v1/users"), 405)
