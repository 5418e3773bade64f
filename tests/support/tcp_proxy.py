"""A TCP proxy between the sidecar and PostgreSQL, for faults no real server makes on demand: cutting a
connection right after the client sent COMMIT (the commit happens, its reply never arrives), and counting the
round trips a decision costs (a client flight: the bytes a client sends after the server last spoke, pipeline
Sync and Flush messages alone excepted, and probes of the watchdog left out)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._cut_on: bytes | None = None
        self.cuts = 0
        # Client flights whose bytes contain none of `ignored` (the watchdog's probes).
        self.flights = 0
        self.flight_log: list[bytes] = []
        self.ignored: tuple[bytes, ...] = (b"SELECT 1", b"count(*)")
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def cut_after(self, marker: bytes) -> None:
        """The next client message containing `marker` is forwarded, then its connection is cut both ways."""
        with self._lock:
            self._cut_on = marker

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            state = {"server_spoke": True}
            threading.Thread(target=self._pump_up, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(server, client, state), daemon=True).start()

    def _pump_up(self, client: socket.socket, server: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    # Sync and Flush messages alone, right after a pipeline's statements, are not a wait: the
                    # client sends them without waiting for the statements' results (the server merely answered
                    # the flushed ones first). They neither count as a flight nor start one, or the next
                    # statements, sent before the server answers them, would go uncounted.
                    control_only = _only_sync_or_flush(data)
                    if state["server_spoke"] and not control_only and not any(m in data for m in self.ignored):
                        self.flights += 1
                        self.flight_log.append(data[:60])
                    if not control_only:
                        state["server_spoke"] = False
                    cut = self._cut_on is not None and self._cut_on in data
                    if cut:
                        self._cut_on = None
                        self.cuts += 1
                        state["cut"] = True  # from now on nothing the server says reaches the client
                server.sendall(data)
                if cut:
                    time.sleep(0.2)  # the server commits; its reply is never relayed
                    break
        except OSError:
            pass
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _pump_down(self, server: socket.socket, client: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := server.recv(65536):
                with self._lock:
                    state["server_spoke"] = True
                    if state.get("cut"):
                        continue
                client.sendall(data)
        except OSError:
            pass
        for sock in (client, server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


_SYNC_OR_FLUSH = (b"S\x00\x00\x00\x04", b"H\x00\x00\x00\x04")


def _only_sync_or_flush(data: bytes) -> bool:
    """The bytes are nothing but PostgreSQL Sync and Flush messages (5 bytes each)."""
    return len(data) % 5 == 0 and all(data[i : i + 5] in _SYNC_OR_FLUSH for i in range(0, len(data), 5))
