"""The registry's contract: atomic versions and aliases, and refusal of anything corrupt."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from flows.registry import (
    RegistryError,
    aliases,
    describe,
    next_version,
    publish,
    read_metadata,
    resolve,
    set_alias,
    versions,
)


def _write(payload: str = "{}"):
    def write(d: Path) -> None:
        (d / "model.json").write_text(payload)
        (d / "model.onnx").write_bytes(b"\x08\x07")

    return write


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return tmp_path / "registry"


def test_publish_numbers_versions_and_records_sha256(root: Path) -> None:
    assert versions(root) == [] and next_version(root) == "v0001"
    v1 = publish(root, _write("{}"), {"feature_names": ["a", "b"], "threshold": 0.5})
    v2 = publish(root, _write("[]"), {"feature_names": ["a"]})
    assert (v1, v2, versions(root), next_version(root)) == (
        "v0001",
        "v0002",
        ["v0001", "v0002"],
        "v0003",
    )
    meta = json.loads((root / "versions" / v1 / "metadata.json").read_text())
    assert meta == {
        "version": "v0001",
        "feature_names": ["a", "b"],
        "threshold": 0.5,
        "artifacts": {
            "sha256": {
                "model.json": hashlib.sha256(b"{}").hexdigest(),
                "model.onnx": hashlib.sha256(b"\x08\x07").hexdigest(),
            }
        },
    }
    # nothing half-written is left behind
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["v0001", "v0002"]


def test_failed_write_publishes_nothing(root: Path) -> None:
    def broken(d: Path) -> None:
        (d / "model.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish(root, broken, {"feature_names": ["a"]})
    assert versions(root) == [] and list((root / "versions").iterdir()) == []


def test_versions_sort_numerically_and_ignore_other_names(root: Path) -> None:
    for name in ("v0002", "v0010", "v0009", ".incoming-x", "notes"):
        (root / "versions" / name).mkdir(parents=True)
    assert versions(root) == ["v0002", "v0009", "v0010"]
    assert next_version(root) == "v0011"


def test_alias_moves_atomically_and_resolves(root: Path) -> None:
    v1 = publish(root, _write(), {"feature_names": ["a"]})
    v2 = publish(root, _write(), {"feature_names": ["a"]})
    set_alias(root, "production", v1)
    set_alias(root, "shadow", v2)
    set_alias(root, "production", v2)
    assert aliases(root) == {"production": "v0002", "shadow": "v0002"}
    assert sorted(p.name for p in (root / "aliases").iterdir()) == ["production", "shadow"]
    assert resolve(root, "production") == root / "versions" / "v0002"
    assert resolve(root, "v0001") == root / "versions" / "v0001"


def test_alias_errors_name_the_problem(root: Path) -> None:
    publish(root, _write(), {"feature_names": ["a"]})
    with pytest.raises(RegistryError, match=r"^version: v0007 is not in "):
        set_alias(root, "production", "v0007")
    with pytest.raises(RegistryError, match=r"^alias: 'production' is not set in .*skewless train"):
        resolve(root, "production")
    with pytest.raises(RegistryError, match=r"^version: v0003 is not in "):
        resolve(root, "v0003")
    assert aliases(root) == {}


@pytest.fixture()
def version_dir(root: Path) -> Path:
    return resolve(root, publish(root, _write(), {"feature_names": ["a"]}))


def test_read_metadata_checks_every_artifact(version_dir: Path) -> None:
    assert read_metadata(version_dir)["feature_names"] == ["a"]
    (version_dir / "model.json").write_text("{ }")
    with pytest.raises(
        RegistryError, match=r"^model: artifact model.json in .* does not match its sha256$"
    ):
        read_metadata(version_dir)
    assert read_metadata(version_dir, verify=False)["version"] == "v0001"
    (version_dir / "model.json").unlink()
    with pytest.raises(RegistryError, match=r"^model: artifact model.json is missing from "):
        read_metadata(version_dir)


def test_read_metadata_refuses_missing_invalid_or_incomplete(version_dir: Path) -> None:
    path = version_dir / "metadata.json"
    meta = json.loads(path.read_text())
    path.write_text("{not json")
    with pytest.raises(RegistryError, match=r"^model: .*metadata.json is not valid JSON"):
        read_metadata(version_dir)
    path.write_text(json.dumps({k: v for k, v in meta.items() if k != "feature_names"}))
    with pytest.raises(RegistryError, match=r"^model: .*metadata.json lacks feature_names$"):
        read_metadata(version_dir)
    path.write_text(json.dumps({**meta, "version": "v0042"}))
    with pytest.raises(RegistryError, match=r"says version v0042, directory is v0001$"):
        read_metadata(version_dir)
    path.unlink()
    with pytest.raises(
        RegistryError, match=r"metadata.json is missing; .* is not a model version$"
    ):
        read_metadata(version_dir)


def test_describe_lists_every_version_with_aliases_and_errors(root: Path) -> None:
    v1 = publish(root, _write(), {"feature_names": ["a"], "threshold": 0.1})
    v2 = publish(root, _write(), {"feature_names": ["b"], "threshold": 0.2})
    v3 = publish(root, _write(), {"feature_names": ["c"]})
    set_alias(root, "production", v2)
    set_alias(root, "canary", v2)
    (root / "versions" / v1 / "model.onnx").write_bytes(b"tampered")
    (root / "versions" / v3 / "metadata.json").unlink()
    rows = describe(root)
    assert [(r["version"], r["aliases"], r["metadata"].get("threshold")) for r in rows] == [
        ("v0001", [], 0.1),
        ("v0002", ["canary", "production"], 0.2),
        ("v0003", [], None),
    ]
    assert rows[0]["error"].endswith(
        "model.onnx in " + str(root / "versions" / v1) + " does not match its sha256"
    )
    assert rows[1]["error"] is None
    assert rows[2]["error"].startswith(
        "model: " + str(root / "versions" / v3 / "metadata.json") + " is missing"
    )
