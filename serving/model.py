"""Model loading for serving: a registry version, checked, behind one small interface.

:func:`load_model` refuses a version directory that is corrupt (an artifact whose sha256
differs from the metadata, missing or unreadable files) or mismatched (trained on feature
definitions whose fingerprint differs from the running ones), raising
:class:`flows.registry.RegistryError` with the reason. Serving never scores with a model
whose inputs it cannot vouch for.

Scores come from the ONNX artifact run by onnxruntime (single-threaded: serving scales
by requests, not by threads per request). A single row takes a preallocated path: the row
is copied into a per-thread float32 buffer already bound to the session, and the output
is written into a bound buffer, so the call costs a few microseconds rather than the
~200 µs of an XGBoost ``inplace_predict``. :meth:`LoadedModel.predict_reference` is the
XGBoost Booster itself, kept for parity checks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from flows.registry import RegistryError, read_metadata

MODEL_FILE = "model.json"
ONNX_FILE = "model.onnx"
#: the ONNX classifier output holding ``[P(class 0), P(class 1)]`` per row
ONNX_OUTPUT = "probabilities"
#: metadata keys serving relies on (training writes these and more)
MODEL_KEYS = ("feature_names", "fingerprint", "threshold", "onnx_input_name", "parity_max_abs_diff")

FloatArray = npt.NDArray[np.float64]


def onnx_session(model: bytes | Path) -> ort.InferenceSession:
    """An onnxruntime CPU session with one intra-op and one inter-op thread."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def onnx_probability(session: ort.InferenceSession, X: npt.ArrayLike) -> FloatArray:
    """P(class 1) per row of ``X`` (cast to float32, as XGBoost itself does)."""
    x = np.ascontiguousarray(X, dtype=np.float32)
    name = session.get_inputs()[0].name
    out = session.run([ONNX_OUTPUT], {name: x})[0]
    return np.asarray(out[:, 1], dtype=np.float64)


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
class LoadedModel:
    """A checked registry version. ``predict`` is the serving path (ONNX);
    ``predict_reference`` is XGBoost's own answer for the same rows."""

    version: str
    feature_names: tuple[str, ...]
    threshold: float
    fingerprint: str
    metadata: dict[str, Any]
    path: Path
    _session: ort.InferenceSession = field(repr=False)
    _booster: Any = field(repr=False)
    _input_name: str = field(repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def _check(self, X: npt.ArrayLike) -> np.ndarray:
        x = np.asarray(X)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(
                f"X: expected shape (n, {len(self.feature_names)}), columns in feature_names "
                f"order, got {x.shape}"
            )
        return x

    def predict(self, X: npt.ArrayLike) -> FloatArray:
        """P(fraud) per row of ``X`` (float64, shape (n, F), NaN = missing), via ONNX."""
        x = self._check(X)
        if x.shape[0] != 1:
            return onnx_probability(self._session, x)
        bound: _Bound | None = getattr(self._local, "bound", None)
        if bound is None:
            bound = self._local.bound = _Bound(self._session, self._input_name, x.shape[1])
        bound.x[0] = x[0]  # float64 -> float32 into the bound buffer
        self._session.run_with_iobinding(bound.binding)
        return np.array([bound.proba[0, 1]], dtype=np.float64)

    def predict_one(self, row: npt.ArrayLike) -> float:
        """P(fraud) of one feature vector (length F), as a Python float."""
        return float(self.predict(np.asarray(row).reshape(1, -1))[0])

    def predict_reference(self, X: npt.ArrayLike) -> FloatArray:
        """P(fraud) per row from the XGBoost Booster (``inplace_predict``)."""
        x = self._check(X)
        return np.asarray(self._booster.inplace_predict(x), dtype=np.float64)

    def flag(self, p: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """The decision rule the threshold was chosen for: ``p >= threshold``."""
        return np.asarray(p) >= self.threshold


def load_model(version_dir: Path, expected_fingerprint: str) -> LoadedModel:
    """Load and check one registry version; see the module docstring for what is refused.

    >>> load_model(Path("/nonexistent/v0001"), "abc")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    flows.registry.RegistryError: model: /nonexistent/v0001/metadata.json is missing; ...
    """
    version_dir = Path(version_dir)
    meta = read_metadata(version_dir, verify=True)
    where = f"model {meta['version']} ({version_dir})"
    missing = [k for k in MODEL_KEYS if k not in meta]
    if missing:
        raise RegistryError(
            f"{where}: metadata lacks {', '.join(missing)}; not written by `skewless train`"
        )
    digests = meta["artifacts"].get("sha256", {})
    unlisted = [f for f in (MODEL_FILE, ONNX_FILE) if f not in digests]
    if unlisted:
        raise RegistryError(
            f"{where}: {', '.join(unlisted)} not recorded in metadata; "
            "refusing unverified artifacts"
        )
    if meta["fingerprint"] != expected_fingerprint:
        raise RegistryError(
            f"{where}: trained on feature definitions {meta['fingerprint']}, but the running "
            f"definitions are {expected_fingerprint}; retrain with `skewless train` on a fresh "
            "backfill, or serve a version trained on these definitions"
        )
    names = tuple(meta["feature_names"])

    import xgboost as xgb

    try:
        booster = xgb.Booster(model_file=str(version_dir / MODEL_FILE))
    except xgb.core.XGBoostError as exc:
        raise RegistryError(
            f"{where}: {MODEL_FILE} is not a readable XGBoost model ({exc})"
        ) from None
    if tuple(booster.feature_names or ()) != names:
        raise RegistryError(
            f"{where}: {MODEL_FILE} features {booster.feature_names} differ from "
            f"metadata {list(names)}"
        )
    booster.set_param({"nthread": 1})
    try:
        session = onnx_session(version_dir / ONNX_FILE)
    except Exception as exc:  # onnxruntime raises its own exception types per failure
        raise RegistryError(
            f"{where}: {ONNX_FILE} cannot be loaded by onnxruntime ({exc})"
        ) from None
    inputs = session.get_inputs()
    if (
        len(inputs) != 1
        or inputs[0].name != meta["onnx_input_name"]
        or inputs[0].shape[1] != len(names)
    ):
        got = [(i.name, i.shape) for i in inputs]
        raise RegistryError(
            f"{where}: {ONNX_FILE} inputs {got} do not match "
            f"{meta['onnx_input_name']!r} x {len(names)}"
        )
    if ONNX_OUTPUT not in {o.name for o in session.get_outputs()}:
        raise RegistryError(f"{where}: {ONNX_FILE} has no {ONNX_OUTPUT!r} output")
    return LoadedModel(
        version=meta["version"],
        feature_names=names,
        threshold=float(meta["threshold"]),
        fingerprint=meta["fingerprint"],
        metadata=meta,
        path=version_dir,
        _session=session,
        _booster=booster,
        _input_name=inputs[0].name,
    )
