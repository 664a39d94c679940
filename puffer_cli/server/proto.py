"""What ``puffer serve`` runs uvicorn with: the slow-client guard (header timeout and size
cap on uvicorn's HTTP/1.1 protocols), ``uvicorn_kwargs``, and binding the listening socket."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from puffer_cli import limits
from puffer_cli.errors import InvalidRequest
from puffer_cli.search import response
from puffer_cli.server.http import NO_RETRY

log = logging.getLogger("puffer.serve")


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = listen, "8080"
    host = host.strip("[]") or "127.0.0.1"
    try:
        p = int(port)
        if not 0 <= p <= 65535:
            raise ValueError
    except ValueError:
        raise InvalidRequest(
            f"--listen {listen!r}: port must be a number 0-65535", hint="e.g. --listen 0.0.0.0:8080"
        ) from None
    return host, p


# ------------------------------------------------------------------ slow clients (uvicorn protocol)
def _guard_settings(app: Any) -> tuple[float | None, int]:
    """(header timeout, header byte cap) of the puffer Server behind a (possibly wrapped) app
    (``app.state.server.cfg``, see server.Server.app)."""
    for _ in range(8):
        cfg = getattr(getattr(getattr(app, "state", None), "server", None), "cfg", None)
        if cfg is not None and hasattr(cfg, "header_timeout_s"):
            return cfg.header_timeout_s or None, limits.MAX_HEADER_BYTES
        app = getattr(app, "app", None)
        if app is None:
            break
    return limits.HEADER_TIMEOUT_S, limits.MAX_HEADER_BYTES


def _raw_error(status: int, reason: str, msg: str) -> bytes:
    body = response.error_body(msg)
    retry = "x-should-retry: false\r\n" if status in NO_RETRY else ""
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"{retry}connection: close\r\n\r\n"
    ).encode() + body


class _SlowClientGuard:
    """Mixin for uvicorn's HTTP/1.1 protocols (httptools, h11): a request line + headers must
    arrive within ``header_timeout_s`` of the connection opening or of the first byte of the
    next request, and be at most ``limits.MAX_HEADER_BYTES``; otherwise the server answers 408 /
    431 in the JSON error shape and closes the connection.  (uvicorn itself has only a keep-alive
    timeout, which every received byte resets: a client trickling a header forever was never closed.)
    Idle keep-alive connections are still closed by uvicorn's ``timeout_keep_alive``."""

    _hdr_timer: asyncio.TimerHandle | None = None
    _hdr_bytes = 0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._hdr_timeout, self._hdr_max = _guard_settings(self.app)  # type: ignore[attr-defined]
        self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def _awaiting_headers(self) -> bool:
        c = self.cycle  # type: ignore[attr-defined]
        return c is None or c.response_complete

    def _arm_header_timer(self) -> None:
        if self._hdr_timer is None and self._hdr_timeout:
            self._hdr_bytes = 0
            loop = self.loop  # type: ignore[attr-defined]
            self._hdr_timer = loop.call_later(self._hdr_timeout, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self._hdr_timer is not None:
            self._hdr_timer.cancel()
            self._hdr_timer = None

    def _refuse(self, status: int, reason: str, msg: str) -> None:
        t = self.transport  # type: ignore[attr-defined]
        if not t.is_closing():
            log.info("closing connection from %s: %s", (self.client or ("-",))[0], msg)  # type: ignore[attr-defined]
            t.write(_raw_error(status, reason, msg))
            t.close()

    def _header_timeout(self) -> None:
        self._hdr_timer = None
        if not self._awaiting_headers():
            return
        if self._hdr_bytes:  # part of a request came: tell the client why it is cut off
            self._refuse(408, "Request Timeout", f"request headers not received within {self._hdr_timeout:g} s")
        elif not self.transport.is_closing():  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]  # never sent a byte: close quietly

    def data_received(self, data: bytes) -> None:
        waiting = self._awaiting_headers()
        if waiting:
            self._arm_header_timer()  # from the first byte of the next request on a kept-alive connection
            self._hdr_bytes += len(data)
        before = self.cycle  # type: ignore[attr-defined]
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:  # type: ignore[attr-defined]  # a request's headers are complete
            self._disarm_header_timer()
        elif waiting and self._hdr_bytes > self._hdr_max:
            self._disarm_header_timer()
            self._refuse(
                431, "Request Header Fields Too Large", f"request line and headers exceed {self._hdr_max:,} bytes"
            )

    def send_400_response(self, msg: str) -> None:  # malformed HTTP: the JSON error shape too
        self._refuse(400, "Bad Request", f"invalid HTTP request: {msg}")


class GuardedH11Protocol(_SlowClientGuard, H11Protocol):
    pass


class GuardedHttpToolsProtocol(_SlowClientGuard, HttpToolsProtocol):
    pass


#: what ``serve`` runs (httptools is a dependency: uvicorn's fast parser)
GuardedProtocol: type = GuardedHttpToolsProtocol


def uvicorn_kwargs(log_level: str = "info") -> dict:
    """The uvicorn options ``serve`` runs with (tests start their servers with the same)."""
    return dict(
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=60,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        http=GuardedProtocol,
    )


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front, so a port in use or a bad host is one clear error."""
    listen = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise InvalidRequest(
            f"--listen {listen}: cannot resolve host {host!r} ({e})",
            hint="use an IP address such as 127.0.0.1 or 0.0.0.0, or a resolvable host name",
        ) from e
    family, stype, proto, _, addr = infos[0]
    sock = socket.socket(family, stype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise InvalidRequest(f"--listen {listen}: address already in use", hint="pick another --listen port") from e
        if e.errno == errno.EACCES:
            raise InvalidRequest(
                f"--listen {listen}: permission denied",
                hint="ports below 1024 need privileges; pick another --listen port",
            ) from e
        if e.errno == errno.EADDRNOTAVAIL:
            raise InvalidRequest(
                f"--listen {listen}: {host!r} is not an address of this machine",
                hint="use 127.0.0.1, 0.0.0.0 or one of this machine's addresses",
            ) from e
        raise InvalidRequest(
            f"--listen {listen}: cannot listen there ({e.strerror or e})", hint="pick another --listen address or port"
        ) from e
    sock.set_inheritable(True)  # --workers: the worker processes inherit it
    return sock
