import datetime

from barter.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCEEDED: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]
    OUTCOME_RETRY: _ClassVar[Outcome]
    OUTCOME_CANCELLED: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCEEDED: Outcome
OUTCOME_FAILED: Outcome
OUTCOME_RETRY: Outcome
OUTCOME_CANCELLED: Outcome

class ClaimJobRequest(_message.Message):
    __slots__ = ("worker_id", "wait", "max_jobs")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    wait: _duration_pb2.Duration
    max_jobs: int
    def __init__(self, worker_id: _Optional[str] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_jobs: _Optional[int] = ...) -> None: ...

class ClaimedJob(_message.Message):
    __slots__ = ("job_id", "action", "target", "tier", "lease", "steps", "sessions", "steps_total", "steps_done")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_DONE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    action: _common_pb2.Action
    target: str
    tier: str
    lease: _common_pb2.Lease
    steps: _containers.RepeatedCompositeFieldContainer[_common_pb2.Step]
    sessions: _containers.RepeatedCompositeFieldContainer[_common_pb2.AccountSession]
    steps_total: int
    steps_done: int
    def __init__(self, job_id: _Optional[str] = ..., action: _Optional[_Union[_common_pb2.Action, str]] = ..., target: _Optional[str] = ..., tier: _Optional[str] = ..., lease: _Optional[_Union[_common_pb2.Lease, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[_common_pb2.Step, _Mapping]]] = ..., sessions: _Optional[_Iterable[_Union[_common_pb2.AccountSession, _Mapping]]] = ..., steps_total: _Optional[int] = ..., steps_done: _Optional[int] = ...) -> None: ...

class ClaimJobResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[ClaimedJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[ClaimedJob, _Mapping]]] = ...) -> None: ...

class ProgressUpdate(_message.Message):
    __slots__ = ("job_id", "lease_token", "done", "total", "message", "results", "refreshed_sessions")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REFRESHED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    done: int
    total: int
    message: str
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.StepResult]
    refreshed_sessions: _containers.RepeatedCompositeFieldContainer[_common_pb2.AccountSession]
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., message: _Optional[str] = ..., results: _Optional[_Iterable[_Union[_common_pb2.StepResult, _Mapping]]] = ..., refreshed_sessions: _Optional[_Iterable[_Union[_common_pb2.AccountSession, _Mapping]]] = ...) -> None: ...

class ProgressAck(_message.Message):
    __slots__ = ("job_id", "deadline", "cancel")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    deadline: _timestamp_pb2.Timestamp
    cancel: bool
    def __init__(self, job_id: _Optional[str] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cancel: _Optional[bool] = ...) -> None: ...

class CompleteJobRequest(_message.Message):
    __slots__ = ("job_id", "lease_token", "outcome", "results", "error_code", "error_message", "refreshed_sessions")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REFRESHED_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    lease_token: str
    outcome: Outcome
    results: _containers.RepeatedCompositeFieldContainer[_common_pb2.StepResult]
    error_code: str
    error_message: str
    refreshed_sessions: _containers.RepeatedCompositeFieldContainer[_common_pb2.AccountSession]
    def __init__(self, job_id: _Optional[str] = ..., lease_token: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., results: _Optional[_Iterable[_Union[_common_pb2.StepResult, _Mapping]]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ..., refreshed_sessions: _Optional[_Iterable[_Union[_common_pb2.AccountSession, _Mapping]]] = ...) -> None: ...

class CompleteJobResponse(_message.Message):
    __slots__ = ("state", "available_at")
    STATE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_AT_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.JobState
    available_at: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[_common_pb2.JobState, str]] = ..., available_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CompleteJobsRequest(_message.Message):
    __slots__ = ("completions",)
    COMPLETIONS_FIELD_NUMBER: _ClassVar[int]
    completions: _containers.RepeatedCompositeFieldContainer[CompleteJobRequest]
    def __init__(self, completions: _Optional[_Iterable[_Union[CompleteJobRequest, _Mapping]]] = ...) -> None: ...

class CompletionResult(_message.Message):
    __slots__ = ("job_id", "code", "message", "response")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    code: int
    message: str
    response: CompleteJobResponse
    def __init__(self, job_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., response: _Optional[_Union[CompleteJobResponse, _Mapping]] = ...) -> None: ...

class CompleteJobsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CompletionResult]
    def __init__(self, results: _Optional[_Iterable[_Union[CompletionResult, _Mapping]]] = ...) -> None: ...
