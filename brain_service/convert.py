"""Store views to wire messages."""

from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from barter.v1 import admin_pb2, common_pb2, jobs_pb2
from brain_service.store import AccountView, ClaimedJob, JobView, StepView

ACTION = {"follow": common_pb2.ACTION_FOLLOW, "unfollow": common_pb2.ACTION_UNFOLLOW}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def job_state(name: str) -> int:
    return common_pb2.JobState.Value(f"JOB_STATE_{name}")


def step_outcome(name: str) -> int:
    return common_pb2.StepOutcome.Value(f"STEP_OUTCOME_{name}") if name else 0


def step(view: StepView) -> common_pb2.Step:
    return common_pb2.Step(
        index=view.index,
        account_username=view.account_username,
        outcome=step_outcome(view.outcome),
        error_code=view.error_code,
        error_message=view.error_message,
    )


def job(view: JobView) -> common_pb2.Job:
    j = view.job
    message = common_pb2.Job(
        job_id=j.id,
        action=ACTION[j.action],
        target=j.target,
        tier=j.tier,
        priority=j.priority,
        state=job_state(j.state),
        attempts=j.attempts,
        max_attempts=j.max_attempts,
        steps_total=j.size,
        steps_done=j.steps_done,
        progress_message=j.progress_message,
        pending_reason=j.pending_reason,
        last_error_code=j.last_error_code,
        last_error_message=j.last_error_message,
        worker_id=j.worker_id or "",
        cancel_requested=j.cancel_requested,
        idempotency_key=j.idempotency_key or "",
        created_at=timestamp(j.created_at),
        updated_at=timestamp(j.updated_at),
        available_at=timestamp(j.available_at),
        lease_deadline=timestamp(j.lease_deadline),
        finished_at=timestamp(j.finished_at),
        steps=[step(s) for s in view.steps],
    )
    return message


def claimed_job(claimed: ClaimedJob) -> jobs_pb2.ClaimedJob:
    j = claimed.job
    return jobs_pb2.ClaimedJob(
        job_id=j.id,
        action=ACTION[j.action],
        target=j.target,
        tier=j.tier,
        lease=common_pb2.Lease(
            token=j.lease_token,
            attempt=j.attempts,
            deadline=timestamp(j.lease_deadline),
        ),
        steps=[step(s) for s in claimed.steps],
        sessions=[
            common_pb2.AccountSession(
                username=s.username, settings=s.settings, password=s.password
            )
            for s in claimed.sessions
        ],
        steps_total=j.size,
        steps_done=j.steps_done,
    )


def account(view: AccountView) -> admin_pb2.Account:
    a = view.account
    return admin_pb2.Account(
        username=a.username,
        state=common_pb2.AccountState.Value(f"ACCOUNT_STATE_{a.state}"),
        state_reason=a.state_reason,
        state_changed_at=timestamp(a.state_changed_at),
        cooldown_until=timestamp(a.cooldown_until),
        busy_job_id=a.busy_job_id or "",
        actions_last_hour=view.actions_last_hour,
        actions_last_day=view.actions_last_day,
        has_password=a.password_enc is not None,
        has_session=a.settings_enc is not None,
        last_action_at=timestamp(a.last_action_at),
        created_at=timestamp(a.created_at),
    )
