"""A loopback TCP proxy whose connections can be cut and restored, for chaos runs.

`TcpProxy` listens on 127.0.0.1 (port 0 picks) and forwards every connection
to one upstream address. It runs its own asyncio loop in a daemon thread, so
the caller drives it with plain method calls:

- `cut("reset")`: every open connection is aborted (RST) and new ones are
  closed as soon as they are accepted, until `restore()`.
- `cut("blackhole")`: bytes stop flowing both ways and new connections are
  accepted but not forwarded, as in a network partition; `restore()` lets the
  held bytes through again.

Run on its own (`python tests/tcp_proxy.py UPSTREAM_PORT`) it forwards until
interrupted and prints the port it listens on.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import threading
from typing import Literal

CutMode = Literal["reset", "blackhole"]
CUT_MODES: tuple[CutMode, ...] = ("reset", "blackhole")

READ_CHUNK_BYTES = 64 * 1024
# How long one control call may wait for the proxy's loop to act on it.
CONTROL_TIMEOUT_S = 10.0


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0) so the peer sees the cut at once."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        except OSError:
            pass
    writer.transport.abort()


class _Link:
    """One client connection and its upstream twin."""

    def __init__(
        self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter
    ) -> None:
        self.client = client
        self.upstream = upstream

    def abort(self) -> None:
        _abort(self.client)
        _abort(self.upstream)


class TcpProxy:
    """Forward 127.0.0.1:<port> to `upstream_host:upstream_port`; cut on demand."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self.connections_accepted = 0
        self.connections_refused = 0
        self._cut: CutMode | None = None
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-proxy", daemon=True
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def cut_mode(self) -> CutMode | None:
        """The current cut, or None while traffic flows."""
        return self._cut

    def start(self, port: int = 0) -> TcpProxy:
        """Listen on 127.0.0.1:`port` (0 picks a free one) and start forwarding."""
        self._thread.start()
        self._call(self._listen(port))
        return self

    def cut(self, mode: CutMode = "reset") -> int:
        """Cut traffic; returns how many open connections the cut hit."""
        if mode not in CUT_MODES:
            raise ValueError(f"cut mode must be one of {CUT_MODES}, got {mode!r}")
        return self._call(self._apply_cut(mode))

    def restore(self) -> None:
        """Let traffic flow again (held bytes of a blackhole go through)."""
        self._call(self._apply_restore())

    def stop(self) -> None:
        """Close every connection and the listener, then end the loop's thread."""
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CONTROL_TIMEOUT_S)
        self._loop.close()

    # --- inside the proxy's loop ----------------------------------------------

    def _call(self, coro):  # noqa: ANN001, ANN202 - a coroutine in, its result out
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(CONTROL_TIMEOUT_S)

    async def _listen(self, port: int) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _apply_cut(self, mode: CutMode) -> int:
        assert self._flowing is not None
        self._cut = mode
        hit = len(self._links)
        if mode == "blackhole":
            self._flowing.clear()
        else:
            for link in list(self._links):
                link.abort()
            self._links.clear()
        return hit

    async def _apply_restore(self) -> None:
        assert self._flowing is not None
        self._cut = None
        self._flowing.set()

    async def _shutdown(self) -> None:
        # No connection may be forwarded any more, whatever the cut was.
        self._cut = "reset"
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort()
        self._links.clear()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _accept(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        if self._cut == "reset":
            self.connections_refused += 1
            _abort(client)
            return
        # A blackholed connection waits here, as a SYN into a partition would.
        await self._flowing.wait()
        if self._cut == "reset":
            self.connections_refused += 1
            _abort(client)
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            # Upstream down: the client sees its connection reset, as it would
            # see a refused connection without the proxy.
            self.connections_refused += 1
            _abort(client)
            return
        self.connections_accepted += 1
        link = _Link(client, upstream)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(client_reader, upstream),
                self._pump(upstream_reader, client),
            )
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(READ_CHUNK_BYTES)
                if not data:
                    break
                # Bytes read during a blackhole are held until the restore.
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # Either side closing ends the link; the other pump sees its reset.
            if not writer.is_closing():
                _abort(writer)


def main() -> None:
    """Forward a local port to an upstream port until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upstream_port", type=int)
    parser.add_argument("--port", type=int, default=0, help="port to listen on")
    args = parser.parse_args()
    proxy = TcpProxy(args.upstream_port).start(args.port)
    print(f"listening on {proxy.address}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
