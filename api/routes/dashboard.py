"""The web dashboard: server-rendered pages under `/`, same origin as `/v1`, cookie sessions.

Each route reads its form or query, calls the same command handlers and queries the JSON API
uses, and renders a template; refusals become pages carrying the API's status and message.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from api import queries
from api.deps import ServicesDep
from api.errors import Forbidden, MusketeerError, NotAuthenticated, NotFound
from api.handlers import Context
from api.routes.training import model_response
from api.web import forms, pages, session
from api.web.render import STATIC_DIR, error_page, page, see_other, to_login, viewer
from schema.lifecycle import TaskStatus

router = APIRouter(include_in_schema=False)
CsrfField = Annotated[str, Form(alias=session.CSRF_FIELD)]
_STATIC_FILES = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
_NOTICES = {"joined": "You joined the task.", "left": "You left the task.",
            "started": "Training started.", "deleted": "The task was deleted.",
            "created": "Task created. Share its name with the participants."}


def _context(request: Request, user: str) -> Context:
    return Context(actor=user, request_id=request.state.request_id)


@router.get("/")
def home() -> Response:
    """The dashboard's front page is the task list."""
    return see_other("/tasks")


@router.get("/static/{filename}")
def static(filename: str) -> Response:
    """The dashboard's own stylesheet and script (vendored, nothing fetched from elsewhere)."""
    if filename not in _STATIC_FILES:
        raise NotFound(f"no static file {filename!r}")
    return FileResponse(STATIC_DIR / filename, media_type=_STATIC_FILES[filename],
                        headers={"Cache-Control": "no-cache"})


# -- signing in and out


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    """The login form."""
    return page(request, "login.html", next=session.safe_next(next), values={}, error=None)


@router.post("/login")
def login(request: Request, services: ServicesDep, csrf: CsrfField, username: Annotated[str, Form()] = "",
          password: Annotated[str, Form()] = "", next: Annotated[str, Form()] = "/tasks") -> Response:
    """Check the password, start a cookie session, go where the user was heading."""
    target = session.safe_next(next)
    try:
        session.check_csrf(request, csrf)
        token = services.accounts.login(username[:64], password[:1024])
    except MusketeerError as error:
        status = 401 if isinstance(error, NotAuthenticated) else 403
        return page(request, "login.html", status=status, next=target,
                    values={"username": username[:64]}, error=error.message)
    response = see_other(target)
    session.start_session(request, response, token["access_token"], int(token["expires_in"]))
    return response


@router.get("/register")
def register_page(request: Request) -> Response:
    """The registration form."""
    return page(request, "register.html", values={}, errors={})


@router.post("/register")
def register(request: Request, services: ServicesDep, csrf: CsrfField,
             username: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
             organization: Annotated[str, Form()] = "") -> Response:
    """Create an account and sign in; errors are shown beside their fields."""
    form = forms.registration_form({"username": username, "password": password,
                                    "organization": organization})
    try:
        session.check_csrf(request, csrf)
        if form.command is not None:
            services.commands.register_user(form.command, Context("anonymous", request.state.request_id))
    except MusketeerError as error:
        form.errors["username" if "exists" in error.message else "_form"] = error.message
    if form.errors:
        values = {k: v for k, v in form.values.items() if k != "password"}
        return page(request, "register.html", status=422, values=values, errors=form.errors)
    token = services.accounts.login(form.command.username, form.command.password)
    response = see_other("/tasks")
    session.start_session(request, response, token["access_token"], int(token["expires_in"]))
    return response


@router.post("/logout")
def logout(request: Request, services: ServicesDep, csrf: CsrfField) -> Response:
    """End the session: the token is revoked, not just forgotten by the browser."""
    token = session.session_token(request)
    if token:
        try:
            session.check_csrf(request, csrf)
        except Forbidden as error:
            return error_page(request, error, viewer(request))
        services.accounts.revoke(token)
    response = see_other("/login")
    session.end_session(response)
    return response


# -- tasks


@router.get("/tasks")
def task_list(request: Request, services: ServicesDep) -> Response:
    """Tasks newest first, with search, filters and paging."""
    user = viewer(request)
    if user is None:
        return to_login(request)
    filters, shown = pages.list_filters(dict(request.query_params), user)
    try:
        with services.store.connection() as conn:
            found = queries.list_tasks(conn, filters, user)
    except MusketeerError as error:
        return error_page(request, error, user)
    return page(request, "tasks.html", user=user, tasks=found.items, next_cursor=found.next_cursor,
                filters=shown, statuses=[s.value for s in TaskStatus], poms=forms.POMS)


@router.get("/new-task")
def new_task_page(request: Request) -> Response:
    """The create-task form."""
    user = viewer(request)
    if user is None:
        return to_login(request)
    defaults = {"quorum": "2", "rounds": "5", "epochs": "1", "batch_size": "32",
                "learning_rate": "0.001", "pom": "1", "algorithm": "fedavg"}
    return _task_form(request, user, defaults, {})


def _task_form(request: Request, user: str, values: dict[str, str], errors: dict[str, str],
               status: int = 200) -> HTMLResponse:
    return page(request, "task_new.html", status=status, user=user, values=values, errors=errors,
                algorithms=forms.algorithms(), models=forms.MODEL_SUGGESTIONS, poms=forms.POMS)


@router.post("/new-task")
async def create_task(request: Request, services: ServicesDep) -> Response:
    """Create the task; each field's error is shown beside it."""
    user = viewer(request)
    if user is None:
        return to_login(request)
    raw = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    try:
        session.check_csrf(request, raw.get(session.CSRF_FIELD))
    except Forbidden as error:
        return error_page(request, error, user)
    form = forms.task_form(raw)
    if form.command is not None:
        try:
            services.commands.create_task(form.command, _context(request, user))
        except MusketeerError as error:
            form.errors["name" if "already exists" in error.message else "_form"] = error.message
    if form.errors:
        return _task_form(request, user, form.values, form.errors, status=422)
    return see_other(f"/tasks/{form.command.name}?notice=created")


@router.get("/tasks/{name}")
def task_detail(request: Request, name: str, services: ServicesDep, notice: str | None = None) -> Response:
    """A task: definition, participants, actions, commands, progress, history, model."""
    user = viewer(request)
    if user is None:
        return to_login(request)
    try:
        with services.store.connection() as conn:
            view = pages.task_page(conn, name, user)
        audit = services.store.verify() if view.insider else None
    except MusketeerError as error:
        return error_page(request, error, user)
    return page(request, "task.html", user=user, view=view, task=view.task, audit=audit,
                commands=pages.run_commands(view.task), notice=_NOTICES.get(notice or ""))


@router.get("/tasks/{name}/live")
def task_live(request: Request, name: str, services: ServicesDep) -> Response:
    """The task page's progress section alone, which the page fetches again every two seconds."""
    user = viewer(request)
    if user is None:
        return Response("signed out", status_code=401)
    try:
        with services.store.connection() as conn:
            view = pages.task_page(conn, name, user)
    except MusketeerError as error:
        return error_page(request, error, user)
    return page(request, "task_live.html", user=user, view=view, task=view.task)


@router.post("/tasks/{name}/{action}")
def task_action(request: Request, name: str, action: str, services: ServicesDep, csrf: CsrfField) -> Response:
    """Join, leave, start or delete; the platform's own checks decide who may."""
    user = viewer(request)
    if user is None:
        return to_login(request)
    commands = {"join": (services.commands.join, "joined"), "leave": (services.commands.leave, "left"),
                "start": (services.commands.start, "started"),
                "delete": (services.commands.delete, "deleted")}
    if action not in commands:
        return error_page(request, NotFound(f"no action {action!r} on a task"), user)
    command, notice = commands[action]
    try:
        session.check_csrf(request, csrf)
        command(name, _context(request, user))
    except MusketeerError as error:
        return error_page(request, error, user)
    return see_other(f"/tasks/{name}?notice={notice}")


@router.get("/tasks/{name}/model.keras")
def download_model(request: Request, name: str, services: ServicesDep) -> Response:
    """The final model as a .keras file (standardisation inside); sha256 in X-Model-SHA256."""
    user = viewer(request)
    if user is None:
        return to_login(request)
    try:
        with services.store.connection() as conn:
            digest, content = queries.model_bytes(conn, name, user, None, keras=True)
    except MusketeerError as error:
        return error_page(request, error, user)
    return model_response(name, digest, content, "keras")


@router.get("/models")
def models(request: Request, services: ServicesDep) -> Response:
    """The models the user's tasks produced, with their lineage."""
    user = viewer(request)
    if user is None:
        return to_login(request)
    with services.store.connection() as conn:
        found = queries.user_models(conn, user).items
    return page(request, "models.html", user=user, models=found)
