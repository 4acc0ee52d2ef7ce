"""A TCP proxy of the suite's own, to make a dependency slow, silent or rude on demand.

``FaultProxy(target_port)`` listens on a free port of 127.0.0.1 and forwards to the target.
Its mode applies to every connection, open or new, from the moment it is set:

- ``pass``: forward both ways;
- ``delay`` (``delay_ms``): hold every chunk that long before forwarding it;
- ``blackhole``: accept connections, read and drop everything, never answer (a host that
  vanished from the network: the client sees nothing until its own timeout);
- ``reset``: close every connection at once with a TCP reset, and reset new ones on accept.

``FaultProxy(target_port, listening=False)`` reserves its port but refuses connections (the dependency is
down: nothing listens) until :meth:`FaultProxy.listen`.

Threads, not asyncio: the proxy runs next to blocking test code and must keep working while it blocks.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from typing import Literal

Mode = Literal["pass", "delay", "blackhole", "reset"]


def _reset(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, listening: bool = True) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.delay_ms = 0
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))  # bound, not listening: a connection to the port is refused
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        if listening:
            self.listen()

    def listen(self) -> None:
        """Start accepting connections on :attr:`port` (once; the constructor does it unless ``listening=False``)."""
        self._listener.listen(128)
        threading.Thread(target=self._accept_loop, name=f"fault-proxy-{self.port}", daemon=True).start()

    def set(self, mode: Mode, delay_ms: int = 0) -> None:
        """Switch every connection to ``mode`` (``reset`` closes the open ones now)."""
        with self._lock:
            self.mode = mode
            self.delay_ms = delay_ms
            if mode == "reset":
                pairs, self._pairs = self._pairs, []
                for client, upstream in pairs:
                    _reset(client)
                    if upstream is not None:
                        _reset(upstream)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.set("reset")

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            mode = self.mode
        if mode == "reset":
            _reset(client)
            return
        upstream: socket.socket | None = None
        if mode != "blackhole":
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                return
        with self._lock:
            self._pairs.append((client, upstream))
        try:
            self._pump(client, upstream)
        finally:
            with self._lock:
                if (client, upstream) in self._pairs:
                    self._pairs.remove((client, upstream))
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def _pump(self, client: socket.socket, upstream: socket.socket | None) -> None:
        peers = [client] if upstream is None else [client, upstream]
        while not self._closed.is_set():
            try:
                readable, _, _ = select.select(peers, [], [], 0.2)
            except (OSError, ValueError):
                return
            for sock in readable:
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                with self._lock:
                    mode, delay_ms = self.mode, self.delay_ms
                if mode == "blackhole" or upstream is None:
                    continue  # swallowed: the peer waits for an answer that never comes
                if mode == "delay" and delay_ms:
                    time.sleep(delay_ms / 1000)
                other = upstream if sock is client else client
                try:
                    other.sendall(chunk)
                except OSError:
                    return
