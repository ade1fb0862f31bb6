"""Model loading for serving: a checked registry version with a fast single-row path.

The model format, the checks and the batch path live in :mod:`flows.artifacts`
(:func:`flows.artifacts.read_artifacts` refuses corrupt or mismatched versions with a
:class:`flows.registry.RegistryError`); this module adds what only serving needs.

The predictor is chosen by measurement (``skewless bench``, serve suite ``predictors``;
the table is in docs/perf-plan.md): the native tree predictor (:mod:`flows.trees`) for one
row *and* for a batch, since ``Score`` and ``ScoreBatch`` must give the same score to the
bit, and it gives XGBoost's own bits, i.e. what training evaluated. A model it cannot
evaluate (or whose load-time check fails) is scored by ONNX Runtime, one row through
bound buffers (a few microseconds rather than the ~200 µs of an XGBoost
``inplace_predict``); ``LoadedModel.predictor`` names which one runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from flows.artifacts import ONNX_OUTPUT, FloatArray, ModelArtifacts, read_artifacts
from flows.trees import native_probability

#: the predictor both serving paths run when the model allows it (the module docstring)
PREDICTOR = "native"


class _Bound:
    """One thread's preallocated single-row input and output, bound to the session."""

    def __init__(self, session: ort.InferenceSession, input_name: str, n_features: int) -> None:
        self.x = np.zeros((1, n_features), dtype=np.float32)
        self.proba = np.zeros((1, 2), dtype=np.float32)
        self.label = np.zeros((1,), dtype=np.int64)
        self.binding = session.io_binding()
        self.x_value = ort.OrtValue.ortvalue_from_numpy(self.x)  # shares self.x's memory
        self.binding.bind_ortvalue_input(input_name, self.x_value)
        self.binding.bind_output(ONNX_OUTPUT, "cpu", 0, np.float32, [1, 2], self.proba.ctypes.data)
        for out in session.get_outputs():
            if out.name != ONNX_OUTPUT:  # the converter's label output; computed, unused
                self.binding.bind_output(out.name, "cpu", 0, np.int64, [1], self.label.ctypes.data)


@dataclass
class LoadedModel(ModelArtifacts):
    """A checked registry version as serving runs it. ``predict`` is the serving path
    (native, or ONNX with one row through bound buffers); ``predict_reference`` is
    XGBoost's own answer for the same rows."""

    _local: threading.local = field(default_factory=threading.local, repr=False)

    def predict(self, X: npt.ArrayLike) -> FloatArray:
        """P(fraud) per row of ``X`` (float64, shape (n, F), NaN = missing)."""
        x = self.check(X)
        if self.trees is not None:
            return native_probability(self.trees, x)
        if x.shape[0] != 1:
            return super().predict(x)
        bound: _Bound | None = getattr(self._local, "bound", None)
        if bound is None:
            bound = self._local.bound = _Bound(self.session, self.input_name, x.shape[1])
        bound.x[0] = x[0]  # float64 -> float32 into the bound buffer
        self.session.run_with_iobinding(bound.binding)
        return np.array([bound.proba[0, 1]], dtype=np.float64)

    def predict_one(self, row: npt.ArrayLike) -> float:
        """P(fraud) of one feature vector (length F), as a Python float."""
        return float(self.predict(np.asarray(row).reshape(1, -1))[0])


def load_model(
    version_dir: Path, expected_fingerprint: str, predictor: str = PREDICTOR
) -> LoadedModel:
    """Load and check one registry version (what is refused: :mod:`flows.artifacts`);
    ``predictor="onnx"`` asks for ONNX Runtime.

    >>> load_model(Path("/nonexistent/v0001"), "abc")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flows.registry.RegistryError: model: /nonexistent/v0001/metadata.json is missing; ...
    """
    art = read_artifacts(version_dir, expected_fingerprint, predictor)
    return LoadedModel(**{f.name: getattr(art, f.name) for f in fields(art)})
