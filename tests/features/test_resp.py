"""The native ScoreBatchResponse encoder takes its field numbers and types from the
generated descriptor: its bytes are protobuf's own for the real proto, a renumbered field
follows, and a retyped or missing one is refused, naming it."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

from features.native import score_batch_encoder
from serving._proto.skewless.v1 import scorer_pb2 as pb

RESULTS = [
    ("t-1", 0.25, False, []),
    ("t-2", 0.9, True, ["card_id 7: no card state in the online store", "é"]),
    ("", 0.0, False, []),
    ("t-4", -0.0, True, ["w"]),
]


def _expected(cls, threshold: float, version: str):
    return cls(
        responses=[
            {"transaction_id": t, "score": s, "decision": d, "threshold": threshold,
             "model_version": version, "warnings": w}
            for t, s, d, w in RESULTS
        ]
    )  # fmt: skip


def _variant(edit) -> type:
    """ScoreBatchResponse of a copy of scorer.proto changed by ``edit(ScoreResponse proto)``."""
    fdp = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fdp)
    msg = next(m for m in fdp.message_type if m.name == "ScoreResponse")
    edit(msg)
    ts = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(ts)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(ts)
    pool.Add(fdp)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("skewless.v1.ScoreBatchResponse")
    )


def _field(msg, name):
    return next(f for f in msg.field if f.name == name)


def test_native_batch_response_is_protobufs_own_bytes():
    raw = score_batch_encoder(pb.ScoreBatchResponse.DESCRIPTOR).encode(RESULTS, 0.5, "v0003")
    want = _expected(pb.ScoreBatchResponse, 0.5, "v0003")
    assert raw == want.SerializeToString()
    assert pb.ScoreBatchResponse.FromString(raw) == want
    empty = score_batch_encoder(pb.ScoreBatchResponse.DESCRIPTOR).encode(RESULTS, 0.0, "")
    assert empty == _expected(pb.ScoreBatchResponse, 0.0, "").SerializeToString()


def test_a_renumbered_field_follows():
    def renumber(msg):
        _field(msg, "score").number = 20  # a two-byte tag
        _field(msg, "warnings").number = 9
        _field(msg, "decision").number = 2000

    cls = _variant(renumber)
    raw = score_batch_encoder(cls.DESCRIPTOR).encode(RESULTS, 0.5, "v0003")
    assert cls.FromString(raw) == _expected(cls, 0.5, "v0003")
    assert raw != score_batch_encoder(pb.ScoreBatchResponse.DESCRIPTOR).encode(
        RESULTS, 0.5, "v0003"
    )


def test_a_retyped_or_missing_field_is_refused_by_name():
    def retype(msg):
        _field(msg, "score").type = descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT

    with pytest.raises(ValueError, match="score: the descriptor has field 2 of type 2"):
        score_batch_encoder(_variant(retype).DESCRIPTOR)

    def rename(msg):
        _field(msg, "model_version").name = "model"

    with pytest.raises(
        ValueError, match=r"model_version: not a field of skewless\.v1\.ScoreResponse"
    ):
        score_batch_encoder(_variant(rename).DESCRIPTOR)

    def unrepeat(msg):
        _field(msg, "warnings").label = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL

    with pytest.raises(ValueError, match="warnings"):
        score_batch_encoder(_variant(unrepeat).DESCRIPTOR)
