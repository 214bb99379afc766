"""Brain's exceptions: one root, names that say the outcome, data attached.

They are raised by the store and validation and turned into gRPC status
codes in one place, `brain_service.api.abort_on_error`.
"""


class BrainError(Exception):
    """Root of every error the Brain reports to a caller."""


class InvalidArgument(BrainError):
    """A request field is unusable; `field` names it as the proto does."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class NotFound(BrainError):
    """The named job or account does not exist."""


class AlreadyExists(BrainError):
    """An account or idempotency key is already taken."""


class LeaseLost(BrainError):
    """The caller's lease token is not (or no longer) the job's current one."""


class WrongState(BrainError):
    """The job or account is not in a state that allows the request."""


class SecretsUnavailable(BrainError):
    """A secret must be stored or read but no encryption key is configured."""


class StoreUnavailable(BrainError):
    """The database cannot be reached or written right now."""


class TooBusy(BrainError):
    """A configured limit (e.g. concurrent long-polls) is reached."""
