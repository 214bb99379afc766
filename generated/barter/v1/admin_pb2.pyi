import datetime

from barter.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobSpec(_message.Message):
    __slots__ = ("action", "target", "tier", "idempotency_key", "max_attempts")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    action: _common_pb2.Action
    target: str
    tier: str
    idempotency_key: str
    max_attempts: int
    def __init__(self, action: _Optional[_Union[_common_pb2.Action, str]] = ..., target: _Optional[str] = ..., tier: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., max_attempts: _Optional[int] = ...) -> None: ...

class SubmitJobsRequest(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobSpec]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobSpec, _Mapping]]] = ...) -> None: ...

class SubmittedJob(_message.Message):
    __slots__ = ("job", "created")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    created: bool
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class SubmitJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[SubmittedJob]
    def __init__(self, jobs: _Optional[_Iterable[_Union[SubmittedJob, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "tier", "target", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_common_pb2.JobState]
    tier: str
    target: str
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[_common_pb2.JobState, str]]] = ..., tier: _Optional[str] = ..., target: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[_common_pb2.Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchJobsRequest(_message.Message):
    __slots__ = ("job_ids",)
    JOB_IDS_FIELD_NUMBER: _ClassVar[int]
    job_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: _common_pb2.Job
    def __init__(self, job: _Optional[_Union[_common_pb2.Job, _Mapping]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class RetryJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Account(_message.Message):
    __slots__ = ("username", "state", "state_reason", "state_changed_at", "cooldown_until", "busy_job_id", "actions_last_hour", "actions_last_day", "has_password", "has_session", "last_action_at", "created_at")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    COOLDOWN_UNTIL_FIELD_NUMBER: _ClassVar[int]
    BUSY_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_LAST_HOUR_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_LAST_DAY_FIELD_NUMBER: _ClassVar[int]
    HAS_PASSWORD_FIELD_NUMBER: _ClassVar[int]
    HAS_SESSION_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTION_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    username: str
    state: _common_pb2.AccountState
    state_reason: str
    state_changed_at: _timestamp_pb2.Timestamp
    cooldown_until: _timestamp_pb2.Timestamp
    busy_job_id: str
    actions_last_hour: int
    actions_last_day: int
    has_password: bool
    has_session: bool
    last_action_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, username: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.AccountState, str]] = ..., state_reason: _Optional[str] = ..., state_changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cooldown_until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., busy_job_id: _Optional[str] = ..., actions_last_hour: _Optional[int] = ..., actions_last_day: _Optional[int] = ..., has_password: _Optional[bool] = ..., has_session: _Optional[bool] = ..., last_action_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AccountInput(_message.Message):
    __slots__ = ("username", "password", "settings")
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    username: str
    password: str
    settings: bytes
    def __init__(self, username: _Optional[str] = ..., password: _Optional[str] = ..., settings: _Optional[bytes] = ...) -> None: ...

class AddAccountRequest(_message.Message):
    __slots__ = ("account",)
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    account: AccountInput
    def __init__(self, account: _Optional[_Union[AccountInput, _Mapping]] = ...) -> None: ...

class ImportAccountsRequest(_message.Message):
    __slots__ = ("accounts", "update_existing")
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_EXISTING_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[AccountInput]
    update_existing: bool
    def __init__(self, accounts: _Optional[_Iterable[_Union[AccountInput, _Mapping]]] = ..., update_existing: _Optional[bool] = ...) -> None: ...

class ImportRowResult(_message.Message):
    __slots__ = ("index", "username", "created", "updated", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    username: str
    created: bool
    updated: bool
    error: str
    def __init__(self, index: _Optional[int] = ..., username: _Optional[str] = ..., created: _Optional[bool] = ..., updated: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class ImportAccountsResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[ImportRowResult]
    def __init__(self, rows: _Optional[_Iterable[_Union[ImportRowResult, _Mapping]]] = ...) -> None: ...

class ListAccountsRequest(_message.Message):
    __slots__ = ("states", "page_size", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_common_pb2.AccountState]
    page_size: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[_common_pb2.AccountState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAccountsResponse(_message.Message):
    __slots__ = ("accounts", "next_page_token")
    ACCOUNTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    accounts: _containers.RepeatedCompositeFieldContainer[Account]
    next_page_token: str
    def __init__(self, accounts: _Optional[_Iterable[_Union[Account, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ResetAccountRequest(_message.Message):
    __slots__ = ("username",)
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    username: str
    def __init__(self, username: _Optional[str] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("pending", "leased", "succeeded", "failed", "cancelled", "due", "waiting_for_workforce", "oldest_due_age", "accounts_active", "accounts_cooldown", "accounts_needs_owner", "accounts_disabled", "accounts_busy", "actions_last_hour", "server_time")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_FIELD_NUMBER: _ClassVar[int]
    DUE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_WORKFORCE_FIELD_NUMBER: _ClassVar[int]
    OLDEST_DUE_AGE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_COOLDOWN_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_NEEDS_OWNER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_DISABLED_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_BUSY_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_LAST_HOUR_FIELD_NUMBER: _ClassVar[int]
    SERVER_TIME_FIELD_NUMBER: _ClassVar[int]
    pending: int
    leased: int
    succeeded: int
    failed: int
    cancelled: int
    due: int
    waiting_for_workforce: int
    oldest_due_age: _duration_pb2.Duration
    accounts_active: int
    accounts_cooldown: int
    accounts_needs_owner: int
    accounts_disabled: int
    accounts_busy: int
    actions_last_hour: int
    server_time: _timestamp_pb2.Timestamp
    def __init__(self, pending: _Optional[int] = ..., leased: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., cancelled: _Optional[int] = ..., due: _Optional[int] = ..., waiting_for_workforce: _Optional[int] = ..., oldest_due_age: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., accounts_active: _Optional[int] = ..., accounts_cooldown: _Optional[int] = ..., accounts_needs_owner: _Optional[int] = ..., accounts_disabled: _Optional[int] = ..., accounts_busy: _Optional[int] = ..., actions_last_hour: _Optional[int] = ..., server_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
