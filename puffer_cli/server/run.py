"""Running the server: ``serve()`` binds the socket, then runs uvicorn in this process or
(``--workers N``) its supervisor over N worker processes, each building the app with
:func:`app_from_env` from the config the parent put in the environment."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from dataclasses import asdict

from starlette.applications import Starlette

from puffer_cli import config
from puffer_cli.server import metrics as server_metrics
from puffer_cli.server.app import ServeConfig, create_app
from puffer_cli.server.proto import bind, parse_listen, uvicorn_kwargs
from puffer_cli.store import filecache as cache

log = logging.getLogger("puffer.serve")


ENV_CONFIG = "PUFFER_SERVE_CONFIG"


def apply_env() -> None:
    """The server entry's share of the environment (config.from_env): the cache directory
    (``$PUFFER_CACHE_DIR``); connect() reads the store's own variables."""
    cache.set_default_root(config.from_env().cache_dir)


def app_from_env() -> Starlette:
    """uvicorn factory for ``--workers N``: the config travels in $PUFFER_SERVE_CONFIG."""
    import json

    env = config.from_env()
    setup_logging(env.serve_log_level or "info")
    apply_env()
    return create_app(ServeConfig(**json.loads(env.serve_config or "{}")))


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    log.setLevel(getattr(logging, level.upper(), logging.INFO))


def config_json(cfg: ServeConfig) -> str:
    import json

    return json.dumps(asdict(cfg))


def serve(cfg: ServeConfig, listen: str = "127.0.0.1:8080", workers: int = 1, log_level: str = "info") -> None:
    """Run uvicorn until SIGINT/SIGTERM; in-flight requests (and queued writes) finish first.

    The socket is bound before anything starts: a port in use or an unresolvable host raises
    InvalidRequest (the CLI prints one ``Error:`` line, exit 1)."""
    import uvicorn

    host, port = parse_listen(listen)
    sock = bind(host, port)
    apply_env()
    try:
        _serve(cfg, sock, workers, log_level, uvicorn)
    finally:
        sock.close()


def _serve(cfg: ServeConfig, sock: socket.socket, workers: int, log_level: str, uvicorn) -> None:
    setup_logging(log_level)
    kw = uvicorn_kwargs(log_level)
    if workers > 1:
        _serve_workers(cfg, sock, workers, log_level, uvicorn.Config, kw)
        return
    app = create_app(cfg)
    config = uvicorn.Config(app, **kw)
    server = uvicorn.Server(config)

    async def main():
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            for s in server.servers:
                for sk in s.sockets:
                    h, p = sk.getsockname()[:2]
                    log.info("puffer serve listening on http://%s:%d (store %s)", h, p, app.state.server.db.store.url)
                    print(f"listening on http://{h}:{p}", flush=True)
        await task

    # uvicorn re-raises the signal it shut down on; after a graceful SIGTERM shutdown exit 0 instead
    import signal

    prev = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        asyncio.run(main())
    finally:
        signal.signal(signal.SIGTERM, prev)
    log.info("puffer serve stopped")


def _serve_workers(cfg: ServeConfig, sock: socket.socket, workers: int, log_level: str, config_cls, kw: dict) -> None:
    """``--workers N``: uvicorn's supervisor runs N processes that accept on the one socket, which
    listens before they start (a client connecting early waits in the backlog instead of being
    refused). Their metrics meet in a directory made for this run and removed at exit."""
    from uvicorn.supervisors import Multiprocess

    mdir = server_metrics.create_dir()
    os.environ[server_metrics.ENV_DIR] = mdir  # prometheus_client reads it when a worker imports it
    os.environ[ENV_CONFIG] = config_json(dataclasses.replace(cfg, metrics_dir=mdir))
    os.environ[ENV_CONFIG + "_LOG_LEVEL"] = log_level
    try:
        config = config_cls("puffer_cli.server.run:app_from_env", factory=True, workers=workers, **kw)
        sock.listen(config.backlog)
        h, p = sock.getsockname()[:2]
        log.info("puffer serve listening on http://%s:%d with %d workers", h, p, workers)
        print(f"listening on http://{h}:{p}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            Multiprocess(config, sockets=[sock]).run()
    finally:
        server_metrics.remove_dir(mdir)
        os.environ.pop(server_metrics.ENV_DIR, None)
