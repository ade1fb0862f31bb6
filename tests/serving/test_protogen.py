"""The checked-in generated code is exactly what protoc makes from protos/ today."""

from __future__ import annotations

from pathlib import Path

from serving.protogen import OUT_DIR, generate


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_generated_code_is_in_sync(tmp_path: Path) -> None:
    generate(tmp_path)
    fresh, checked_in = _files(tmp_path), _files(OUT_DIR)
    assert sorted(fresh) == sorted(checked_in), "run scripts/gen_protos.sh and commit"
    stale = [name for name in fresh if fresh[name] != checked_in[name]]
    assert stale == [], f"stale generated files {stale}: run scripts/gen_protos.sh and commit"


def test_generated_package_imports_where_it_lives() -> None:
    from serving._proto.skewless.v1 import scorer_pb2, scorer_pb2_grpc

    assert scorer_pb2.DESCRIPTOR.package == "skewless.v1"
    assert scorer_pb2_grpc.skewless_dot_v1_dot_scorer__pb2 is scorer_pb2
    assert set(scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].methods_by_name) == {
        "Score", "ScoreBatch", "ScoreStream", "GetFeatures",
    }  # fmt: skip
