"""The chaos run: a short one in `make test`, its proxy, and its checks."""

import json
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import chaos
import pytest
from tcp_proxy import TcpProxy

CHAOS = Path(__file__).with_name("chaos.py")
DISRUPTIONS = ("kill-hands", "stop-hands", "kill-brain", "cut-proxy")

# About 35 s: 150 jobs over 24 s of chaos, each kind of disruption at least once.
SHORT_RUN = [
    "--jobs=150",
    "--hands=3",
    "--hands-concurrency=2",
    "--duration-s=24",
    "--disruption-interval-s=4",
    "--lease-ttl-s=2",
    "--step-delay-s=0.25",
    "--settle-timeout-s=40",
    "--seed=4242",
]
RUN_TIMEOUT_S = 130


def run_chaos(tmp_path: Path) -> tuple[int, str, dict]:
    """Run tests/chaos.py to the end; SIGTERM (it then stops its processes) if slow."""
    summary_path = tmp_path / "summary.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(CHAOS),
            *SHORT_RUN,
            f"--workdir={tmp_path / 'run'}",
            f"--summary-json={summary_path}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        pytest.fail(f"the chaos run took over {RUN_TIMEOUT_S} s:\n{output}")
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return proc.returncode, output, summary


def count_in_table(output: str, name: str) -> int:
    """The number printed beside a check's name in the summary table."""
    match = re.search(rf"^  {re.escape(name)}\s+(\d+)\b", output, re.MULTILINE)
    assert match, f"no line for {name!r} in:\n{output}"
    return int(match.group(1))


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 40)
def test_short_chaos_run_loses_nothing_and_does_nothing_twice(tmp_path: Path) -> None:
    """Under kills, stops, a Brain restart and cut links every job ends exactly once."""
    code, output, summary = run_chaos(tmp_path)

    assert code == 0, output
    assert count_in_table(output, "jobs submitted") == 150, output
    assert count_in_table(output, "jobs lost (not final at the end)") == 0, output
    assert count_in_table(output, "jobs completed more than once") == 0, output
    assert count_in_table(output, "steps recorded more than once") == 0, output
    assert "RESULT: PASS" in output

    done = {row["kind"]: row["count"] for row in summary["recovery"]}
    assert all(done.get(kind, 0) >= 1 for kind in DISRUPTIONS), summary["recovery"]
    held = sum(len(d["held"]) for d in summary["disruptions"])
    assert held > 0, "no disruption hit a job in flight"


def test_checks_see_a_job_completed_twice_a_step_twice_and_a_lost_job() -> None:
    """The checks are not vacuous: each failing pattern in the evidence is counted."""
    finished_at = "2030-01-01 00:00:10"
    jobs = {
        "twice": ("twice", "k1", "SUCCEEDED", 2, 1, 1, finished_at, ""),
        "stuck": ("stuck", "k2", "LEASED", 1, 3, 0, None, ""),
    }
    row = ("twice", 0, 1, "acc1", "tgt1", "FOLLOW", "DONE", "w-1-0a0a0a0a", finished_at)
    completions = [
        ("brain1", {"event": "job_completed", "job_id": "twice", "state": "SUCCEEDED"}),
        ("brain1", {"event": "job_completed", "job_id": "twice", "state": "SUCCEEDED"}),
    ]
    evidence = chaos.Evidence(
        jobs=jobs,
        finished_rows=[row, row],
        all_rows=[row, row],
        acknowledged={"twice", "stuck", "never_stored"},
        brain_events=completions,
        hands_events=[],
        effects=[],
        unreadable_ledger_lines=0,
        incarnations={},
    )

    lost = chaos.check_jobs(evidence)[-1]
    assert (lost.name, lost.count) == ("jobs lost (not final at the end)", 2)
    assert chaos.check_completed_twice(evidence).count == 1
    assert chaos.check_steps_twice(evidence).count == 2  # per step and per effect


def test_an_unrecorded_effect_is_explained_only_by_a_disruption_near_it() -> None:
    """Killed just after acting explains an unrecorded effect; nothing near does not."""
    killed = chaos.Incarnation("h1.1", None, Path("l"), Path("j"), 0.0, 100.0, "killed")
    alive = chaos.Incarnation("h2.1", None, Path("l"), Path("j"), 0.0)
    incarnations = {i.name: i for i in (killed, alive)}
    cut = chaos.Disruption(1, "cut-proxy", "proxy1", 200.0, ended_at=203.0)

    def explain(incarnation: str, ts: float) -> str:
        effect = chaos.Effect("job", "acc", "tgt", "follow", ts, incarnation)
        return chaos.explain_effect(effect, [cut], incarnations)

    assert explain("h1.1", 99.5) == "kill-hands"
    assert explain("h2.1", 201.0) == "cut-proxy"
    assert explain("h1.1", 50.0) == ""
    assert explain("h2.1", 150.0) == ""


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(1024):
                self.request.sendall(data)
        except ConnectionError:
            pass


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A TcpProxy in front of an echo server, both on loopback port 0."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = TcpProxy(server.server_address[1]).start()
    yield proxy
    proxy.stop()
    server.shutdown()
    server.server_close()


def _connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
    sock.settimeout(2)
    return sock


def _echoes(sock: socket.socket) -> bool:
    """Whether bytes sent on `sock` come back (False once the link is cut)."""
    try:
        sock.sendall(b"ping")
        return sock.recv(16) == b"ping"
    except OSError:
        return False


def _new_connection_echoes(proxy: TcpProxy) -> bool:
    try:
        sock = _connect(proxy)
    except OSError:
        return False
    with sock:
        return _echoes(sock)


def test_proxy_reset_cut_drops_connections_until_restored(proxy: TcpProxy) -> None:
    """A reset cut aborts open connections and refuses new ones; restore heals."""
    with _connect(proxy) as sock:
        assert _echoes(sock)

        assert proxy.cut("reset") == 1
        assert not _echoes(sock)
        assert not _new_connection_echoes(proxy)

    proxy.restore()
    assert _new_connection_echoes(proxy)


def test_proxy_blackhole_holds_bytes_until_restored(proxy: TcpProxy) -> None:
    """A blackhole passes nothing while cut and delivers the held bytes after."""
    with _connect(proxy) as sock:
        proxy.cut("blackhole")
        sock.sendall(b"held")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(16)

        proxy.restore()
        sock.settimeout(2)
        assert sock.recv(16) == b"held"
