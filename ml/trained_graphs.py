"""Let go of what TensorFlow's gradient registry keeps of a finished model's training graphs.

Every trace of a Keras training step (and of FedProx's step) goes through the optimizer's
all-reduce of the gradients, which TensorFlow wraps in a `tf.custom_gradient` even with one
replica. In a traced function that registers a gradient under a fresh "CustomGradient-N" name
in TensorFlow's process-wide gradient registry, and nothing ever removes it; the entry's closure
holds the traced step's tensors, hence its whole FuncGraph (ops, shapes, nested cond functions).
`keras.backend.clear_session()` does not touch that registry (TensorFlow issue #97697).

A participant daemon builds one model per task, so each finished task left about 4 MiB behind.
`forget_training_graphs(model)` removes the entries whose graph reads `model`'s weights: once
that model trains no more, nothing uses them. Another task's model has its own weights, so its
entries are left alone even while it trains in another thread.
"""

from __future__ import annotations

from typing import Any

from ml.keras_model import keras

_PREFIX = "CustomGradient-"


def forget_training_graphs(model: keras.Model) -> int:
    """Drop the gradient-registry entries of `model`'s traced training steps; how many."""
    registry = _registry()
    handles = {id(handle) for handle in map(_handle, model.variables) if handle is not None}
    if registry is None or not handles:
        return 0
    # list(): other threads may register entries meanwhile (copying a dict of str keys runs
    # no Python code, so the GIL makes it atomic); pop() on one key is atomic too.
    stale = [name for name, entry in list(registry.items())
             if name.startswith(_PREFIX) and _reads(_entry_graph(entry), handles)]
    for name in stale:
        registry.pop(name, None)
    return len(stale)


def _registry() -> dict[str, Any] | None:
    # Private to TensorFlow (there is no way to unregister a gradient): None if it moves.
    from tensorflow.python.framework import ops

    entries = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return entries if isinstance(entries, dict) else None


def _handle(variable: Any) -> Any:
    """The resource handle a traced graph captures to read this Keras variable."""
    return getattr(getattr(variable, "value", None), "handle", None)


def _entry_graph(entry: Any) -> Any:
    """The graph of a custom gradient's outputs, from its closures (None if they differ)."""
    grad_fn = _free_variable(entry.get("type") if isinstance(entry, dict) else None, "tape_grad_fn")
    outputs = _free_variable(grad_fn, "result")
    for tensor in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
        if hasattr(tensor, "graph"):
            return tensor.graph
    return None


def _free_variable(function: Any, name: str) -> Any:
    code, cells = getattr(function, "__code__", None), getattr(function, "__closure__", None)
    if code is None or not cells or name not in code.co_freevars:
        return None
    try:
        return cells[code.co_freevars.index(name)].cell_contents
    except ValueError:  # an empty cell
        return None


def _reads(graph: Any, handles: set[int]) -> bool:
    """Whether the graph, or a function graph it is nested in, captures one of these handles."""
    while graph is not None:
        if any(id(capture) in handles for capture in getattr(graph, "external_captures", ())):
            return True
        graph = getattr(graph, "outer_graph", None)
    return False
