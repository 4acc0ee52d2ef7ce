"""The health endpoint of a worker (``esf worker --health-port``) and of ``esf up``.

* ``GET /healthz``: liveness: 200 while the process serves requests.
* ``GET /readyz``: readiness: 200 unless a service of ``health.required`` is
  down (degraded is ready: an open breaker never makes an orchestrator restart
  the fleet), else 503; the body is the JSON health report. The report is
  reused for ``health.cache_s`` seconds, so polling every second costs one
  health check per second at most.

Every request needs ``Authorization: Bearer <health.token>`` (compared in
constant time; 401 otherwise) unless ``health.auth = "none"``. The token is
never logged; request lines are logged at debug level only.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..errors import SettingsError

log = logging.getLogger("esf.health")

HealthFn = Callable[[], dict[str, Any]]


class ReadinessCache:
    """Runs ``health`` at most once per ``cache_s`` seconds; concurrent callers share the answer."""

    def __init__(self, health: HealthFn, cache_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._health = health
        self.cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._report: dict[str, Any] = {}
        #: Health checks made (the rest were answered from the cache).
        self.checks = 0

    def get(self) -> dict[str, Any]:
        with self._lock:
            if self._clock() - self._at >= self.cache_s:
                try:
                    report = self._health()
                except Exception as exc:
                    report = {"status": "down", "ready": False, "error": type(exc).__name__}
                self._report = report
                self._at = self._clock()
                self.checks += 1
            return self._report


class HealthServer:
    """``/healthz`` and ``/readyz`` on ``address:port`` (0: a free port), served by a daemon thread.

    Raises:
        SettingsError: token authentication is on (the default) and no token is set.
    """

    def __init__(self, health: HealthFn, *, address: str = "127.0.0.1", port: int = 0, auth: str = "token",
                 token: str | None = None, cache_s: float = 1.0) -> None:
        if auth == "token" and not token:
            raise SettingsError(
                "health.token: the health endpoint requires a bearer token; set ESF_HEALTH_TOKEN "
                "(or health.auth = \"none\" to serve it without authentication, never on a network)",
                setting="health.token",
            )
        self._expected = f"Bearer {token}".encode() if auth == "token" and token else None
        self.readiness = ReadinessCache(health, cache_s)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("health endpoint: " + format, *args)

        self._httpd = ThreadingHTTPServer((address, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def _authorized(self, handler: BaseHTTPRequestHandler) -> bool:
        if self._expected is None:
            return True
        sent = (handler.headers.get("Authorization") or "").encode("utf-8", "replace")
        return hmac.compare_digest(sent, self._expected)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?", 1)[0]
        if path not in ("/healthz", "/readyz"):
            self._reply(handler, 404, {"error": "not found"})
        elif not self._authorized(handler):
            self._reply(handler, 401, {"error": "unauthorized"}, {"WWW-Authenticate": 'Bearer realm="esf"'})
        elif path == "/healthz":
            self._reply(handler, 200, {"status": "alive"})
        else:
            report = self.readiness.get()
            self._reply(handler, 200 if report.get("ready") else 503, report)

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, code: int, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, default=str).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def start(self) -> HealthServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="esf-health", daemon=True)
        self._thread.start()
        log.info("health endpoint on http://%s:%d (/healthz, /readyz)", self._httpd.server_address[0], self.port)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def start_health_server(fnd: Any, port: int | None = None) -> HealthServer | None:
    """Start ``fnd``'s health endpoint on ``port`` (else ``health.port``); None when neither is set.

    Raises:
        SettingsError: token authentication is on and ``health.token`` is not set.
    """
    hs = fnd.settings.health
    port = hs.port if port is None else port
    if port is None:
        return None
    token = hs.token.reveal() if hs.token is not None else None
    return HealthServer(fnd.health, address=hs.address, port=port, auth=hs.auth, token=token,
                        cache_s=hs.cache_s).start()
