"""One small HTTP server for ``/metrics``, ``/healthz`` and ``/readyz``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer"]

log = logging.getLogger(__name__)


class HealthServer:
    """Serves the metrics registry and the health checks on ``host:port`` in a thread.

    ``healthy`` and ``ready`` return ``(ok, reason)``; ``port=0`` picks a free port.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 healthy: Callable[[], tuple[bool, str]],
                 ready: Callable[[], tuple[bool, str]]) -> None:
        server_self = self
        self.registry = registry
        self.healthy = healthy
        self.ready = ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(server_self.registry)
                    self._reply(200, body, CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    check = server_self.healthy if path == "/healthz" else server_self.ready
                    ok, reason = check()
                    self._reply(200 if ok else 503, (reason + "\n").encode(), "text/plain")
                else:
                    self._reply(404, b"not found\n", "text/plain")

            def _reply(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: object) -> None:
                log.debug("http: " + fmt, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.host = host
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="streamseq-http",
                                        daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("metrics and health on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
