"""Keys per role, TLS and mutual TLS on a real Brain."""

import subprocess

import grpc
import pytest
from certs import make_pki
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import BIN, BrainProcess

from barter.v1 import admin_pb2, admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc

WORKER_KEY = "worker-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


def bearer(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


@pytest.fixture
def keyed_brain(make_brain):
    return make_brain(HANDS_API_KEY=WORKER_KEY, ADMIN_API_KEY=ADMIN_KEY)


def call_admin(brain, metadata):
    return brain.admin().GetStats(admin_pb2.GetStatsRequest(), metadata=metadata)


def call_worker(brain, metadata):
    return brain.jobs().ClaimJob(
        jobs_pb2.ClaimJobRequest(worker_id="w"), metadata=metadata
    )


@pytest.mark.parametrize(
    ("call", "metadata", "code"),
    [
        (call_admin, None, grpc.StatusCode.UNAUTHENTICATED),
        (call_admin, bearer("wrong-key-0123456789"), grpc.StatusCode.UNAUTHENTICATED),
        (call_admin, [("authorization", ADMIN_KEY)], grpc.StatusCode.UNAUTHENTICATED),
        (call_admin, bearer(WORKER_KEY), grpc.StatusCode.PERMISSION_DENIED),
        (call_worker, None, grpc.StatusCode.UNAUTHENTICATED),
        (call_worker, bearer(ADMIN_KEY), grpc.StatusCode.PERMISSION_DENIED),
        (call_worker, bearer(ADMIN_KEY[:-1]), grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_calls_without_the_right_key_are_refused(keyed_brain, call, metadata, code):
    """No key or a wrong key is UNAUTHENTICATED; the other role's key is DENIED."""
    with pytest.raises(grpc.RpcError) as error:
        call(keyed_brain, metadata)
    assert error.value.code() == code


def test_each_role_reaches_its_own_service(keyed_brain):
    """The admin key reaches AdminService; the worker key reaches JobService."""
    assert call_admin(keyed_brain, bearer(ADMIN_KEY)).pending == 0
    assert list(call_worker(keyed_brain, bearer(WORKER_KEY)).jobs) == []


def test_a_refused_progress_stream_gets_unauthenticated(keyed_brain):
    """Streaming calls are checked too."""
    update = jobs_pb2.ProgressUpdate(job_id="x", lease_token="y")
    with pytest.raises(grpc.RpcError) as error:
        list(keyed_brain.jobs().StreamProgress(iter([update]), timeout=10))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_stays_open_without_a_key(keyed_brain):
    """Probes need no key."""
    stub = health_pb2_grpc.HealthStub(keyed_brain.channel())
    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_serves_clients_that_trust_its_ca(make_brain, tmp_path):
    """With a certificate and key the Brain speaks TLS; plaintext gets nowhere."""
    pki = make_pki(tmp_path / "pki")
    brain = make_brain(
        BRAIN_TLS_CERT_FILE=str(pki.server_cert),
        BRAIN_TLS_KEY_FILE=str(pki.server_key),
    )
    trusted = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(brain.address, trusted) as channel:
        stats = admin_pb2_grpc.AdminServiceStub(channel).GetStats(
            admin_pb2.GetStatsRequest(), timeout=10
        )
    assert stats.pending == 0

    with pytest.raises(grpc.RpcError) as plaintext:
        call_admin(brain, None)
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE

    untrusted = grpc.ssl_channel_credentials(
        root_certificates=pki.other_ca.read_bytes()
    )
    with grpc.secure_channel(brain.address, untrusted) as channel:
        with pytest.raises(grpc.RpcError) as wrong_ca:
            admin_pb2_grpc.AdminServiceStub(channel).GetStats(
                admin_pb2.GetStatsRequest(), timeout=10
            )
    assert wrong_ca.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(make_brain, tmp_path):
    """With a client CA set, only clients with a certificate it signed get in."""
    pki = make_pki(tmp_path / "pki")
    brain = make_brain(
        BRAIN_TLS_CERT_FILE=str(pki.server_cert),
        BRAIN_TLS_KEY_FILE=str(pki.server_key),
        BRAIN_TLS_CLIENT_CA_FILE=str(pki.ca),
    )
    with_cert = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes(),
        certificate_chain=pki.client_cert.read_bytes(),
    )
    with grpc.secure_channel(brain.address, with_cert) as channel:
        reply = jobs_pb2_grpc.JobServiceStub(channel).ClaimJob(
            jobs_pb2.ClaimJobRequest(worker_id="w"), timeout=10
        )
    assert list(reply.jobs) == []

    without_cert = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    with grpc.secure_channel(brain.address, without_cert) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            jobs_pb2_grpc.JobServiceStub(channel).ClaimJob(
                jobs_pb2.ClaimJobRequest(worker_id="w"), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_on_a_public_address_is_refused_unless_allowed(tmp_path):
    """Listening beyond loopback without TLS needs BRAIN_ALLOW_INSECURE."""
    brain = BrainProcess(tmp_path)
    brain.migrate()
    result = subprocess.run(
        [BIN / "barter-brain", "serve", "--listen", "0.0.0.0:0"],
        env=brain.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "BRAIN_TLS_CERT_FILE" in result.stderr
    assert "BRAIN_ALLOW_INSECURE" in result.stderr


def test_short_keys_are_refused_at_start(tmp_path):
    """A key shorter than 16 characters stops the Brain before it serves."""
    brain = BrainProcess(tmp_path, ADMIN_API_KEY="tinysecret")
    brain.migrate()
    result = subprocess.run(
        [BIN / "barter-brain", "serve", "--listen", brain.address],
        env=brain.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "ADMIN_API_KEY: a key needs at least 16 characters" in result.stderr
    assert "tinysecret" not in result.stderr
