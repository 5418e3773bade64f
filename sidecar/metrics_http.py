"""The operator's HTTP endpoint: Prometheus text at /metrics, liveness at /healthz, readiness at /readyz.

Runs in its own thread (the standard library's threading HTTP server), so a slow scraper never touches the
signing path. /readyz is 200 only while the gRPC health status is SERVING.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.errors import ConfigurationError

__all__ = ["MetricsHttpServer"]


class MetricsHttpServer:
    def __init__(self, listen: str, registry: CollectorRegistry, ready: Callable[[], bool]) -> None:
        host, _, port_text = listen.rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigurationError(f"--metrics-listen {listen!r} must be HOST:PORT") from None
        registry_ = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(registry_), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n")
                elif path == "/readyz":
                    if ready():
                        self._reply(200, b"ready\n")
                    else:
                        self._reply(503, b"not ready\n")
                else:
                    self._reply(404, b"not found: try /metrics, /healthz or /readyz\n")

            def _reply(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes every few seconds would drown the log

        try:
            self._httpd = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", port), Handler)
        except OSError as error:
            raise ConfigurationError(f"cannot listen for metrics on {listen}: {error.strerror}") from error
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
