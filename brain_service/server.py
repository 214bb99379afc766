"""Running the Brain: the gRPC server, health, reflection and the sweeper."""

import asyncio
import contextlib
import ipaddress
import os
import signal
import threading
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from barter.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from brain_service.api import AdminApi, Hub, JobApi
from brain_service.auth import KeyCheck, read_key
from brain_service.config import BrainConfig
from brain_service.errors import BrainError
from brain_service.intake import DecodeGuard
from brain_service.schema import require_current
from brain_service.settings import SettingError
from brain_service.store import Store, utcnow
from brain_service.vault import Vault

log = structlog.get_logger("brain")

SERVICES = (
    jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)


def open_store(config: BrainConfig) -> Store:
    vault = Vault.from_settings(config.secret_key, config.secret_key_file)
    return Store(config.database_url, config, vault)


async def _sweep(hub: Hub) -> None:
    """Reclaim expired leases and end cooldowns, every sweep interval."""
    while not hub.stopping:
        try:
            now = utcnow()
            hub.note_reclaimed(await hub.run(hub.store.reclaim_expired))
            if await hub.run(hub.store.restore_cooled_accounts, now):
                hub.job_changed(claimable=None)
        except BrainError as exc:
            log.warning("sweep_failed", reason=str(exc))
        await asyncio.sleep(hub.config.sweep_interval_s)


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_credentials(config: BrainConfig) -> grpc.ServerCredentials | None:
    """TLS (mutual when a client CA is set), or None for plaintext."""
    if bool(config.tls_cert_file) != bool(config.tls_key_file):
        raise SettingError("BRAIN_TLS_CERT_FILE and BRAIN_TLS_KEY_FILE go together")
    if not config.tls_cert_file:
        if config.tls_client_ca_file:
            raise SettingError("BRAIN_TLS_CLIENT_CA_FILE needs BRAIN_TLS_CERT_FILE")
        if not is_loopback(config.listen) and not config.allow_insecure:
            raise SettingError(
                f"BRAIN_LISTEN: {config.listen} is not loopback; account sessions "
                "cross the wire, so set BRAIN_TLS_CERT_FILE and BRAIN_TLS_KEY_FILE "
                "(or BRAIN_ALLOW_INSECURE=1 if something else encrypts the link)"
            )
        return None
    try:
        pair = (
            Path(config.tls_key_file).read_bytes(),
            Path(config.tls_cert_file).read_bytes(),
        )
        client_ca = (
            Path(config.tls_client_ca_file).read_bytes()
            if config.tls_client_ca_file
            else None
        )
    except OSError as exc:
        raise SettingError(f"TLS file {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _write_port_file(path: str, port: int) -> None:
    # Written then renamed so that a reader never sees a half-written port.
    tmp = Path(f"{path}.tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


async def serve(config: BrainConfig, port_file: str = "") -> None:
    """Serve until SIGTERM or SIGINT, then drain and return."""
    credentials = server_credentials(config)
    worker_key = read_key(
        config.hands_api_key, config.hands_api_key_file, "HANDS_API_KEY"
    )
    admin_key = read_key(
        config.admin_api_key, config.admin_api_key_file, "ADMIN_API_KEY"
    )
    if bool(worker_key) != bool(admin_key):
        # One key alone would lock the other role out entirely.
        raise SettingError("set both HANDS_API_KEY and ADMIN_API_KEY, or neither")
    if worker_key and worker_key == admin_key:
        raise SettingError("HANDS_API_KEY and ADMIN_API_KEY must differ")
    keys = KeyCheck(worker_key, admin_key)
    store = open_store(config)
    require_current(store.engine)
    hub = Hub(store, config)

    server = grpc.aio.server(
        interceptors=[keys, DecodeGuard()],
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Long-polls are quiet for up to a minute; let clients ping.
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    jobs_pb2_grpc.add_JobServiceServicer_to_server(JobApi(hub), server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminApi(hub), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )

    if credentials is None:
        port = server.add_insecure_port(config.listen)
    else:
        port = server.add_secure_port(config.listen, credentials)
    if port == 0:
        raise BrainError(f"BRAIN_LISTEN: cannot listen on {config.listen}")
    await server.start()
    for name in ("", *SERVICES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    host = config.listen.rsplit(":", 1)[0]
    log.info(
        "brain_started",
        listen=f"{host}:{port}",
        pid=os.getpid(),
        tls="mutual" if config.tls_client_ca_file else bool(credentials),
        keys_required=keys.enabled,
    )
    if not keys.enabled:
        log.warning("keys_not_set", hint="set HANDS_API_KEY and ADMIN_API_KEY")
    if port_file:
        _write_port_file(port_file, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sweeper = asyncio.create_task(_sweep(hub), name="lease-sweeper")
    sweeper.add_done_callback(lambda task: _sweeper_died(task, stop))
    stop_listening = threading.Event()
    if store.is_postgres:
        threading.Thread(
            target=store.listen,
            args=(
                lambda kind, count: loop.call_soon_threadsafe(
                    hub.on_peer_note, kind, count
                ),
                stop_listening,
            ),
            name="peer-listener",
            daemon=True,
        ).start()

    await stop.wait()
    log.info("brain_draining", grace_s=config.shutdown_grace_s)
    for name in ("", *SERVICES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    hub.stop()
    stop_listening.set()
    await server.stop(config.shutdown_grace_s)
    sweeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeper
    hub.close()
    store.close()
    log.info("brain_stopped")


def _sweeper_died(task: asyncio.Task, stop: asyncio.Event) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        # Without the sweeper expired leases would only be reclaimed by claims;
        # a Brain in that state stops loudly rather than run half-alive.
        log.error("sweeper_crashed", exc_info=exc)
        stop.set()
