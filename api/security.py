"""Passwords (argon2) and bearer tokens (random, stored only as sha256, expiring)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from api.errors import NotAuthenticated

_HASHER = PasswordHasher()
# Verifying against this when the user does not exist keeps the time of a
# failed login the same whether or not the name is known.
_DUMMY_HASH = _HASHER.hash("not-a-real-password")


def hash_password(password: str) -> str:
    """An argon2id hash of the password."""
    return _HASHER.hash(password)


def check_password(password_hash: str | None, password: str) -> bool:
    """Whether the password matches the stored hash (False when there is none)."""
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def issue_token(conn: psycopg.Connection[Any], username: str, ttl_s: int) -> tuple[str, int]:
    """A new bearer token for the user, stored as its digest; returns (token, ttl)."""
    token = secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl_s)
    conn.execute(
        "INSERT INTO access_tokens (token_sha256, username, expires_at) VALUES (%s, %s, %s)",
        (_token_digest(token), username, expires_at),
    )
    conn.execute("DELETE FROM access_tokens WHERE expires_at < now() - interval '1 day'")
    return token, ttl_s


def token_owner(conn: psycopg.Connection[Any], token: str) -> str | None:
    """The user a live token belongs to, or None if unknown or expired."""
    row = conn.execute(
        "SELECT username FROM access_tokens WHERE token_sha256 = %s AND expires_at > now()",
        (_token_digest(token),),
    ).fetchone()
    if row is None:
        return None
    return str(row["username"] if isinstance(row, dict) else row[0])


class Accounts:
    """Logins and tokens: secrets kept beside the log, in tables of their own."""

    def __init__(self, connection: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
                 token_ttl_s: int) -> None:
        self._connection = connection
        self.token_ttl_s = token_ttl_s

    def login(self, username: str, password: str) -> dict[str, Any]:
        """A bearer token for a correct username and password; NotAuthenticated otherwise."""
        with self._connection() as conn, conn.transaction():
            row = conn.execute(
                "SELECT password_hash FROM credentials WHERE username = %s", (username,)
            ).fetchone()
            stored = (row["password_hash"] if isinstance(row, dict) else row[0]) if row else None
            if not check_password(stored, password):
                raise NotAuthenticated("wrong username or password")
            token, ttl = issue_token(conn, username, self.token_ttl_s)
        return {"access_token": token, "token_type": "bearer", "expires_in": ttl}

    def revoke(self, token: str) -> None:
        """Forget a token at once (the dashboard's sign-out)."""
        with self._connection() as conn:
            conn.execute("DELETE FROM access_tokens WHERE token_sha256 = %s", (_token_digest(token),))

    def owner(self, token: str) -> str | None:
        """The user a live token belongs to, or None."""
        with self._connection() as conn:
            return token_owner(conn, token)
