from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeHello(_message.Message):
    __slots__ = ("node_name", "version", "datasets_json")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASETS_JSON_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    version: str
    datasets_json: str
    def __init__(self, node_name: _Optional[str] = ..., version: _Optional[str] = ..., datasets_json: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at",)
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    sent_at: float
    def __init__(self, sent_at: _Optional[float] = ...) -> None: ...

class NodeFrame(_message.Message):
    __slots__ = ("hello", "heartbeat", "reply")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    hello: NodeHello
    heartbeat: Heartbeat
    reply: bytes
    def __init__(self, hello: _Optional[_Union[NodeHello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., reply: _Optional[bytes] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("node_id", "heartbeat_seconds")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    heartbeat_seconds: float
    def __init__(self, node_id: _Optional[int] = ..., heartbeat_seconds: _Optional[float] = ...) -> None: ...

class CoordinatorFrame(_message.Message):
    __slots__ = ("welcome", "task", "heartbeat")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    task: bytes
    heartbeat: Heartbeat
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., task: _Optional[bytes] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("signed_task_json",)
    SIGNED_TASK_JSON_FIELD_NUMBER: _ClassVar[int]
    signed_task_json: str
    def __init__(self, signed_task_json: _Optional[str] = ...) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("task_id",)
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    def __init__(self, task_id: _Optional[str] = ...) -> None: ...

class TaskStatus(_message.Message):
    __slots__ = ("task_id", "task_type", "state", "replies", "expected", "detail", "updated_at")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_type: str
    state: str
    replies: int
    expected: int
    detail: str
    updated_at: float
    def __init__(self, task_id: _Optional[str] = ..., task_type: _Optional[str] = ..., state: _Optional[str] = ..., replies: _Optional[int] = ..., expected: _Optional[int] = ..., detail: _Optional[str] = ..., updated_at: _Optional[float] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "state", "sealed_result", "error_json")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SEALED_RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_JSON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    state: str
    sealed_result: str
    error_json: str
    def __init__(self, task_id: _Optional[str] = ..., state: _Optional[str] = ..., sealed_result: _Optional[str] = ..., error_json: _Optional[str] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "name", "version", "online", "last_seen", "datasets_json")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    DATASETS_JSON_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    name: str
    version: str
    online: bool
    last_seen: float
    datasets_json: str
    def __init__(self, node_id: _Optional[int] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., online: bool = ..., last_seen: _Optional[float] = ..., datasets_json: _Optional[str] = ...) -> None: ...

class NodeList(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class Document(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class ApplicationSubmission(_message.Message):
    __slots__ = ("application_json", "amends")
    APPLICATION_JSON_FIELD_NUMBER: _ClassVar[int]
    AMENDS_FIELD_NUMBER: _ClassVar[int]
    application_json: str
    amends: str
    def __init__(self, application_json: _Optional[str] = ..., amends: _Optional[str] = ...) -> None: ...

class ApplicationRef(_message.Message):
    __slots__ = ("application_id",)
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    application_id: str
    def __init__(self, application_id: _Optional[str] = ...) -> None: ...

class ApplicationRecord(_message.Message):
    __slots__ = ("application_id", "state", "applicant", "application_json", "history_json", "permit_id", "updated_at")
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    APPLICANT_FIELD_NUMBER: _ClassVar[int]
    APPLICATION_JSON_FIELD_NUMBER: _ClassVar[int]
    HISTORY_JSON_FIELD_NUMBER: _ClassVar[int]
    PERMIT_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    application_id: str
    state: str
    applicant: str
    application_json: str
    history_json: str
    permit_id: str
    updated_at: float
    def __init__(self, application_id: _Optional[str] = ..., state: _Optional[str] = ..., applicant: _Optional[str] = ..., application_json: _Optional[str] = ..., history_json: _Optional[str] = ..., permit_id: _Optional[str] = ..., updated_at: _Optional[float] = ...) -> None: ...

class ApplicationList(_message.Message):
    __slots__ = ("applications",)
    APPLICATIONS_FIELD_NUMBER: _ClassVar[int]
    applications: _containers.RepeatedCompositeFieldContainer[ApplicationRecord]
    def __init__(self, applications: _Optional[_Iterable[_Union[ApplicationRecord, _Mapping]]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("application_id", "decision", "note")
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    application_id: str
    decision: str
    note: str
    def __init__(self, application_id: _Optional[str] = ..., decision: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class PermitRef(_message.Message):
    __slots__ = ("permit_id",)
    PERMIT_ID_FIELD_NUMBER: _ClassVar[int]
    permit_id: str
    def __init__(self, permit_id: _Optional[str] = ...) -> None: ...
