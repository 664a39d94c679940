"""What one ranged GET costs on moto, by object size: why cold-query latency on moto tracks file sizes.

    python benchmarks/bench_moto_get.py [--sizes-mb 0.1,1,4,8,16,64,200] [--gets 30] [--no-doc]

One moto ``ThreadedMotoServer`` on loopback in this process (the one ``bench_scale`` cold queries
use); for each size one object of random bytes, then ``--gets`` ranged GETs of 30,000 bytes at
spread offsets through boto3, serially.  Reported: mean ms per GET.  Reference in the same run: the
same ranged reads from a local file of the same size (``os.pread``).

moto keeps each object in a ``SpooledTemporaryFile`` (on disk past about 5 MiB) and serves a ranged
GET by reading the whole object first (``FakeKey.value``), so its cost grows with the object, not
with the range.  Real S3 does not behave so.  Index files over 8 MiB are stored as 8 MiB
parts on object stores (``puffer_cli/index/paged.py``) for this reason.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time

from _common import log, publish, section_head, start_moto

START, END = "<!-- bench_moto_get:start -->", "<!-- bench_moto_get:end -->"
RANGE = 30_000


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", default="0.1,1,4,8,16,64,200")
    ap.add_argument("--gets", type=int, default=30)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    import boto3

    load = os.getloadavg()[0]
    server, endpoint = start_moto()
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    rows = []
    try:
        for mb in (float(x) for x in args.sizes_mb.split(",")):
            n = int(mb * 2**20)
            body = os.urandom(n)
            s3.put_object(Bucket="bench", Key=f"k{mb}", Body=body)
            offs = [(i * 7919 * 4096) % max(1, n - RANGE) for i in range(args.gets)]
            t = time.perf_counter()
            for off in offs:
                s3.get_object(Bucket="bench", Key=f"k{mb}", Range=f"bytes={off}-{off + RANGE - 1}")["Body"].read()
            moto_ms = (time.perf_counter() - t) / args.gets * 1000
            with tempfile.NamedTemporaryFile() as f:
                f.write(body)
                f.flush()
                t = time.perf_counter()
                for off in offs:
                    os.pread(f.fileno(), RANGE, off)
                local_ms = (time.perf_counter() - t) / args.gets * 1000
            s3.delete_object(Bucket="bench", Key=f"k{mb}")
            log(f"{mb} MB: moto {moto_ms:.2f} ms, local {local_ms:.3f} ms")
            rows.append((mb, moto_ms, local_ms))
    finally:
        server.stop()
    command = shlex.join(["python", "benchmarks/bench_moto_get.py", *argv])
    lines = section_head("moto: one ranged GET by object size (`benchmarks/bench_moto_get.py`)", command, ("moto",))
    lines += [
        f"- Load average (1 min) at start: {load:.2f}. {args.gets} serial ranged GETs of {RANGE:,} bytes per size.",
        "",
        "| object MiB | moto ms per GET | local pread ms |",
        "|---:|---:|---:|",
        *(f"| {mb:g} | {m:.2f} | {loc:.3f} |" for mb, m, loc in rows),
        "",
        "moto reads the whole object to serve a range, so its cost grows with the object, not the range.",
        "This is why index files over 8 MiB are written as 8 MiB parts on object stores",
        "(`index/paged.py`): a cold query's GETs each cost what the 8 MiB row shows, and its",
        "latency on moto is set by its request count (bench_scale's cold table).",
        "",
    ]
    publish("\n".join(lines), START, END, write=not args.no_doc)


if __name__ == "__main__":
    main(sys.argv[1:])
