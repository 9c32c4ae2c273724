"""Linear and logistic regression as federated models: one Dense layer, optionally L2-regularised.

Both are ordinary Keras models, so they travel, are evaluated and saved like any registry
model; they are trained by federated Newton steps (ml/strategies/newton.py), not local
epochs, so they reach the centralised optimum. The objective is the mean loss plus
`regularisation`·‖W‖² (the kernel only, not the bias, as in scikit-learn), which the layer's
L2 regulariser states: scikit-learn's `LogisticRegression(C=c)` on n samples minimises the
same with regularisation = 1 / (2·c·n), `Ridge(alpha=a)` with a / n.
"""

from __future__ import annotations

from ml.keras_model import ModelError, compile_model, keras
from schema.algorithms import Parameters


def build_linear(parameters: Parameters, learning_rate: float) -> keras.Model:
    """A fresh, compiled logistic (softmax over `classes`) or linear (one output) regression."""
    features = parameters.features
    if features is None:
        raise ModelError(f"{parameters.algorithm} needs 'features' (inputs per sample)")
    penalty = float(parameters.regularisation or 0.0)
    regulariser = keras.regularizers.L2(penalty) if penalty > 0 else None
    if parameters.algorithm == "logistic_regression":
        output = keras.layers.Dense(int(parameters.classes or 2), activation="softmax",
                                    kernel_regularizer=regulariser, name="logits")
    elif parameters.algorithm == "linear_regression":
        output = keras.layers.Dense(1, kernel_regularizer=regulariser, name="linear")
    else:
        raise ModelError(f"{parameters.algorithm} is not a linear model")
    model = keras.Sequential([keras.Input(shape=(features,)), output], name=parameters.algorithm)
    return compile_model(model, learning_rate, regression=parameters.algorithm == "linear_regression")
