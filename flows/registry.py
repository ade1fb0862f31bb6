"""The model registry: a directory per version, aliases moved atomically.

Layout::

    <registry>/versions/<version>/metadata.json   what the model is and where it came from
    <registry>/versions/<version>/model.json      XGBoost native JSON (never pickle)
    <registry>/versions/<version>/model.onnx      the fast inference artifact
    <registry>/aliases/<alias>                    a text file holding a version name

A version directory is written under a temporary name and renamed into place, and an
alias is replaced with ``os.replace``, so readers never see half a model.

>>> import tempfile, json
>>> root = Path(tempfile.mkdtemp())
>>> v = publish(root, lambda d: (d / "model.json").write_text("{}"), {"feature_names": ["a"]})
>>> v, next_version(root)
('v0001', 'v0002')
>>> set_alias(root, "production", v); resolve(root, "production").name
'v0001'
>>> read_metadata(resolve(root, "production"))["version"]
'v0001'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flows.alias_history import record

METADATA = "metadata.json"
_VERSION = re.compile(r"^v(\d{4,})$")
#: keys every metadata.json must have (training writes more)
REQUIRED_KEYS = ("version", "feature_names", "artifacts")


class RegistryError(ValueError):
    """A registry, version or alias is missing, corrupt or mismatched."""


def versions(root: Path) -> list[str]:
    d = root / "versions"
    if not d.is_dir():
        return []
    return sorted((p.name for p in d.iterdir() if _VERSION.match(p.name)), key=lambda v: int(v[1:]))


def next_version(root: Path) -> str:
    existing = versions(root)
    n = int(existing[-1][1:]) + 1 if existing else 1
    return f"v{n:04d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes: artifact digests, and the training data's fingerprint."""
    return _sha256(path)


def publish(root: Path, write: Callable[[Path], Any], metadata: dict[str, Any]) -> str:
    """Create the next version: ``write(tmpdir)`` writes the artifacts, then the metadata
    (with a sha256 per artifact) is added and the directory renamed into place."""
    (root / "versions").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root / "versions"))
    try:
        write(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name != METADATA)
        while True:
            version = next_version(root)
            meta = {**metadata, "version": version}
            meta["artifacts"] = {
                **meta.get("artifacts", {}),
                "sha256": {f: _sha256(tmp / f) for f in files},
            }
            (tmp / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
            try:
                tmp.rename(root / "versions" / version)
                return version
            except OSError:
                if not (root / "versions" / version).exists():
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def set_alias(root: Path, alias: str, version: str, action: str = "set") -> None:
    """Point ``alias`` at ``version`` atomically; the move is appended to its history."""
    if not (root / "versions" / version).is_dir():
        raise RegistryError(f"version: {version} is not in {root}")
    (root / "aliases").mkdir(parents=True, exist_ok=True)
    before = aliases(root).get(alias)
    tmp = root / "aliases" / f".{alias}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, root / "aliases" / alias)
    record(root, alias, version, before, action)  # the alias history, beside the aliases


def aliases(root: Path) -> dict[str, str]:
    d = root / "aliases"
    if not d.is_dir():
        return {}
    return {p.name: p.read_text().strip() for p in d.iterdir() if not p.name.startswith(".")}


def resolve(root: Path, alias_or_version: str) -> Path:
    """The version directory an alias (or a version name) points at."""
    if _VERSION.match(alias_or_version):
        version = alias_or_version
    else:
        path = root / "aliases" / alias_or_version
        if not path.is_file():
            raise RegistryError(
                f"alias: {alias_or_version!r} is not set in {root} "
                "(train a model with `skewless train`, then `skewless models promote`; "
                "a registry lives in its data root: pass the same --data-dir)"
            )
        version = path.read_text().strip()
    d = root / "versions" / version
    if not d.is_dir():
        raise RegistryError(f"version: {version} is not in {root}")
    return d


def read_metadata(version_dir: Path, verify: bool = True) -> dict[str, Any]:
    """metadata.json of a version, checked: required keys present and, with ``verify``,
    every artifact's sha256 as recorded. A corrupt or mismatched directory is refused."""
    path = version_dir / METADATA
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryError(
            f"model: {path} is missing; {version_dir} is not a model version"
        ) from None
    except json.JSONDecodeError as exc:
        raise RegistryError(f"model: {path} is not valid JSON ({exc})") from None
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise RegistryError(f"model: {path} lacks {', '.join(missing)}")
    if meta["version"] != version_dir.name:
        raise RegistryError(
            f"model: {path} says version {meta['version']}, directory is {version_dir.name}"
        )
    if verify:
        for name, digest in meta["artifacts"].get("sha256", {}).items():
            f = version_dir / name
            if not f.is_file():
                raise RegistryError(f"model: artifact {name} is missing from {version_dir}")
            if _sha256(f) != digest:
                raise RegistryError(
                    f"model: artifact {name} in {version_dir} does not match its sha256"
                )
    return meta


def describe(root: Path) -> list[dict[str, Any]]:
    """Every version, oldest first, with the aliases pointing at it and either its checked
    metadata (``error`` None) or the reason it would be refused (``metadata`` as far as
    readable). For listings: a corrupt version is shown, not skipped.

    >>> root = Path(tempfile.mkdtemp())
    >>> v = publish(root, lambda d: (d / "model.json").write_text("{}"), {"feature_names": ["a"]})
    >>> set_alias(root, "production", v)
    >>> _ = (root / "versions" / v / "model.json").write_text("{ }")
    >>> [(r["version"], r["aliases"], r["error"]) for r in describe(root)]  # doctest: +ELLIPSIS
    [('v0001', ['production'], 'model: artifact model.json in ... does not match its sha256')]
    """
    by_version: dict[str, list[str]] = {}
    for alias, version in sorted(aliases(root).items()):
        by_version.setdefault(version, []).append(alias)
    rows = []
    for version in versions(root):
        d = root / "versions" / version
        error: str | None = None
        try:
            meta = read_metadata(d, verify=True)
        except RegistryError as exc:
            error = str(exc)
            try:
                meta = json.loads((d / METADATA).read_text())
            except (OSError, ValueError):
                meta = {}
        rows.append(
            {
                "version": version,
                "aliases": by_version.get(version, []),
                "metadata": meta,
                "error": error,
            }
        )
    return rows
