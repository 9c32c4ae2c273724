"""The dashboard in a real Chromium: the seed's story end to end, a failed login, a form error,
a user who may not delete, and the task page on a phone-sized screen.

Chromium is Debian's package (installed by the set-up when missing); if it cannot be had the
tests fail, they are never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.browser_support import DESKTOP, PHONE, ROUNDS, Story, launch, log_in, no_horizontal_scroll, sha256_of
from tests.conftest import ApiProcess, unique
from tests.training_support import PASSWORD, member

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Debian Chromium for the module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


@pytest.fixture()
def desktop(chromium: Any) -> Iterator[Any]:
    """A fresh browser profile (no cookies) at 1280 px."""
    context = chromium.new_context(viewport=DESKTOP, accept_downloads=True)
    yield context.new_page()
    context.close()


def test_the_seed_story_in_the_browser(desktop: Any, chromium: Any, api: ApiProcess, broker: Any,
                                       topic_prefix: str, tmp_path: Path) -> None:
    """Alice registers and creates a task in the browser; John and Jack join through the API; the
    daemons train; the open task page shows the rounds arriving and the charts without a reload;
    the .keras file downloaded from it has the sha256 the page shows and classifies digits."""
    from ml.data import load_dataset
    from ml.keras_model import keras

    story = Story(api, broker.bootstrap, topic_prefix, tmp_path)
    story.register_alice(desktop)
    story.create_task(desktop)
    assert "Task created" in desktop.text_content("[data-testid=notice]")
    clients = story.participants_join()
    desktop.reload()
    assert desktop.locator("[data-testid=participants] tbody tr").count() == 2
    assert f"musketeer aggregate {story.task}" in desktop.text_content("[data-testid=aggregate-command]")

    alice_token = next(c for c in desktop.context.cookies() if c["name"] == "musketeer_session")["value"]
    story.start_daemons(alice_token, clients)
    try:
        seen = story.watch_rounds(desktop)
    finally:
        story.stop_daemons()
    print(f"\nwhat the open page showed (status, rounds): {seen}")
    assert seen[-1] == ("COMPLETED", ROUNDS)
    # The status change reloaded the whole page: header, buttons and history agree with it.
    desktop.wait_for_selector("[data-testid=task-status]:has-text('COMPLETED')")
    assert desktop.locator("[data-testid=action-delete]").count() == 0
    assert any(status == "STARTED" and 0 < rows < ROUNDS for status, rows in seen), \
        "the page should have shown rounds arriving while the task ran"
    assert desktop.locator("[data-testid=chart] polyline").count() >= 3
    assert "chain intact" in desktop.text_content("[data-testid=audit-badge]")

    saved, shown = story.download(desktop, tmp_path)
    assert saved.suffix == ".keras" and sha256_of(saved) == shown
    digits = load_dataset("digits", shard="3/3")
    predicted = keras.models.load_model(saved).predict(digits.x, verbose=0).argmax(axis=1)
    assert float(np.mean(predicted == digits.y)) > 0.8


def test_a_wrong_password_is_refused_by_keyboard(desktop: Any, api: ApiProcess) -> None:
    """Typed and submitted with the keyboard alone: the page says why and stays signed out."""
    john = member(api, "john")
    log_in(desktop, api.url, john.name, "not-the-password", by_keyboard=True)
    assert desktop.text_content("[data-testid=form-error]") == "wrong username or password"
    assert desktop.locator("[data-testid=signed-in-as]").count() == 0
    log_in(desktop, api.url, john.name, PASSWORD, by_keyboard=True)
    assert desktop.text_content("[data-testid=signed-in-as]") == john.name


def test_a_form_error_is_shown_beside_its_field(desktop: Any, api: ApiProcess) -> None:
    """Quorum 0: the message sits under the quorum field, which is marked invalid."""
    alice = member(api, "alice")
    log_in(desktop, api.url, alice.name, PASSWORD)
    desktop.goto(f"{api.url}/new-task")
    desktop.fill("#name", unique("t"))
    desktop.fill("#quorum", "0")
    desktop.click("button:has-text('Create task')")
    error = desktop.locator("[data-testid=error-quorum]")
    assert "greater than or equal to 1" in error.text_content()
    assert desktop.get_attribute("#quorum", "aria-invalid") == "true"
    # The message is the field's own: right below it on the page.
    field, message = desktop.locator("#quorum").bounding_box(), error.bounding_box()
    assert 0 <= message["y"] - (field["y"] + field["height"]) < 60


def test_a_participant_may_not_delete(desktop: Any, api: ApiProcess) -> None:
    """John joined Alice's task: he can leave it, but there is no Delete for him, and a delete
    he forges with his own session and CSRF token is refused (403) and changes nothing."""
    alice, john = member(api, "alice"), member(api, "john")
    task = unique("t")
    alice.client.create_task(task, {"quorum": 2, "rounds": 1, "model": "digits-mlp"})
    john.client.join(task)
    log_in(desktop, api.url, john.name, PASSWORD)
    desktop.goto(f"{api.url}/tasks/{task}")
    assert desktop.locator("[data-testid=action-leave]").count() == 1
    assert desktop.locator("[data-testid=action-delete]").count() == 0
    token = desktop.get_attribute("input[name=csrf_token] >> nth=0", "value")
    forged = desktop.request.post(f"{api.url}/tasks/{task}/delete", form={"csrf_token": token},
                                  max_redirects=0)
    assert forged.status == 403 and "only the creator" in forged.text()
    assert alice.client.get_task(task).status == "CREATED"


def test_the_task_page_fits_a_phone(chromium: Any, api: ApiProcess) -> None:
    """At 390 px nothing overflows sideways; the actions stay on screen."""
    alice = member(api, "alice")
    task = unique("t")
    alice.client.create_task(task, {"quorum": 2, "rounds": 3, "model": "digits-mlp"})
    context = chromium.new_context(viewport=PHONE)
    page = context.new_page()
    log_in(page, api.url, alice.name, PASSWORD)
    for path in (f"/tasks/{task}", "/tasks", "/new-task", "/models"):
        page.goto(api.url + path)
        assert no_horizontal_scroll(page), path
    context.close()
