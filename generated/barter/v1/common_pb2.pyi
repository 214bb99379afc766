import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_FOLLOW: _ClassVar[Action]
    ACTION_UNFOLLOW: _ClassVar[Action]

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_PENDING: _ClassVar[JobState]
    JOB_STATE_LEASED: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class StepOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STEP_OUTCOME_UNSPECIFIED: _ClassVar[StepOutcome]
    STEP_OUTCOME_DONE: _ClassVar[StepOutcome]
    STEP_OUTCOME_ALREADY_DONE: _ClassVar[StepOutcome]
    STEP_OUTCOME_ACCOUNT_NEEDS_OWNER: _ClassVar[StepOutcome]
    STEP_OUTCOME_THROTTLED: _ClassVar[StepOutcome]
    STEP_OUTCOME_TARGET_INVALID: _ClassVar[StepOutcome]
    STEP_OUTCOME_TRANSIENT: _ClassVar[StepOutcome]

class AccountState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCOUNT_STATE_UNSPECIFIED: _ClassVar[AccountState]
    ACCOUNT_STATE_ACTIVE: _ClassVar[AccountState]
    ACCOUNT_STATE_COOLDOWN: _ClassVar[AccountState]
    ACCOUNT_STATE_NEEDS_OWNER: _ClassVar[AccountState]
    ACCOUNT_STATE_DISABLED: _ClassVar[AccountState]
ACTION_UNSPECIFIED: Action
ACTION_FOLLOW: Action
ACTION_UNFOLLOW: Action
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_PENDING: JobState
JOB_STATE_LEASED: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
STEP_OUTCOME_UNSPECIFIED: StepOutcome
STEP_OUTCOME_DONE: StepOutcome
STEP_OUTCOME_ALREADY_DONE: StepOutcome
STEP_OUTCOME_ACCOUNT_NEEDS_OWNER: StepOutcome
STEP_OUTCOME_THROTTLED: StepOutcome
STEP_OUTCOME_TARGET_INVALID: StepOutcome
STEP_OUTCOME_TRANSIENT: StepOutcome
ACCOUNT_STATE_UNSPECIFIED: AccountState
ACCOUNT_STATE_ACTIVE: AccountState
ACCOUNT_STATE_COOLDOWN: AccountState
ACCOUNT_STATE_NEEDS_OWNER: AccountState
ACCOUNT_STATE_DISABLED: AccountState

class Lease(_message.Message):
    __slots__ = ("token", "attempt", "deadline")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    token: str
    attempt: int
    deadline: _timestamp_pb2.Timestamp
    def __init__(self, token: _Optional[str] = ..., attempt: _Optional[int] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AccountSession(_message.Message):
    __slots__ = ("username", "settings", "password")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    username: str
    settings: bytes
    password: str
    def __init__(self, username: _Optional[str] = ..., settings: _Optional[bytes] = ..., password: _Optional[str] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("step_index", "account_username", "outcome", "error_code", "error_message", "finished_at")
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_USERNAME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    step_index: int
    account_username: str
    outcome: StepOutcome
    error_code: str
    error_message: str
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, step_index: _Optional[int] = ..., account_username: _Optional[str] = ..., outcome: _Optional[_Union[StepOutcome, str]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("index", "account_username", "outcome", "error_code", "error_message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_USERNAME_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    account_username: str
    outcome: StepOutcome
    error_code: str
    error_message: str
    def __init__(self, index: _Optional[int] = ..., account_username: _Optional[str] = ..., outcome: _Optional[_Union[StepOutcome, str]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "action", "target", "tier", "priority", "state", "attempts", "max_attempts", "steps_total", "steps_done", "progress_message", "pending_reason", "last_error_code", "last_error_message", "worker_id", "lease_deadline", "cancel_requested", "idempotency_key", "created_at", "updated_at", "available_at", "finished_at", "steps")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PENDING_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    action: Action
    target: str
    tier: str
    priority: int
    state: JobState
    attempts: int
    max_attempts: int
    steps_total: int
    steps_done: int
    progress_message: str
    pending_reason: str
    last_error_code: str
    last_error_message: str
    worker_id: str
    lease_deadline: _timestamp_pb2.Timestamp
    cancel_requested: bool
    idempotency_key: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    available_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    def __init__(self, job_id: _Optional[str] = ..., action: _Optional[_Union[Action, str]] = ..., target: _Optional[str] = ..., tier: _Optional[str] = ..., priority: _Optional[int] = ..., state: _Optional[_Union[JobState, str]] = ..., attempts: _Optional[int] = ..., max_attempts: _Optional[int] = ..., steps_total: _Optional[int] = ..., steps_done: _Optional[int] = ..., progress_message: _Optional[str] = ..., pending_reason: _Optional[str] = ..., last_error_code: _Optional[str] = ..., last_error_message: _Optional[str] = ..., worker_id: _Optional[str] = ..., lease_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cancel_requested: _Optional[bool] = ..., idempotency_key: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., available_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ...) -> None: ...
