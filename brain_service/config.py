"""Brain's settings, each declared once with its default and variable."""

from dataclasses import dataclass
from datetime import timedelta

from brain_service.settings import SettingError, setting


@dataclass(frozen=True)
class Tier:
    """A named job size and priority."""

    name: str
    size: int
    priority: int


@dataclass(frozen=True)
class BrainConfig:
    listen: str = setting(
        "BRAIN_LISTEN", "127.0.0.1:50051", "host:port to serve gRPC on (port 0 picks)"
    )
    database_url: str = setting(
        "DATABASE_URL", "sqlite:///barter.db", "SQLAlchemy URL of the store"
    )
    tiers: str = setting(
        "BRAIN_TIERS",
        "free_test=1:0,small=3:10,standard=5:20",
        "tiers as name=size:priority, comma separated",
    )
    sqlite_synchronous: str = setting(
        "BRAIN_SQLITE_SYNCHRONOUS",
        "NORMAL",
        "NORMAL survives any process crash; FULL also survives a power cut, "
        "at one disk flush per commit",
    )
    lease_ttl_s: float = setting(
        "BRAIN_LEASE_TTL_S", 30.0, "seconds a lease lasts without renewal"
    )
    max_wait_s: float = setting(
        "BRAIN_MAX_WAIT_S", 60.0, "longest a ClaimJob long-poll is held"
    )
    max_attempts: int = setting(
        "BRAIN_MAX_ATTEMPTS", 5, "claims a job gets before it fails for good"
    )
    retry_base_s: float = setting(
        "BRAIN_RETRY_BASE_S", 2.0, "first retry delay; doubles per attempt"
    )
    retry_max_s: float = setting("BRAIN_RETRY_MAX_S", 300.0, "longest retry delay")
    workforce_recheck_s: float = setting(
        "BRAIN_WORKFORCE_RECHECK_S",
        10.0,
        "how soon a job that found too few free accounts is looked at again",
    )
    fallback_check_s: float = setting(
        "BRAIN_FALLBACK_CHECK_S",
        2.0,
        "with several replicas, how often a long-poll looks for work it was "
        "not told about",
    )
    sweep_interval_s: float = setting(
        "BRAIN_SWEEP_INTERVAL_S", 1.0, "how often expired leases are reclaimed"
    )
    cooldown_s: float = setting(
        "BRAIN_COOLDOWN_S", 900.0, "first cooldown of a throttled account; doubles"
    )
    cooldown_max_s: float = setting(
        "BRAIN_COOLDOWN_MAX_S", 86400.0, "longest cooldown of a throttled account"
    )
    account_max_per_hour: int = setting(
        "BRAIN_ACCOUNT_MAX_PER_HOUR", 30, "step attempts one account may make per hour"
    )
    account_max_per_day: int = setting(
        "BRAIN_ACCOUNT_MAX_PER_DAY", 200, "step attempts one account may make per day"
    )
    account_min_gap_s: float = setting(
        "BRAIN_ACCOUNT_MIN_GAP_S", 20.0, "least time between two actions of an account"
    )
    secret_key_file: str = setting(
        "BRAIN_SECRET_KEY_FILE",
        "",
        "file holding the Fernet key that encrypts passwords and sessions",
    )
    secret_key: str = setting(
        "BRAIN_SECRET_KEY", "", "the Fernet key itself (prefer the file)", secret=True
    )
    hands_api_key: str = setting(
        "HANDS_API_KEY", "", "key workers present for JobService", secret=True
    )
    hands_api_key_file: str = setting(
        "HANDS_API_KEY_FILE", "", "file holding HANDS_API_KEY (preferred)"
    )
    admin_api_key: str = setting(
        "ADMIN_API_KEY", "", "key operators present for AdminService", secret=True
    )
    admin_api_key_file: str = setting(
        "ADMIN_API_KEY_FILE", "", "file holding ADMIN_API_KEY (preferred)"
    )
    tls_cert_file: str = setting(
        "BRAIN_TLS_CERT_FILE", "", "PEM certificate chain; with the key, serve TLS"
    )
    tls_key_file: str = setting("BRAIN_TLS_KEY_FILE", "", "PEM private key for TLS")
    tls_client_ca_file: str = setting(
        "BRAIN_TLS_CLIENT_CA_FILE",
        "",
        "PEM CA bundle; when set, clients must present a certificate it signed",
    )
    allow_insecure: bool = setting(
        "BRAIN_ALLOW_INSECURE",
        False,
        "serve plaintext on a non-loopback address (sessions cross the wire!)",
    )
    max_concurrent_polls: int = setting(
        "BRAIN_MAX_CONCURRENT_POLLS", 2000, "long-polls held at once before refusing"
    )
    max_submit_batch: int = setting(
        "BRAIN_MAX_SUBMIT_BATCH", 1000, "jobs one SubmitJobs call may carry (1-1000)"
    )
    max_message_bytes: int = setting(
        "BRAIN_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, "largest gRPC message accepted"
    )
    shutdown_grace_s: float = setting(
        "BRAIN_SHUTDOWN_GRACE_S", 10.0, "time in-flight calls get on SIGTERM"
    )
    log_format: str = setting(
        "LOG_FORMAT", "auto", "console, json, or auto (console on a TTY)"
    )
    log_level: str = setting("LOG_LEVEL", "info", "debug, info, warning or error")

    @property
    def lease_ttl(self) -> timedelta:
        return timedelta(seconds=self.lease_ttl_s)

    def tier_table(self) -> dict[str, Tier]:
        """Parse `tiers`; raises SettingError naming BRAIN_TIERS."""
        table: dict[str, Tier] = {}
        for item in filter(None, (p.strip() for p in self.tiers.split(","))):
            try:
                name, rest = item.split("=", 1)
                size, priority = rest.split(":", 1)
                tier = Tier(name.strip(), int(size), int(priority))
            except ValueError:
                raise SettingError(
                    f"BRAIN_TIERS: {item!r} is not name=size:priority"
                ) from None
            if not tier.name or not 1 <= tier.size <= 100:
                raise SettingError(f"BRAIN_TIERS: {item!r} needs a name and size 1-100")
            table[tier.name] = tier
        if not table:
            raise SettingError("BRAIN_TIERS: at least one tier is needed")
        return table
