"""The model artifacts: the one place that knows the model format (XGBoost + ONNX).

Training writes a registry version with :func:`export_onnx` and the file names here;
:func:`read_artifacts` opens one and refuses a version directory that is corrupt (an
artifact whose sha256 differs from the metadata, missing or unreadable files) or
mismatched (trained on feature definitions whose fingerprint differs from the running
ones), raising :class:`flows.registry.RegistryError` with the reason. Nothing scores
with a model whose inputs it cannot vouch for. Serving wraps the result in its
single-row fast path (:mod:`serving.model`); training, ``models promote`` and verify use
it as it is, so they refuse exactly what serving refuses.

Scores come from the native tree predictor (:mod:`flows.trees`: XGBoost's own bits, read
from ``model.json``, checked at load) when the model is one it evaluates; otherwise, with
one log line naming why, from the ONNX artifact run by onnxruntime (single-threaded:
serving scales by requests, not by threads per request). ``predictor="onnx"`` asks for
ONNX. :meth:`ModelArtifacts.predict_reference` is the XGBoost Booster itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from flows.registry import RegistryError, read_metadata
from flows.trees import native_probability, native_trees

if TYPE_CHECKING:  # onnxruntime loads on first use: the CLI imports this module to start
    import onnxruntime as ort

MODEL_FILE = "model.json"
ONNX_FILE = "model.onnx"
#: the ONNX input (float32, shape (n, F)) and the opset it is exported at
ONNX_INPUT = "features"
ONNX_OPSET = 15  # the highest onnxmltools' XGBoost converter supports
#: the ONNX classifier output holding ``[P(class 0), P(class 1)]`` per row
ONNX_OUTPUT = "probabilities"
#: metadata keys a reader relies on (training writes these and more)
MODEL_KEYS = ("feature_names", "fingerprint", "threshold", "onnx_input_name", "parity_max_abs_diff")

FloatArray = npt.NDArray[np.float64]
log = logging.getLogger("skewless.model")


def export_onnx(booster: Any, n_features: int) -> bytes:
    """The booster as an ONNX TreeEnsembleClassifier (input ``features``: float32 (n, F))."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    anonymous = booster.copy()
    anonymous.feature_names = None  # the converter only reads f0, f1, ... split names
    model = onnxmltools.convert_xgboost(
        anonymous, name="skewless", target_opset=ONNX_OPSET,
        initial_types=[(ONNX_INPUT, FloatTensorType([None, n_features]))],
    )  # fmt: skip
    return bytes(model.SerializeToString())


def onnx_session(model: bytes | Path) -> ort.InferenceSession:
    """An onnxruntime CPU session with one intra-op and one inter-op thread."""
    import onnxruntime as ort

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


@dataclass
class ModelArtifacts:
    """A checked registry version: the ONNX session, the XGBoost booster, the native
    predictor (None: ONNX scores) and what the metadata says about them. ``predict`` is
    what every path scores with (``predictor`` names it); ``predict_reference`` is
    XGBoost's own answer for the same rows."""

    version: str
    feature_names: tuple[str, ...]
    threshold: float
    fingerprint: str
    metadata: dict[str, Any]
    path: Path
    session: ort.InferenceSession = field(repr=False)
    booster: Any = field(repr=False)
    input_name: str = field(repr=False)
    trees: Any = field(default=None, repr=False)
    #: "native" (XGBoost's bits) or "onnx"
    predictor: str = "onnx"

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def check(self, X: npt.ArrayLike) -> np.ndarray:
        """``X`` as an array, refused unless it is (n, F) in ``feature_names`` order."""
        x = np.asarray(X)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(
                f"X: expected shape (n, {len(self.feature_names)}), columns in feature_names "
                f"order, got {x.shape}"
            )
        return x

    def predict(self, X: npt.ArrayLike) -> FloatArray:
        """P(fraud) per row of ``X`` (float64, shape (n, F), NaN = missing), via the
        native predictor (ONNX when the model has none)."""
        if self.trees is not None:
            return native_probability(self.trees, self.check(X))
        return onnx_probability(self.session, self.check(X))

    def predict_reference(self, X: npt.ArrayLike) -> FloatArray:
        """P(fraud) per row from the XGBoost Booster (``inplace_predict``)."""
        return np.asarray(self.booster.inplace_predict(self.check(X)), dtype=np.float64)

    def flag(self, p: npt.ArrayLike) -> npt.NDArray[np.bool_]:
        """The decision rule the threshold was chosen for: ``p >= threshold``."""
        return np.asarray(p) >= self.threshold


def read_artifacts(
    version_dir: Path, expected_fingerprint: str, predictor: str = "native"
) -> ModelArtifacts:
    """Open and check one registry version; see the module docstring for what is refused.
    ``predictor``: "native" (when the model allows it, else ONNX) or "onnx".

    >>> read_artifacts(Path("/nonexistent/v0001"), "abc")  # doctest: +ELLIPSIS
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
    if predictor not in ("native", "onnx"):
        raise ValueError(f"predictor: {predictor!r} is not 'native' or 'onnx'")
    trees = None
    if predictor == "native":
        trees, why = native_trees(booster, len(names))
        if trees is None:
            log.warning("%s: scoring with ONNX Runtime, not the native predictor: %s", where, why)
    return ModelArtifacts(
        version=meta["version"],
        feature_names=names,
        threshold=float(meta["threshold"]),
        fingerprint=meta["fingerprint"],
        metadata=meta,
        path=version_dir,
        session=session,
        booster=booster,
        input_name=inputs[0].name,
        trees=trees,
        predictor="onnx" if trees is None else "native",
    )
