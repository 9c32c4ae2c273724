"""Saved logins: for each user, which API, the bearer token and when it expires.

`musketeer login` writes them beside the profile (see `Profile.credentials_path()`), one per
user, and the last one logged in is the current one (`musketeer use USER` switches, `--as USER`
picks one for a command). The client reads them. The file holds secrets, so it is only ever
readable by its owner.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from client.profile import chosen_user, environment_token

ENV_TOKEN = "MUSKETEER_TOKEN"


@dataclass(frozen=True)
class Credentials:
    """A bearer token for one user of one API."""

    api_url: str
    username: str
    access_token: str
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        # Keep the token out of logs, tracebacks and notebook output.
        return (
            f"Credentials(api_url={self.api_url!r}, username={self.username!r}, "
            f"expires_at={self.expires_at!r})"
        )

    @classmethod
    def issued(
        cls, api_url: str, username: str, token: str, expires_in: float | None
    ) -> Credentials:
        """Credentials for a token just issued, valid `expires_in` seconds from now."""
        expires_at = (
            None if expires_in is None else datetime.now(UTC) + timedelta(seconds=expires_in)
        )
        return cls(same_url(api_url), username, token, expires_at)

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the token's lifetime, as the server announced it, is over."""
        if self.expires_at is None:
            return False
        return (now or datetime.now(UTC)) >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        """The file's content."""
        expires = self.expires_at.isoformat() if self.expires_at else None
        return {
            "api_url": self.api_url,
            "username": self.username,
            "access_token": self.access_token,
            "expires_at": expires,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Credentials:
        """Credentials read back from `to_json` output."""
        expires = raw.get("expires_at")
        return cls(
            api_url=same_url(str(raw["api_url"])),
            username=str(raw["username"]),
            access_token=str(raw["access_token"]),
            expires_at=datetime.fromisoformat(expires) if expires else None,
        )


def same_url(api_url: str) -> str:
    """The API URL in the one spelling used to compare them (no trailing slash)."""
    return api_url.rstrip("/")


@dataclass(frozen=True)
class SavedLogins:
    """Every login saved on this machine for a profile, and which one commands use."""

    logins: dict[str, Credentials]
    current: str | None

    def pick(self, username: str | None = None) -> Credentials | None:
        """The login of `username`, else the current one (None when there is none)."""
        return self.logins.get(username or self.current or "")


def read_logins(path: Path) -> SavedLogins:
    """The saved logins (none when the file is missing or unreadable)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return SavedLogins({}, None)
    except (OSError, ValueError):
        # A damaged file means "not logged in": `musketeer login` overwrites it.
        return SavedLogins({}, None)
    try:
        if isinstance(raw, dict) and "logins" in raw:
            logins = {name: Credentials.from_json(item) for name, item in raw["logins"].items()}
            current = raw.get("current")
            return SavedLogins(logins, current if current in logins else None)
        # The first format held one login; it reads as that user, current.
        single = Credentials.from_json(raw)
        return SavedLogins({single.username: single}, single.username)
    except (ValueError, KeyError, TypeError, AttributeError):
        return SavedLogins({}, None)


def write_logins(saved: SavedLogins, path: Path) -> None:
    """Write the logins with mode 0600, atomically."""
    content = {"current": saved.current,
               "logins": {name: item.to_json() for name, item in sorted(saved.logins.items())}}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Create the file 0600 from the start: writing first and chmod-ing after
    # would leave the tokens world-readable for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(content, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o600)  # in case the tmp file pre-existed with wider bits
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_credentials(credentials: Credentials, path: Path) -> SavedLogins:
    """Add (or renew) this user's login and make it the current one; the others are kept."""
    saved = read_logins(path)
    logins = {**saved.logins, credentials.username: credentials}
    updated = SavedLogins(logins, credentials.username)
    write_logins(updated, path)
    return updated


def load_credentials(path: Path, username: str | None = None) -> Credentials | None:
    """The saved login of `username` (default: the current one), or None."""
    return read_logins(path).pick(username)


def use_login(path: Path, username: str) -> Credentials | None:
    """Make `username`'s saved login the current one; None (nothing changed) if there is none."""
    saved = read_logins(path)
    chosen = saved.logins.get(username)
    if chosen is not None:
        write_logins(SavedLogins(saved.logins, username), path)
    return chosen


def delete_credentials(path: Path, username: str | None = None) -> str | None:
    """Forget `username`'s login (default: the current one); whose it was, or None."""
    saved = read_logins(path)
    name = username or saved.current
    if name is None or name not in saved.logins:
        return None
    rest = {key: value for key, value in saved.logins.items() if key != name}
    if rest:
        write_logins(SavedLogins(rest, saved.current if saved.current != name else None), path)
    else:
        path.unlink(missing_ok=True)
    return name


def pick_token(path: Path, api_url: str) -> tuple[str | None, str | None]:
    """The token to use for `api_url` and where it came from (`ENV_TOKEN`, a saved login, None).

    `MUSKETEER_TOKEN` wins; else the login of `--as USER` (or `MUSKETEER_USER`), else the
    current one. A saved login is used only for the API it was issued by, so a token never
    leaks to another server.
    """
    token = environment_token()
    if token is not None:
        return token, ENV_TOKEN
    user = chosen_user()
    saved = load_credentials(path, user)
    if saved is not None and saved.api_url == same_url(api_url):
        return saved.access_token, f"the saved login of {saved.username}"
    return None, None if user is None else f"no saved login of {user} for {api_url}"
