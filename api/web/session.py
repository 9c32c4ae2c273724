"""Cookie sessions and CSRF tokens for the dashboard (the bearer-token API is untouched).

A session cookie holds an ordinary access token (issued, stored as a digest, expiring and
revoked exactly like the API's), marked HttpOnly so no script can read it, and SameSite=Lax so
other sites' forms do not carry it. Every form also carries a CSRF token: for a signed-in user
it is derived from the session token (sha256 of a label and the token), which another origin
can neither read nor compute; before sign-in (the login and register forms) it is a random
value also kept in a cookie of its own (double submit).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request, Response

from api.errors import Forbidden

SESSION_COOKIE = "musketeer_session"
ANONYMOUS_CSRF_COOKIE = "musketeer_csrf"
CSRF_FIELD = "csrf_token"


def session_token(request: Request) -> str | None:
    """The access token the session cookie holds, if any."""
    token = request.cookies.get(SESSION_COOKIE)
    return token if token and len(token) <= 200 else None


def csrf_for_session(token: str) -> str:
    """The CSRF token bound to a session token."""
    return hashlib.sha256(b"musketeer-csrf\x00" + token.encode()).hexdigest()[:40]


def csrf_token(request: Request) -> str:
    """The CSRF token forms on this page must carry (see `ensure_anonymous_csrf`)."""
    token = session_token(request)
    if token:
        return csrf_for_session(token)
    existing = request.cookies.get(ANONYMOUS_CSRF_COOKIE, "")
    if len(existing) == 40:
        return existing
    fresh: str = getattr(request.state, "fresh_csrf", "") or secrets.token_hex(20)
    request.state.fresh_csrf = fresh
    return fresh


def ensure_anonymous_csrf(request: Request, response: Response) -> None:
    """Set the double-submit cookie when `csrf_token` had to make a new one."""
    fresh = getattr(request.state, "fresh_csrf", "")
    if fresh:
        response.set_cookie(ANONYMOUS_CSRF_COOKIE, fresh, httponly=True, samesite="strict",
                            secure=_secure(request), path="/")


def check_csrf(request: Request, submitted: str | None) -> None:
    """Refuse a form whose CSRF token is missing or not this browser's (the one its pages carry)."""
    token = session_token(request)
    expected = csrf_for_session(token) if token else request.cookies.get(ANONYMOUS_CSRF_COOKIE, "")
    if not expected or not submitted or not hmac.compare_digest(expected, submitted):
        raise Forbidden("the form's security token is missing or stale; reload the page and try again")


def start_session(request: Request, response: Response, token: str, ttl_s: int) -> None:
    """Put a freshly issued access token in the session cookie."""
    response.set_cookie(SESSION_COOKIE, token, max_age=ttl_s, httponly=True, samesite="lax",
                        secure=_secure(request), path="/")
    response.delete_cookie(ANONYMOUS_CSRF_COOKIE, path="/")


def end_session(response: Response) -> None:
    """Forget the session cookie."""
    response.delete_cookie(SESSION_COOKIE, path="/")


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never another origin)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/tasks"


def _secure(request: Request) -> bool:
    # Behind TLS the cookies are sent over HTTPS only; plain http on localhost still works.
    return request.url.scheme == "https"
