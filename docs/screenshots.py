"""Write a screenshot of every dashboard page to docs/screenshots/ (1280 px; the task page at 390 px too).

Runs the seed's story for real: a scratch database on the machine's PostgreSQL, an embedded
broker, an API process, Debian's Chromium, and the three daemons training a task.

    .venv/bin/python docs/screenshots.py            # from the repository's root
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infra.apiproc import start_api  # noqa: E402
from infra.tansu import start_broker  # noqa: E402
from tests.browser_support import DESKTOP, PHONE, Story, launch, log_in  # noqa: E402
from tests.conftest import drop_database, fresh_database  # noqa: E402
from tests.training_support import PASSWORD  # noqa: E402

SHOTS = ROOT / "docs" / "screenshots"


def main() -> None:
    """Bring up a scratch platform, play the story, shoot every page, tear it all down."""
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="musketeer-shots-"))
    database = fresh_database(prefix="musketeer_shots")
    broker = start_broker(log_path=work / "tansu.log")
    api = start_api(database, broker.bootstrap, work, MUSKETEER_TOPIC_PREFIX="shots")
    try:
        with sync_playwright() as playwright:
            browser = launch(playwright)
            story = Story(api, broker.bootstrap, "shots", work, shots=SHOTS)
            shoot_everything(browser, story)
            browser.close()
    finally:
        api.stop()
        broker.stop()
        drop_database(database)
    print(f"screenshots in {SHOTS}: {', '.join(sorted(p.name for p in SHOTS.glob('*.png')))}")


def shoot_everything(browser: object, story: Story) -> None:
    """The story at 1280 px, then the finished task page at 390 px."""
    page = browser.new_context(viewport=DESKTOP, accept_downloads=True).new_page()  # type: ignore[attr-defined]
    page.goto(f"{story.api.url}/login")
    log_in(page, story.api.url, "nobody-here", "wrong-password")
    story.shoot(page, "login-failed")
    story.register_alice(page)
    story.create_task(page)
    clients = story.participants_join()
    page.goto(f"{story.api.url}/tasks/{story.task}")
    story.shoot(page, "task-created")
    token = next(c for c in page.context.cookies() if c["name"] == "musketeer_session")["value"]
    story.start_daemons(token, clients)
    try:
        story.watch_rounds(page)
    finally:
        story.stop_daemons()
    page.goto(f"{story.api.url}/tasks/{story.task}")
    story.shoot(page, "task-completed")
    more_tasks(story)
    page.goto(f"{story.api.url}/tasks")
    story.shoot(page, "tasks")
    page.goto(f"{story.api.url}/models")
    page.click("summary")  # open the lineage
    story.shoot(page, "models")
    page.goto(f"{story.api.url}/new-task")
    page.fill("#name", "bad name")
    page.fill("#quorum", "0")
    page.click("button:has-text('Create task')")
    story.shoot(page, "new-task-errors")
    phone = browser.new_context(viewport=PHONE).new_page()  # type: ignore[attr-defined]
    log_in(phone, story.api.url, story.alice, PASSWORD)
    phone.goto(f"{story.api.url}/tasks/{story.task}")
    story.shoot(phone, "task-completed-390px")


def more_tasks(story: Story) -> None:
    """A few more tasks, so the list shows several states and privacy modes."""
    from client import MusketeerClient

    alice = MusketeerClient(story.api.url)
    alice.login(story.alice, PASSWORD)
    alice.create_task(f"welding-{story.task[-6:]}", {"quorum": 2, "rounds": 10, "model": "welding-mlp",
                      "standardise": True}, pom=1, description="Spot-weld quality, robots FPS2 and FPD2")
    alice.create_task(f"mnist-{story.task[-6:]}", {"quorum": 3, "rounds": 20, "model": "mnist-cnn"},
                      pom=2, description="The seed's CNN on MNIST")
    alice.delete_task(f"mnist-{story.task[-6:]}")


if __name__ == "__main__":
    main()
