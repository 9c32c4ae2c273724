"""Edge cases of user input that had no test: CSV files (empty, NaN/inf cells, a label past
num_classes) and HTTP bodies (broken JSON, the wrong content type, an oversized upload)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from api.training import MAX_MODEL_BYTES
from ml.data import DataError, load_dataset
from tests.conftest import ApiProcess, unique

# --- CSV (unit) ------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    ("", r"empty file \(a header row is required\)"),
    ("a,y\nnan,0\n", r"row 2, column 'a' is 'nan', not a finite number"),
    ("a,y\n1,0\ninf,1\n", r"row 3, column 'a' is 'inf', not a finite number"),
    ("a,y\n1,0\n-Infinity,1\n", r"row 3, column 'a' is '-Infinity', not a finite number"),
    ("a,y\n1,nan\n", r"row 2, column 'y' is 'nan', not a finite number"),
])
def test_csv_edge_cases_are_refused_naming_the_place(tmp_path: Path, body: str, message: str) -> None:
    """An empty file and non-finite cells (in features or labels) are refused where they are."""
    path = tmp_path / "site.csv"
    path.write_text(body)

    with pytest.raises(DataError, match=message):
        load_dataset(f"csv:{path}", label_column="y")


def test_a_csv_label_past_num_classes_is_refused(tmp_path: Path) -> None:
    """Label 3 with num_classes=3 cannot be a class: refused naming both."""
    path = tmp_path / "site.csv"
    path.write_text("a,y\n1,0\n2,3\n")

    with pytest.raises(DataError, match="label 3 is not below num_classes=3"):
        load_dataset(f"csv:{path}", label_column="y", num_classes=3)
    assert load_dataset(f"csv:{path}", label_column="y", num_classes=4).num_classes == 4


# --- HTTP (against the real API) ---------------------------------------------------------


def _token(api: ApiProcess, name: str | None = None) -> dict[str, str]:
    name = name or unique("edge")
    httpx.post(f"{api.url}/v1/users", json={"username": name, "password": "edge-pass-1",
                                            "organization": "Org"}).raise_for_status()
    token = httpx.post(f"{api.url}/v1/auth/token", data={"username": name, "password": "edge-pass-1"})
    return {"Authorization": f"Bearer {token.json()['access_token']}"}


@pytest.mark.integration
@pytest.mark.parametrize(("content", "headers", "words"), [
    (b'{"name": "x", "definition": {"quorum": 1,', {"Content-Type": "application/json"}, "JSON"),
    (b"name=x&quorum=1", {"Content-Type": "application/x-www-form-urlencoded"}, "body"),
    (b"\xff\xfe not utf-8", {"Content-Type": "application/json"}, "JSON"),
])
def test_broken_or_mistyped_bodies_are_422_and_store_nothing(api: ApiProcess, content: bytes,
                                                              headers: dict[str, str], words: str) -> None:
    """Broken JSON or a form where JSON is expected: 422 in the API's error shape, no task."""
    user = unique("edge")
    auth = _token(api, user)

    response = httpx.post(f"{api.url}/v1/tasks", content=content, headers={**auth, **headers})

    assert response.status_code == 422, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == "invalid_input" and words in str(body), body
    mine = httpx.get(f"{api.url}/v1/tasks", headers=auth, params={"creator": user}).json()
    assert mine["items"] == []


@pytest.mark.integration
def test_an_oversized_model_upload_is_refused_before_it_is_read(api: ApiProcess) -> None:
    """A declared body over the limit gets its 422 at once: the API never reads (or holds) it."""
    auth = _token(api)
    address = urlparse(api.url)
    request = (f"PUT /v1/tasks/{unique('t')}/model HTTP/1.1\r\nHost: {address.netloc}\r\n"
               f"Authorization: {auth['Authorization']}\r\nContent-Type: application/octet-stream\r\n"
               f"Content-Length: {MAX_MODEL_BYTES + 1}\r\n\r\n").encode()

    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        conn.sendall(request + b"\x00" * 1024)  # a first KiB of the 1 GiB it announced
        answer = _read_response(conn)

    assert answer.startswith("HTTP/1.1 422"), answer
    assert f"the model is larger than {MAX_MODEL_BYTES} bytes" in answer


def _read_response(conn: socket.socket) -> str:
    """One whole HTTP response (headers, then as many body bytes as Content-Length says)."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def _content_length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0
