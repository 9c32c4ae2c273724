"""Rendering dashboard pages: the Jinja2 environment, the signed-in user, error pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from api.errors import MusketeerError, http_status
from api.web import session

PACKAGE = Path(__file__).resolve().parent.parent
TEMPLATES = Jinja2Templates(directory=str(PACKAGE / "templates"))
STATIC_DIR = PACKAGE / "static"
# Pages load only their own scripts and styles; nothing inline, nothing from elsewhere.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "—"


TEMPLATES.env.filters["when"] = _when


def viewer(request: Request) -> str | None:
    """The user the session cookie belongs to, or None (no cookie, expired or revoked token)."""
    token = session.session_token(request)
    if not token:
        return None
    owner: str | None = request.app.state.services.accounts.owner(token)
    return owner


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A rendered page with the CSRF token its forms need and the security headers."""
    context.setdefault("user", None)
    context["csrf_token"] = session.csrf_token(request)
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status,
                                          headers=SECURITY_HEADERS)
    session.ensure_anonymous_csrf(request, response)
    return response


def error_page(request: Request, error: MusketeerError, user: str | None) -> HTMLResponse:
    """The platform's refusal, as a page with the same status the API would give."""
    return page(request, "error.html", status=http_status(error), user=user, error=error)


def to_login(request: Request) -> RedirectResponse:
    """Send an anonymous visitor to the login page, coming back here afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)


def see_other(path: str) -> Response:
    """Redirect after a successful form (POST → GET)."""
    return RedirectResponse(path, status_code=303)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="/")
