"""The saved login: which API, which user, the bearer token and when it expires.

`musketeer login` writes it beside the profile (see `Profile.credentials_path()`);
the client reads it. The file holds a secret, so it is only ever readable by its owner.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


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


def save_credentials(credentials: Credentials, path: Path) -> None:
    """Write the credentials with mode 0600, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Create the file 0600 from the start: writing first and chmod-ing after
    # would leave the token world-readable for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(credentials.to_json(), handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o600)  # in case the tmp file pre-existed with wider bits
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_credentials(path: Path) -> Credentials | None:
    """The saved credentials, or None when there are none or they are unreadable."""
    try:
        return Credentials.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # A damaged file means "not logged in": `musketeer login` overwrites it.
        return None


def delete_credentials(path: Path) -> bool:
    """Remove the saved credentials; whether there were any."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
