import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Transaction(_message.Message):
    __slots__ = ("transaction_id", "card_id", "merchant_id", "amount", "currency", "country", "mcc", "event_time")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CARD_ID_FIELD_NUMBER: _ClassVar[int]
    MERCHANT_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    MCC_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    card_id: int
    merchant_id: int
    amount: float
    currency: str
    country: str
    mcc: int
    event_time: _timestamp_pb2.Timestamp
    def __init__(self, transaction_id: _Optional[str] = ..., card_id: _Optional[int] = ..., merchant_id: _Optional[int] = ..., amount: _Optional[float] = ..., currency: _Optional[str] = ..., country: _Optional[str] = ..., mcc: _Optional[int] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("int_value", "double_value", "string_value", "bool_value", "timestamp_value")
    INT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_VALUE_FIELD_NUMBER: _ClassVar[int]
    int_value: int
    double_value: float
    string_value: str
    bool_value: bool
    timestamp_value: _timestamp_pb2.Timestamp
    def __init__(self, int_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ..., timestamp_value: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("fields",)
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    fields: _containers.MessageMap[str, Value]
    def __init__(self, fields: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("transaction", "event", "include_features")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    event: Event
    include_features: bool
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ..., event: _Optional[_Union[Event, _Mapping]] = ..., include_features: _Optional[bool] = ...) -> None: ...

class ScoreBatchRequest(_message.Message):
    __slots__ = ("transactions", "include_features", "events")
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    include_features: bool
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ..., include_features: _Optional[bool] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Feature(_message.Message):
    __slots__ = ("name", "value", "missing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    missing: bool
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., missing: _Optional[bool] = ...) -> None: ...

class EntityState(_message.Message):
    __slots__ = ("entity", "entity_id", "found", "age_ms", "newest_event_time")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    AGE_MS_FIELD_NUMBER: _ClassVar[int]
    NEWEST_EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    entity: str
    entity_id: int
    found: bool
    age_ms: int
    newest_event_time: _timestamp_pb2.Timestamp
    def __init__(self, entity: _Optional[str] = ..., entity_id: _Optional[int] = ..., found: _Optional[bool] = ..., age_ms: _Optional[int] = ..., newest_event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("transaction_id", "score", "decision", "threshold", "model_version", "features", "entities", "warnings")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    score: float
    decision: bool
    threshold: float
    model_version: str
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    entities: _containers.RepeatedCompositeFieldContainer[EntityState]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, transaction_id: _Optional[str] = ..., score: _Optional[float] = ..., decision: _Optional[bool] = ..., threshold: _Optional[float] = ..., model_version: _Optional[str] = ..., features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ..., entities: _Optional[_Iterable[_Union[EntityState, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[ScoreResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[ScoreResponse, _Mapping]]] = ...) -> None: ...

class GetFeaturesRequest(_message.Message):
    __slots__ = ("entity", "entity_id", "at")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    ENTITY_ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    entity: str
    entity_id: int
    at: _timestamp_pb2.Timestamp
    def __init__(self, entity: _Optional[str] = ..., entity_id: _Optional[int] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetFeaturesResponse(_message.Message):
    __slots__ = ("state", "features", "warnings")
    STATE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    state: EntityState
    features: _containers.RepeatedCompositeFieldContainer[Feature]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, state: _Optional[_Union[EntityState, _Mapping]] = ..., features: _Optional[_Iterable[_Union[Feature, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...
