"""An uploaded model's arrays are freed as soon as the caller drops them: the HTTP client keeps
nothing of the body it sent (its request lingers in a reference cycle until a full collection)."""

from __future__ import annotations

import gc
import hashlib
import json
import threading
import weakref
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from client import MusketeerClient
from streams.codec import encode_pieces, keras_weights_to_bundle


class _Store(BaseHTTPRequestHandler):
    """PUT /v1/tasks/t/model: read the body, answer its digest as the API does."""

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps({"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def api_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Store)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_weights_of_an_uploaded_model_are_freed_when_the_caller_drops_them(api_url: str) -> None:
    weights = [np.arange(3_000_000, dtype=np.float32), np.ones((7, 3), dtype=np.float32)]
    pieces = encode_pieces(keras_weights_to_bundle(weights))
    expected = hashlib.sha256(pieces.join()).hexdigest()
    alive = weakref.ref(weights[0])
    client = MusketeerClient(api_url, token="t")
    gc.disable()  # what the cycle would hold is freed only by a collection
    try:
        stored = client.upload_model("t", pieces, round=1)
        del pieces, weights

        assert stored.sha256 == expected and stored.size > 12_000_000
        assert alive() is None, "the uploaded model's arrays are still referenced"
    finally:
        gc.enable()
        client.close()
