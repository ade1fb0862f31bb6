"""The scoring schema stays readable by every common gRPC tool: no proto3 ``optional``
(older protobuf parsers, e.g. the one in ghz 0.93, refuse the whole file), presence
through one-field ``oneof`` groups instead, with the same field numbers (the wire format
of existing clients is unchanged)."""

from __future__ import annotations

from google.protobuf import descriptor_pb2

from serving._proto.skewless.v1 import scorer_pb2 as pb

#: field number of each field that carries presence, as published before the change
PRESENCE = {
    "Transaction": {"card_id": 2, "merchant_id": 3, "amount": 4, "mcc": 7},
    "GetFeaturesRequest": {"entity_id": 2},
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(fdp)
    return fdp


def test_no_proto3_optional_anywhere() -> None:
    optional = [
        f"{m.name}.{f.name}" for m in _file().message_type for f in m.field if f.proto3_optional
    ]
    assert optional == [], f"proto3 `optional` fields (use a one-field oneof): {optional}"


def test_presence_fields_keep_their_numbers_and_presence() -> None:
    for message, fields in PRESENCE.items():
        desc = pb.DESCRIPTOR.message_types_by_name[message]
        for name, number in fields.items():
            fd = desc.fields_by_name[name]
            assert fd.number == number, f"{message}.{name} renumbered"
            assert fd.has_presence, f"{message}.{name} lost presence"
            assert fd.containing_oneof is not None
            assert [f.name for f in fd.containing_oneof.fields] == [name]


def test_a_sent_zero_is_not_a_missing_field() -> None:
    tx = pb.Transaction(card_id=0)
    assert tx.HasField("card_id") and not tx.HasField("merchant_id")
    assert tx.SerializeToString() == b"\x10\x00"  # field 2, varint 0: on the wire
    assert pb.Transaction.FromString(b"\x10\x00").HasField("card_id")
