"""The seed's story in a real Chromium (Debian's package, driven by Playwright), shared by the
browser test and `docs/screenshots.py`.

Playwright never downloads a browser here: it launches /usr/bin/chromium, which the set-up
installs with apt-get when it is missing. If that fails the caller fails; nothing is skipped.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Error as PlaywrightError

from client import MusketeerClient
from infra.daemons import daemon_environment, spawn_musketeer
from tests.conftest import ApiProcess, unique
from tests.training_support import PASSWORD

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
ROUNDS = 5


class BrowserUnavailable(RuntimeError):
    """Chromium is not installed and could not be installed."""


def ensure_chromium() -> Path:
    """Debian's chromium, installed with apt-get (as root) when missing; raises if impossible."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None:
        raise BrowserUnavailable("no /usr/bin/chromium and no apt-get to install it")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise BrowserUnavailable(f"{' '.join(command)} failed ({done.returncode}):\n"
                                     f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    if not CHROMIUM.exists():
        raise BrowserUnavailable("apt-get installed chromium but /usr/bin/chromium is missing")
    return CHROMIUM


def launch(playwright: Any) -> Any:
    """Headless Debian Chromium under Playwright."""
    return playwright.chromium.launch(executable_path=str(ensure_chromium()), args=CHROMIUM_ARGS)


@dataclass
class Story:
    """Alice creates a task in the browser, John and Jack join through the API, daemons train."""

    api: ApiProcess
    bootstrap: str
    topic_prefix: str
    work: Path
    shots: Path | None = None
    task: str = field(default_factory=lambda: unique("digits"))
    alice: str = field(default_factory=lambda: unique("alice"))
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def shoot(self, page: Any, name: str) -> None:
        """A full-page screenshot into `shots` (when the story is the screenshot script)."""
        if self.shots is not None:
            self.shots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def register_alice(self, page: Any) -> None:
        """Register through the form: the browser ends up signed in, on the task list."""
        page.goto(f"{self.api.url}/register")
        page.fill("#username", self.alice)
        page.fill("#organization", "IBM")
        page.fill("#password", PASSWORD)
        self.shoot(page, "register")
        page.click("button:has-text('Register')")
        page.wait_for_url("**/tasks")

    def create_task(self, page: Any) -> None:
        """Fill the create-task form (a registry model, standardisation on) and submit."""
        page.goto(f"{self.api.url}/new-task")
        page.fill("#name", self.task)
        page.fill("#description", "Seed walk-through: handwritten digits, two hospitals")
        page.fill("#model", "digits-mlp")
        page.fill("#quorum", "2")
        page.fill("#rounds", str(ROUNDS))
        # Enough local work that a round takes about a second: the page refreshes every 2 s, and
        # with 2 epochs all five rounds could end between two refreshes (seen in CI).
        page.fill("#epochs", "25")
        page.fill("#learning_rate", "0.01")
        page.fill("#training_size", "500")
        page.fill("#test_size", "80")
        page.check("#standardise")
        self.shoot(page, "new-task")
        page.click("button:has-text('Create task')")
        page.wait_for_url(f"**/tasks/{self.task}?notice=created")

    def participants_join(self) -> dict[str, MusketeerClient]:
        """John and Jack register and join through the API, as their own tools would."""
        clients = {}
        for who, organization in (("john", "TREE"), ("jack", "UCLM")):
            client = MusketeerClient(self.api.url)
            name = unique(who)
            client.register(name, PASSWORD, organization)
            client.login(name, PASSWORD)
            client.join(self.task)
            clients[who] = client
        return clients

    def start_daemons(self, alice_token: str, clients: dict[str, MusketeerClient]) -> None:
        """The aggregator and both participants, as processes of their own (digits in thirds)."""
        def env(token: str, who: str) -> dict[str, str]:
            return daemon_environment(self.api.url, token, self.bootstrap, self.topic_prefix,
                                      self.work / "keys" / who)

        self.logs = {who: self.work / f"{who}.log" for who in ("aggregator", "john", "jack")}
        self.processes["aggregator"] = spawn_musketeer(
            ["aggregate", self.task, "--eval-data", "digits", "--eval-shard", "3/3",
             "--round-timeout", "300"], env(alice_token, "alice"), self.logs["aggregator"])
        for shard, who in (("1/3", "john"), ("2/3", "jack")):
            self.processes[who] = spawn_musketeer(
                ["participate", self.task, "--dataset", "digits", "--shard", shard,
                 "--output", str(self.work / who)], env(clients[who].token or "", who), self.logs[who])

    def watch_rounds(self, page: Any, timeout_s: float = 300) -> list[tuple[str, int]]:
        """Poll the (never reloaded) task page until it says COMPLETED; what it showed, in order."""
        seen: list[tuple[str, int]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                status = page.get_attribute("[data-testid=live]", "data-status", timeout=10_000)
                now = (str(status), page.locator("[data-testid=round-row]").count())
            except PlaywrightError:  # the page reloads itself when the task's status changes
                continue
            if not seen or seen[-1] != now:
                seen.append(now)
                if now[0] == "STARTED" and 2 <= now[1] < ROUNDS:
                    self.shoot(page, "task-running")
            if now[0] in ("COMPLETED", "FAILED"):
                return seen
            failed = [who for who, p in self.processes.items() if p.poll() not in (None, 0)]
            if failed:
                raise AssertionError(f"{failed} exited early; logs in {self.work}")
            time.sleep(0.5)
        raise AssertionError(f"the task page never showed COMPLETED; it showed {seen}")

    def stop_daemons(self, timeout_s: float = 120) -> None:
        """Wait for the daemons to finish (they end with the task); kill any straggler."""
        for process in self.processes.values():
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()

    def download(self, page: Any, folder: Path) -> tuple[Path, str]:
        """Click the download link; return the saved file and the sha256 the page shows."""
        shown = page.text_content("[data-testid=model-sha256]") or ""
        with page.expect_download() as info:
            page.click("text=Download the model (.keras)")
        target = folder / info.value.suggested_filename
        info.value.save_as(str(target))
        return target, shown.strip()


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def log_in(page: Any, base_url: str, username: str, password: str, by_keyboard: bool = False) -> None:
    """Fill the login form (typing and tabbing like a keyboard user, if asked) and submit."""
    page.goto(f"{base_url}/login")
    if by_keyboard:
        # The username field takes the focus on arrival (autofocus); under load that can land
        # a moment after the load event, so wait for it rather than type into nothing.
        page.wait_for_function("document.activeElement && document.activeElement.id === 'username'")
        page.keyboard.type(username)
        page.keyboard.press("Tab")
        page.keyboard.type(password)
        with page.expect_navigation():
            page.keyboard.press("Enter")
    else:
        page.fill("#username", username)
        page.fill("#password", password)
        with page.expect_navigation():
            page.click("button:has-text('Log in')")


def no_horizontal_scroll(page: Any) -> bool:
    """Whether the page fits its viewport's width (wide tables scroll inside their own box)."""
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))

