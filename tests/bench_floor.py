"""The floor under dispatch latency: the wire alone, with nothing of barter's.

Three processes shaped like a dispatch: a submitter makes a unary call to a
relay server (grpc.aio, as the Brain), which answers a unary call that a
waiter (grpc.aio, as a Hands long-poll) holds open. No store, no protobuf, no
logging: what any Python gRPC design of this shape pays on this machine, at
the same pacing as the dispatch runs. `make bench` reports it beside them.

Run alone: python tests/bench_floor.py [jobs] [gap_ms]
"""

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

SERVICE = "barter.bench.Relay"


def _raw(data: bytes) -> bytes:
    return data


def _serve(port_file: Path) -> None:
    async def main() -> None:
        waiting: list[asyncio.Future[bytes]] = []

        async def submit(request: bytes, context: object) -> bytes:
            while waiting:
                held = waiting.pop(0)
                if not held.done():
                    held.set_result(request)
                    break
            return b""

        async def wait(request: bytes, context: object) -> bytes:
            held = asyncio.get_running_loop().create_future()
            waiting.append(held)
            return await held

        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Submit": grpc.unary_unary_rpc_method_handler(submit, _raw, _raw),
                "Wait": grpc.unary_unary_rpc_method_handler(wait, _raw, _raw),
            },
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        port_file.write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(main())


def _wait(address: str, out: Path) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(f"/{SERVICE}/Wait", _raw, _raw)
            with out.open("a") as fh:
                while True:
                    try:
                        tag = await call(b"", timeout=600)
                    except grpc.aio.AioRpcError:
                        return  # the relay is gone: the run is over
                    fh.write(f"{tag.decode()} {time.time()}\n")
                    fh.flush()

    asyncio.run(main())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round((len(ordered) - 1) * q / 100))]


def relay_floor(jobs: int, gap_s: float, waiters: int = 2) -> dict[str, Any]:
    """Relay `jobs` submits, `gap_s` apart, to held calls; latency figures in ms."""
    with tempfile.TemporaryDirectory(prefix="barter-floor-") as tmp:
        port_file, out = Path(tmp) / "port", Path(tmp) / "received"
        me = [sys.executable, os.path.abspath(__file__)]
        procs = [subprocess.Popen([*me, "serve", str(port_file)])]
        try:
            deadline = time.monotonic() + 20
            while not (port_file.exists() and port_file.read_text()):
                if time.monotonic() > deadline or procs[0].poll() is not None:
                    raise RuntimeError("the relay server did not start")
                time.sleep(0.05)
            address = f"127.0.0.1:{port_file.read_text()}"
            procs += [
                subprocess.Popen([*me, "wait", address, str(out)])
                for _ in range(waiters)
            ]
            with grpc.insecure_channel(address) as channel:
                submit = channel.unary_unary(f"/{SERVICE}/Submit", _raw, _raw)

                def received() -> dict[str, float]:
                    if not out.exists():
                        return {}
                    lines = (line.split() for line in out.read_text().splitlines())
                    return {tag: float(at) for tag, at in lines}

                # Warm-up submits until both waiters have answered one.
                for i in range(200):
                    submit(f"warm{i}".encode(), timeout=10)
                    time.sleep(0.05)
                    if len(received()) >= waiters + 2:
                        break
                time.sleep(1.0)

                sent: dict[str, float] = {}
                start = time.monotonic()
                for i in range(jobs):
                    time.sleep(max(0.0, start + i * gap_s - time.monotonic()))
                    sent[str(i)] = time.time()
                    submit(str(i).encode(), timeout=10)
                deadline = time.monotonic() + 10
                while not set(sent) <= set(received()):
                    if time.monotonic() > deadline:
                        raise RuntimeError("relayed submits never reached a waiter")
                    time.sleep(0.05)
            got = received()
        finally:
            for proc in reversed(procs):
                proc.kill()
                proc.wait(10)
    latencies = [(got[tag] - at) * 1000 for tag, at in sent.items()]
    return {
        "p50_ms": statistics.median(latencies),
        "p95_ms": _percentile(latencies, 95),
        "p99_ms": _percentile(latencies, 99),
        "max_ms": max(latencies),
    }


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["wait"]:
        _wait(sys.argv[2], Path(sys.argv[3]))
    else:
        jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
        gap_ms = float(sys.argv[2]) if len(sys.argv) > 2 else 20
        figures = relay_floor(jobs, gap_ms / 1000)
        print(", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
