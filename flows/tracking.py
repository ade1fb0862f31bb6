"""Lineage and experiment tracking for training runs.

The registry's metadata.json is the record of truth (code commit, library versions,
data hash, feature fingerprint); MLflow is an optional mirror for teams that browse
runs there. It is an extra (``pip install 'skewless[mlflow]'``) and only imported when a
tracking URI is configured.

>>> sorted(library_versions())
['matplotlib', 'numpy', 'onnx', 'onnxmltools', 'onnxruntime', 'pyarrow', 'python', 'xgboost']
>>> flatten({"a": {"b": 1.5, "c": [1]}, "d": 2})
{'a.b': 1.5, 'd': 2}
"""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

_LIBRARIES = ("numpy", "onnx", "onnxmltools", "onnxruntime", "pyarrow", "xgboost-cpu", "matplotlib")
_REPO = Path(__file__).resolve().parents[1]


def library_versions() -> dict[str, str]:
    """Installed versions of what shapes the model and its artifacts, plus Python."""
    out = {"python": platform.python_version()}
    for dist in _LIBRARIES:
        try:
            out[dist.removesuffix("-cpu")] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist.removesuffix("-cpu")] = "not installed"
    return out


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def git_commit(repo: Path = _REPO) -> str:
    """``git rev-parse HEAD`` of the code that trained; "unknown" outside a git checkout."""
    return _git(repo, "rev-parse", "HEAD") or "unknown"


def git_dirty(repo: Path = _REPO) -> bool | None:
    """Whether tracked files differ from HEAD (the commit alone does not pin the code then)."""
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def require_mlflow() -> ModuleType:
    """The mlflow module, or a clear error saying how to get it."""
    try:
        return importlib.import_module("mlflow")
    except ImportError:
        raise ValueError(
            "mlflow: a tracking URI is configured (--mlflow-uri / SKEWLESS_MLFLOW_URI) but mlflow "
            "is not installed; pip install 'skewless[mlflow]', or unset the URI"
        ) from None


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b": scalar}``; lists and None are dropped (not loggable)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, str | int | float | bool):
            out[key] = v
    return out


def log_mlflow(mlflow: ModuleType, uri: str, version_dir: Path, meta: dict[str, Any]) -> str:
    """One MLflow run per registry version: params, test/validation metrics, the ablation,
    lineage tags and the version directory as artifacts. Returns the run id."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("skewless")
    with mlflow.start_run(run_name=meta["version"]) as run:
        mlflow.log_params(
            {
                **flatten(meta["params"]),
                "seed": meta["seed"],
                "best_iteration": meta["best_iteration"],
            }
        )
        metrics = {
            k: float(v)
            for k, v in flatten(
                {"test": meta["metrics"]["test"], "validation": meta["metrics"]["validation"]}
            ).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        metrics.update(
            {
                f"ablation.{k}": float(v)
                for k, v in flatten(meta["ablation"]).items()
                if isinstance(v, float)
            }
        )
        metrics["threshold"] = float(meta["threshold"])
        metrics["parity_max_abs_diff"] = float(meta["parity_max_abs_diff"])
        mlflow.log_metrics(metrics)
        tags = ("version", "fingerprint", "data_fingerprint", "git_commit")
        mlflow.set_tags({f"skewless.{k}": str(meta[k]) for k in tags})
        mlflow.log_artifacts(str(version_dir), artifact_path="model")
        return str(run.info.run_id)
