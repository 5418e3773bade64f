"""A TCP proxy between the sidecar and PostgreSQL, for faults no real server makes on demand: cutting a
connection when the server's reply to a COMMIT passes (the commit happened, its reply never arrives), and
counting the round trips a decision costs (a client flight: the bytes a client sends after the server last
spoke, pipeline Sync and Flush messages alone excepted, and probes of the watchdog left out)."""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["COMMIT_COMPLETE", "TcpProxy"]

COMMIT_COMPLETE = b"COMMIT\x00"
"""The tag of the server's `CommandComplete` message for a COMMIT (NUL-terminated in the protocol)."""


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

    def cut_commit_reply(self) -> None:
        """The next server reply holding a COMMIT's completion (its `CommandComplete` tag) is dropped, and that
        connection cut both ways: the commit happened, the client never hears so.

        Matched on the server's reply rather than on the client's `COMMIT`: a client that prepared its statements
        (psycopg does after a few uses) no longer sends their text, but the server always names what completed.
        """
        with self._lock:
            self._cut_on = COMMIT_COMPLETE

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
                server.sendall(data)
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
                    cut = self._cut_on is not None and self._cut_on in data
                    if cut:
                        self._cut_on = None
                        self.cuts += 1
                if cut:
                    break  # the reply is never relayed; both ways are cut below
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
