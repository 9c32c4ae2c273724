"""The web dashboard over HTTP (a real API process and PostgreSQL): cookie sessions, CSRF,
form errors beside their fields, authorisation, charts; plus its pure helpers."""

from __future__ import annotations

import html
import re

import httpx
import pytest

from api.queries import RoundView
from api.web import forms, pages
from api.web.chart import Series, line_chart
from api.web.session import csrf_for_session, safe_next
from tests.conftest import ApiProcess, unique
from tests.training_support import PASSWORD, member


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    match = re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


def browser(api: ApiProcess) -> httpx.Client:
    """A cookie-keeping HTTP client, as a browser is."""
    return httpx.Client(base_url=api.url, follow_redirects=False, timeout=30)


def sign_up(api: ApiProcess, prefix: str) -> tuple[httpx.Client, str]:
    """Register through the form; return the signed-in browser and the user's name."""
    web, name = browser(api), unique(prefix)
    token = csrf_of(web.get("/register").text)
    response = web.post("/register", data={"username": name, "password": PASSWORD,
                                           "organization": "Org", "csrf_token": token})
    assert response.status_code == 303, response.text
    return web, name


def test_model_suggestions_are_the_registry_models() -> None:
    """The create-task form suggests exactly the models the daemons know."""
    from ml.registry import known_models

    assert list(forms.MODEL_SUGGESTIONS) == known_models()


def test_task_form_keys_errors_by_field() -> None:
    """A bad quorum is reported on `quorum`, a bad name on `name`; a good form is a command."""
    bad = forms.task_form({"name": "has space", "quorum": "0", "rounds": "3"})
    assert set(bad.errors) == {"name", "quorum"} and bad.command is None
    whole = forms.task_form({"name": "t", "quorum": "3", "rounds": "2", "max_participants": "2"})
    assert "below quorum" in whole.errors["_form"]
    good = forms.task_form({"name": "t1", "quorum": "2", "rounds": "3", "learning_rate": "0.01",
                            "standardise": "1", "pom": "2", "model": "digits-mlp", "training_size": "100"})
    assert good.command is not None, good.errors
    assert good.command.definition.to_json() == {
        "quorum": 2, "rounds": 3, "epochs": 1, "batch_size": 32, "learning_rate": 0.01, "training_size": 100,
        "algorithm": "fedavg", "aggregation": "fedavg", "model": "digits-mlp", "standardise": True}
    assert good.command.pom == 2


def test_charts_place_points_by_round_and_skip_missing_values() -> None:
    """Accuracy 0 sits on the bottom edge and 1 on the top; a missing value draws no dot."""
    chart = line_chart("acc", [1, 2, 3], [Series("a", "local", [0.0, None, 1.0])], floor=0, ceiling=1)
    assert chart.lines[0][1] == "48.0,190.0 548.0,14.0"
    assert len(chart.dots) == 2 and chart.dots[1][3] == "round 3: a 1.0000"


def test_round_charts_draw_local_and_held_out_metrics() -> None:
    """Both charts hold the participants' average and the held-out line, per round."""
    rounds = [RoundView(round=r, participants=["a"], samples={"a": 1}, metrics={"loss": 1 / r, "accuracy": 0.5},
                        eval_metrics={"accuracy": 0.6}, model_sha256="0" * 64, duration_s=1.0,
                        recorded_at="2026-01-01T00:00:00Z") for r in (1, 2)]
    loss, accuracy = pages.round_charts(rounds)
    assert [s.label for s, _ in accuracy.lines] == ["local test accuracy", "held-out accuracy"]
    assert loss.lines[1][1] == "" and len(accuracy.dots) == 4


def test_only_local_paths_are_followed_after_login() -> None:
    """`next` never sends a user to another site."""
    assert safe_next("/tasks/x") == "/tasks/x"
    for hostile in ("https://evil.example", "//evil.example", "/\\evil.example", None):
        assert safe_next(hostile) == "/tasks"


@pytest.mark.integration
def test_registration_signs_in_with_a_safe_cookie(api: ApiProcess) -> None:
    """The session cookie is HttpOnly and SameSite; the pages then know the user."""
    web, name = browser(api), unique("alice")
    page = web.get("/register")
    token = csrf_of(page.text)
    assert "content-security-policy" in page.headers
    response = web.post("/register", data={"username": name, "password": PASSWORD,
                                           "organization": "IBM", "csrf_token": token})
    cookie = response.headers["set-cookie"].lower()
    assert response.status_code == 303 and "httponly" in cookie and "samesite=lax" in cookie
    assert f'data-testid="signed-in-as">{name}<' in web.get("/tasks").text


@pytest.mark.integration
def test_forms_without_the_csrf_token_are_refused(api: ApiProcess) -> None:
    """A POST without its token (another site's form) changes nothing: 403."""
    web, name = sign_up(api, "csrf")
    refused = web.post("/new-task", data={"name": unique("t"), "quorum": "1", "rounds": "1"})
    assert refused.status_code == 403 and "security token" in refused.text
    anonymous = browser(api).post("/login", data={"username": name, "password": PASSWORD,
                                                  "csrf_token": "0" * 40})
    assert anonymous.status_code == 403


@pytest.mark.integration
def test_a_bad_field_is_shown_beside_it_and_nothing_is_created(api: ApiProcess) -> None:
    """Quorum 0: 422, the message beside the quorum field, the values kept, no task stored."""
    web, _name = sign_up(api, "form")
    task = unique("t")
    page = web.post("/new-task", data={"name": task, "quorum": "0", "rounds": "3",
                                       "csrf_token": csrf_of(web.get("/new-task").text)})
    assert page.status_code == 422
    assert re.search(r'data-testid="error-quorum">[^<]*greater than or equal to 1', page.text)
    assert f'value="{task}"' in page.text
    assert web.get(f"/tasks/{task}").status_code == 404


@pytest.mark.integration
def test_a_participant_sees_no_delete_button_and_may_not_delete(api: ApiProcess) -> None:
    """Only the creator gets Delete; a forged delete by a participant is refused with 403."""
    alice, john = member(api, "alice"), member(api, "john")
    task = unique("t")
    alice.client.create_task(task, {"quorum": 1, "rounds": 1, "model": "digits-mlp"})
    john.client.join(task)
    web = browser(api)
    token = csrf_of(web.get("/login").text)
    assert web.post("/login", data={"username": john.name, "password": PASSWORD,
                                    "csrf_token": token}).status_code == 303
    page = web.get(f"/tasks/{task}").text
    assert 'data-testid="action-leave"' in page and 'data-testid="action-delete"' not in page
    refused = web.post(f"/tasks/{task}/delete", data={"csrf_token": csrf_of(page)})
    assert refused.status_code == 403 and f"only the creator of task '{task}'" in html.unescape(refused.text)
    assert alice.client.get_task(task).status == "CREATED"


@pytest.mark.integration
def test_logging_out_revokes_the_session(api: ApiProcess) -> None:
    """After Log out the old cookie no longer opens any page."""
    web, _ = sign_up(api, "bye")
    cookie = web.cookies.get("musketeer_session")
    assert cookie and len(csrf_for_session(cookie)) == 40
    out = web.post("/logout", data={"csrf_token": csrf_of(web.get("/tasks").text)})
    assert out.status_code == 303
    replay = browser(api)
    replay.cookies.set("musketeer_session", cookie)
    assert replay.get("/tasks").headers["location"].startswith("/login")


@pytest.mark.integration
def test_the_task_list_filters_and_pages(api: ApiProcess) -> None:
    """Search narrows the list; 25 matching tasks make a second page."""
    alice = member(api, "pager")
    stem = unique("page")
    for index in range(pages.PAGE_SIZE + 5):
        definition = {"quorum": 2, "rounds": 1, "model": "digits-mlp", "training_size": 10}
        alice.client.create_task(f"{stem}-{index:02d}", definition, pom=2)
    web = browser(api)
    token = csrf_of(web.get("/login").text)
    web.post("/login", data={"username": alice.name, "password": PASSWORD, "csrf_token": token})
    first = web.get("/tasks", params={"search": stem, "pom": "2", "creator": alice.name}).text
    assert first.count(f'href="/tasks/{stem}-') == pages.PAGE_SIZE
    next_link = re.search(r'href="(/tasks\?[^"]+)" rel="next"', first)
    assert next_link
    second = web.get(next_link.group(1).replace("&amp;", "&")).text
    assert second.count(f'href="/tasks/{stem}-') == 5 and f"{stem}-00" in second
    assert "No task matches" in web.get("/tasks", params={"search": stem, "pom": "3"}).text




@pytest.mark.integration
def test_a_signed_in_user_can_sign_in_as_someone_else(api: ApiProcess) -> None:
    """The login form of a signed-in browser carries its session's CSRF token and is accepted."""
    web, _ = sign_up(api, "first")
    other = member(api, "second")
    token = csrf_of(web.get("/login").text)
    response = web.post("/login", data={"username": other.name, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 303
    assert f'data-testid="signed-in-as">{other.name}<' in web.get("/tasks").text
