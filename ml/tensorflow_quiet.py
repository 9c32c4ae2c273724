"""Load TensorFlow with its start-up chatter silenced; import this module before Keras.

TensorFlow's C++ side writes start-up lines (the absl "All log messages before
absl::InitializeLog()" notice, the oneDNN note) straight to file descriptor 2, and
`TF_CPP_MIN_LOG_LEVEL` no longer stops them. They landed in daemon logs and in the middle of
the demo's results, so the import runs with descriptor 2 pointed at /dev/null; an import
error still surfaces, as a Python exception, once stderr is back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's Python-side logs too


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _stderr_silenced():
    import tensorflow  # noqa: F401  (loaded here, quietly; Keras finds it loaded)
