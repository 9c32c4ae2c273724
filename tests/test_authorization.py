"""Every HTTP route, as an anonymous caller, a stranger, a participant and the task's creator:
each answer is checked against the "who" column of the README's API table, and the table, the
routes the API serves and the requests this test sends must name the same routes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import MusketeerClient
from client.keys import fingerprint_of, public_text
from tests.conftest import ApiProcess, unique

pytestmark = pytest.mark.integration

ROLES = ("anonymous", "stranger", "participant", "creator")
ALLOWED, DENIED, UNAUTHENTICATED = "allowed", "403", "401"
# Who may call a route (the README's words) -> what each role must get.
WHO: dict[str, dict[str, str]] = {
    "anyone": dict.fromkeys(ROLES, ALLOWED),
    "user": {"anonymous": UNAUTHENTICATED, "stranger": ALLOWED, "participant": ALLOWED, "creator": ALLOWED},
    "user, not the creator": {"anonymous": UNAUTHENTICATED, "stranger": ALLOWED, "participant": ALLOWED,
                              "creator": DENIED},
    "participant": {"anonymous": UNAUTHENTICATED, "stranger": DENIED, "participant": ALLOWED,
                    "creator": DENIED},
    "creator": {"anonymous": UNAUTHENTICATED, "stranger": DENIED, "participant": DENIED, "creator": ALLOWED},
    "creator, participants": {"anonymous": UNAUTHENTICATED, "stranger": DENIED, "participant": ALLOWED,
                              "creator": ALLOWED},
}
MODEL = b"a model artifact"
DIGEST = hashlib.sha256(MODEL).hexdigest()


@dataclass
class World:
    """Three users with keys; `fresh_task` makes a task of alice's that john joined."""

    api: ApiProcess
    people: dict[str, MusketeerClient]

    def token(self, role: str) -> str | None:
        who = {"stranger": "eve", "participant": "john", "creator": "alice"}.get(role)
        return self.people[who].token if who else None

    def name(self, role: str) -> str:
        return {"stranger": "eve", "participant": "john", "creator": "alice"}.get(role, "alice")

    def fresh_task(self) -> str:
        name = unique("authz")
        self.people["alice"].create_task(name, {"quorum": 1, "rounds": 1, "model": "digits-mlp"})
        self.people["john"].join(name)
        return name


Request = Callable[[World, str], tuple[str, str, dict[str, Any]]]


def on_task(method: str, action: str = "", **kwargs: Any) -> Request:
    return lambda world, role: (method, f"/v1/tasks/{world.fresh_task()}{action}", kwargs)


def revocation(world: World, role: str) -> tuple[str, str, dict[str, Any]]:
    key = Ed25519PrivateKey.generate()
    world.people[world.name(role)].register_key(public_text(key))
    return "DELETE", f"/v1/users/me/keys/{fingerprint_of(key)}", {}


def login(world: World, role: str) -> tuple[str, str, dict[str, Any]]:
    return "POST", "/v1/auth/token", {"data": {"username": world.people[world.name(role)].me().username,
                                               "password": "authz-password"}}


REQUESTS: dict[tuple[str, str], Request] = {
    ("POST", "/v1/users"): lambda w, r: ("POST", "/v1/users", {"json": {
        "username": unique("new"), "password": "authz-password", "organization": "Org"}}),
    ("POST", "/v1/auth/token"): login,
    ("GET", "/v1/users/me"): lambda w, r: ("GET", "/v1/users/me", {}),
    ("PUT", "/v1/users/me/keys"): lambda w, r: ("PUT", "/v1/users/me/keys", {"json": {
        "public_key": public_text(Ed25519PrivateKey.generate())}}),
    ("GET", "/v1/users/me/keys"): lambda w, r: ("GET", "/v1/users/me/keys", {}),
    ("DELETE", "/v1/users/me/keys/{fingerprint}"): revocation,
    ("POST", "/v1/tasks"): lambda w, r: ("POST", "/v1/tasks", {"json": {
        "name": unique("authz-new"), "definition": {"quorum": 1, "rounds": 1, "model": "digits-mlp"}}}),
    ("GET", "/v1/tasks"): lambda w, r: ("GET", "/v1/tasks", {}),
    ("GET", "/v1/tasks/{name}"): on_task("GET"),
    ("POST", "/v1/tasks/{name}/join"): on_task("POST", "/join"),
    ("POST", "/v1/tasks/{name}/leave"): on_task("POST", "/leave"),
    ("DELETE", "/v1/tasks/{name}"): on_task("DELETE"),
    ("GET", "/v1/tasks/{name}/events"): on_task("GET", "/events"),
    ("GET", "/v1/tasks/{name}/state"): on_task("GET", "/state", params={"version": 1}),
    ("POST", "/v1/tasks/{name}/start"): on_task("POST", "/start"),
    ("GET", "/v1/tasks/{name}/keys"): on_task("GET", "/keys"),
    ("PUT", "/v1/tasks/{name}/model"): on_task("PUT", "/model", content=MODEL),
    ("POST", "/v1/tasks/{name}/rounds"): on_task("POST", "/rounds", json={
        "round": 1, "participants": [], "model_sha256": DIGEST}),
    ("GET", "/v1/tasks/{name}/rounds"): on_task("GET", "/rounds"),
    ("POST", "/v1/tasks/{name}/rejections"): on_task("POST", "/rejections", json={
        "round": 1, "sender": "someone", "reason": "a test"}),
    ("POST", "/v1/tasks/{name}/missed"): on_task("POST", "/missed", json={"round": 1, "participants": ["someone"]}),
    ("POST", "/v1/tasks/{name}/complete"): on_task("POST", "/complete", json={"model_sha256": DIGEST}),
    ("POST", "/v1/tasks/{name}/fail"): on_task("POST", "/fail", json={"reason": "a test"}),
    ("GET", "/v1/tasks/{name}/model"): on_task("GET", "/model"),
    ("POST", "/v1/tasks/{name}/contributions"): on_task("POST", "/contributions", json={
        "round": 1, "method": "leave_one_out", "metric": "accuracy", "values": {"someone": 0.1},
        "baseline": 0.5, "total": 0.6, "data": "digits"}),
    ("GET", "/v1/tasks/{name}/contributions"): on_task("GET", "/contributions"),
    ("GET", "/v1/models"): lambda w, r: ("GET", "/v1/models", {}),
    ("GET", "/v1/audit/verify"): lambda w, r: ("GET", "/v1/audit/verify", {}),
    ("GET", "/healthz"): lambda w, r: ("GET", "/healthz", {}),
    ("GET", "/readyz"): lambda w, r: ("GET", "/readyz", {}),
}


def readme_who() -> dict[tuple[str, str], str]:
    """(method, path) -> who, from the README's API table."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("## The HTTP API at a glance"):]
    section = section[:section.index("\n## ", 5)]
    rows = re.findall(r"^\| `(GET|POST|PUT|DELETE) ([^`?\s]+)[^`]*`[^|]*\| ([^|]+?) \|", section, re.MULTILINE)
    return {(method, path): who for method, path, who in rows}


@pytest.fixture(scope="module")
def world(api: ApiProcess) -> World:
    people = {}
    for name in ("alice", "john", "eve"):
        client = MusketeerClient(api.url)
        username = unique(name)
        client.register(username, "authz-password", "Org")
        client.login(username, "authz-password")
        client.register_key(public_text(Ed25519PrivateKey.generate()))
        people[name] = client
    return World(api, people)


def test_the_readme_the_api_and_this_test_name_the_same_routes(api: ApiProcess) -> None:
    """A route the API serves but the table (or this test) forgets fails here."""
    spec = httpx.get(f"{api.url}/openapi.json", timeout=10).json()
    served = {(method.upper(), path) for path, methods in spec["paths"].items() for method in methods}
    assert served == set(readme_who()), f"README table and API differ: {served ^ set(readme_who())}"
    assert served == set(REQUESTS), f"this test and the API differ: {served ^ set(REQUESTS)}"
    assert set(readme_who().values()) <= set(WHO), f"unknown 'who' in the README: {set(readme_who().values())}"


@pytest.mark.parametrize("route", sorted(REQUESTS))
def test_every_route_answers_each_role_as_the_table_says(world: World, route: tuple[str, str]) -> None:
    """401 for the anonymous where a user is needed, 403 where the role may not, never a 5xx."""
    who = readme_who()[route]
    answers = {}
    for role in ROLES:
        method, path, kwargs = REQUESTS[route](world, role)
        token = world.token(role)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = httpx.request(method, f"{world.api.url}{path}", headers=headers, timeout=30, **kwargs)
        assert response.status_code < 500, f"{route} as {role}: {response.status_code} {response.text}"
        got = str(response.status_code) if response.status_code in (401, 403) else ALLOWED
        answers[role] = (got, response.status_code)
    expected = WHO[who]
    assert {role: got for role, (got, _) in answers.items()} == expected, f"{route} ({who}): {answers}"
