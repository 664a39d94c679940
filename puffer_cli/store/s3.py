"""S3 and S3-compatible servers (AWS, MinIO, moto, SeaweedFS) through s3fs.

Every S3 request goes through ``S3Store._call`` (retries with jittered backoff until a
deadline) and ``S3Store._translate`` (every botocore/aiohttp/s3fs error becomes
FileNotFoundError, a refused precondition, or a typed StoreError).
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
import random
import re
import time
import urllib.parse
import weakref
from typing import Any

from puffer_cli import limits
from puffer_cli.errors import InvalidRequest, PufferError, StoreError
from puffer_cli.store import Store, count_io, current_io

log = logging.getLogger("puffer.store")


class _Precondition(Exception):
    """A conditional PUT was refused (HTTP 412): for create "exists", for cas "stale"."""


class _ShortBody(Exception):
    """A response body shorter (or longer) than asked for or advertised: a transport fault
    (a dropped connection, a proxy that cut the body), retried, never taken for data."""


#: objects above this go up as a multipart upload, in parts of MULTIPART_PART_BYTES, each
#: part retried on its own (a 377 MB single PUT that fails loses the whole upload)
MULTIPART_THRESHOLD = 16 << 20
MULTIPART_PART_BYTES = 8 << 20


class _Transient(Exception):
    """A failure worth retrying; ``error`` is what to raise once the deadline is spent."""

    def __init__(self, error: PufferError, unreachable: bool = False):
        super().__init__(str(error))
        self.error = error
        self.unreachable = unreachable


_RETRY_CODES = {
    "ConditionalRequestConflict",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    "TooManyRequests",
}
_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidSecurity",
}
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


def _check_endpoint(endpoint: str) -> None:
    try:
        u = urllib.parse.urlsplit(endpoint)
        ok = u.scheme in ("http", "https") and bool(u.hostname) and (u.port is None or u.port > 0)
    except ValueError:
        ok = False
    if not ok:
        raise InvalidRequest(
            f"S3 endpoint {endpoint!r} is not a URL",
            hint="pass --s3-endpoint http(s)://host[:port] (or unset PUFFER_S3_ENDPOINT)",
        )


class S3Store(Store):
    """S3 or any S3-compatible server through s3fs. create = If-None-Match: *,
    cas = If-Match: etag. ``conditional_writes_safe`` is established by a probe.

    Every S3 request goes through :meth:`_call`: it retries transient failures
    (409 ConditionalRequestConflict, 5xx, throttling, connection resets, timeouts)
    with jittered exponential backoff until a deadline, and :meth:`_translate` turns
    every botocore/aiohttp/s3fs error into FileNotFoundError, a refused precondition,
    or a typed :class:`StoreError` naming the endpoint and bucket."""

    conditional_writes_safe = False  # until probed
    is_remote = True

    def __init__(self, url: str, endpoint_url: str | None = None, **options):
        """``endpoint_url``: the S3-compatible server (None: AWS; the boundary, config.from_env,
        reads PUFFER_S3_ENDPOINT / AWS_ENDPOINT_URL, never this class)."""
        import s3fs

        rest = url[len("s3://") :]
        if rest.startswith("/") or not rest.strip("/"):
            raise InvalidRequest(f"store URL {url!r} names no bucket", hint="use s3://bucket[/prefix]")
        self.bucket, _, prefix = rest.strip("/").partition("/")
        if not _BUCKET_RE.match(self.bucket):
            raise InvalidRequest(
                f"store URL {url!r}: {self.bucket!r} is not a valid bucket name",
                hint="use s3://bucket[/prefix] with a bucket of letters, digits, '.', '-'",
            )
        self.prefix = prefix.strip("/")
        self.url = url
        if endpoint_url:
            _check_endpoint(endpoint_url)
        self.endpoint = endpoint_url or "AWS S3"
        client_kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
        # botocore and s3fs make one attempt each; _call owns retries (and their deadline)
        config_kwargs: dict = {
            "connect_timeout": limits.S3_CONNECT_TIMEOUT_S,
            "read_timeout": limits.S3_READ_TIMEOUT_S,
            "retries": {"total_max_attempts": 1},
            # SigV4 for every request, presigned URLs included (botocore presigns S3 with
            # SigV2 otherwise, which AWS regions opened since 2014 refuse)
            "signature_version": "s3v4",
        }
        if endpoint_url:
            config_kwargs["s3"] = {"addressing_style": "path"}
        self.fs = s3fs.S3FileSystem(
            use_listings_cache=False,
            skip_instance_cache=True,
            client_kwargs=client_kwargs,
            config_kwargs=config_kwargs,
            **options,
        )
        self.fs.retries = 1  # s3fs's own retry loop (a class attribute); _call retries instead
        self._urls: dict[str, tuple[str, float]] = {}  # key -> (presigned GET URL, reuse until)
        self._session: Any = None  # aiohttp, for the presigned ranged GETs (see _get_range)
        #: whether this server's single-part ETags are the body's MD5 (None: not known yet; see _get_whole)
        self._md5_etags: bool | None = None
        self._mismatch: dict[str, str] = {}  # key -> MD5 of the last body that did not match its ETag

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _p(self, key: str) -> str:
        return f"{self.bucket}/{self._k(key)}"

    # -- the one wrapper ----------------------------------------------------------
    def _call(self, what: str, key: str, make, *, deadline_s: float | None = None, retry_check=None):
        """Run ``make()`` (a coroutine factory: one S3 operation) on s3fs's loop.

        Transient failures are retried with jittered backoff until ``deadline_s``
        (default ``limits.S3_RETRY_DEADLINE_S``; an unreachable endpoint gets
        ``S3_UNREACHABLE_DEADLINE_S``). With ``deadline_s`` each attempt is also cut
        off at the deadline (the probe uses that). ``retry_check()`` runs after a
        refused precondition: True means an earlier attempt of ours landed and only
        its response was lost (we retried, or aiohttp silently re-sent the PUT on a
        keep-alive connection the server had dropped), so the call succeeded.
        Raises FileNotFoundError, _Precondition or a PufferError; never a
        botocore/aiohttp exception."""
        from fsspec.asyn import sync

        start = time.monotonic()
        hard = deadline_s is not None
        deadline = start + (deadline_s if deadline_s is not None else limits.S3_RETRY_DEADLINE_S)
        attempt = 0
        scope = current_io()
        while True:
            t0 = time.perf_counter()  # a retry is a round trip of its own
            try:
                left = deadline - time.monotonic()
                out = sync(self.fs.loop, make, timeout=max(left, 0.01) if hard else None)
                if scope is not None:
                    scope.spans.append((t0, time.perf_counter()))
                return out
            except Exception as e:  # noqa: BLE001 - every failure goes through _translate
                if scope is not None:
                    scope.spans.append((t0, time.perf_counter()))
                err = self._translate(e, what, key)
                if isinstance(err, _Precondition):
                    if retry_check is not None and retry_check():
                        return None  # our earlier attempt landed; its response was lost
                    raise err from None
                if not isinstance(err, _Transient):
                    if err is e:
                        raise
                    raise err from e
                end = deadline if not err.unreachable else min(deadline, start + limits.S3_UNREACHABLE_DEADLINE_S)
                pause = random.uniform(0, min(limits.S3_RETRY_MAX_S, limits.S3_RETRY_BASE_S * 2**attempt))
                if time.monotonic() + pause >= end:
                    final = err.error
                    final.message += f" (gave up after {attempt + 1} attempts in {time.monotonic() - start:.1f} s)"
                    raise final from e
                log.debug("S3 %s %s: retrying after %s", what, key, err)
                time.sleep(pause)
                attempt += 1

    def _translate(self, e: BaseException, what: str, key: str) -> BaseException:
        """One place that maps an s3fs/botocore/aiohttp failure to what store.py raises."""
        import botocore.exceptions as bex

        where = f"bucket {self.bucket!r} at {self.endpoint}"
        chain: builtins.list[BaseException] = []
        x: BaseException | None = e
        while x is not None and len(chain) < 6:
            chain.append(x)
            x = x.__cause__ or x.__context__
        client = next((c for c in chain if isinstance(c, bex.ClientError)), None)
        if client is not None:
            err = client.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(client.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            msg = err.get("Message") or code
            if code == "PreconditionFailed" or status == 412:
                return _Precondition(code)
            if code == "NoSuchBucket":
                return StoreError(
                    f"S3 bucket {self.bucket!r} does not exist at {self.endpoint}",
                    hint=f"create it (e.g. `aws s3 mb s3://{self.bucket}`) or fix --store / --s3-endpoint",
                )
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return FileNotFoundError(key)
            if code in _AUTH_CODES or status in (401, 403):
                return StoreError(
                    f"S3 access denied ({code or status}) to {where} on {what} {key!r}: {msg}",
                    hint="check the AWS credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE) and the bucket policy",
                )
            if code in _RETRY_CODES or status in (409, 429) or status >= 500:
                return _Transient(
                    StoreError(
                        f"S3 {what} {key!r} failed on {where}: {code or status} {msg}",
                        hint="the S3 server is overloaded or failing; retry later",
                    )
                )
            return StoreError(f"S3 {what} {key!r} failed on {where}: {code or status} {msg}")
        if isinstance(e, _ShortBody):
            return _Transient(
                StoreError(
                    f"S3 {what} {key!r} on {where}: {e}",
                    hint="the connection to the S3 server cut a response short; retry later",
                )
            )
        payload: tuple[type[BaseException], ...] = (bex.IncompleteReadError, bex.ResponseStreamingError)
        try:
            import aiohttp

            payload += (aiohttp.ClientPayloadError,)
        except ImportError:  # pragma: no cover
            pass
        if any(isinstance(c, payload) for c in chain):  # the body stopped early: not "cannot reach"
            return _Transient(
                StoreError(
                    f"S3 {what} {key!r} on {where}: the response was cut short ({type(e).__name__}: {e})",
                    hint="the connection to the S3 server cut a response short; retry later",
                )
            )
        if isinstance(e, FileExistsError):
            return _Precondition("exists")
        if isinstance(e, FileNotFoundError):
            return FileNotFoundError(key)
        if isinstance(e, (PufferError, _Precondition)):
            return e
        if any(isinstance(c, (bex.NoCredentialsError, bex.PartialCredentialsError)) for c in chain):
            return StoreError(
                f"no AWS credentials found for {where}",
                hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
            )
        if any(isinstance(c, (asyncio.TimeoutError, asyncio.CancelledError, bex.ReadTimeoutError)) for c in chain):
            return _Transient(
                StoreError(
                    f"S3 {what} {key!r} on {where} got no answer in time",
                    hint="the S3 server is slow or hanging; retry later",
                )
            )
        unreachable = StoreError(
            f"cannot reach the S3 endpoint {self.endpoint} for bucket {self.bucket!r}: "
            f"{type(chain[-1]).__name__}: {chain[-1]}",
            hint="check --s3-endpoint / PUFFER_S3_ENDPOINT and that the server is up",
        )
        try:
            import aiohttp

            net: tuple = (aiohttp.ClientError,)
        except ImportError:  # pragma: no cover
            net = ()
        if any(isinstance(c, (bex.EndpointConnectionError, bex.ConnectTimeoutError)) for c in chain) or any(
            isinstance(c, ConnectionRefusedError) for c in chain
        ):
            return _Transient(unreachable, unreachable=True)
        if any(isinstance(c, (bex.HTTPClientError, bex.ConnectionError, ConnectionError, *net)) for c in chain):
            return _Transient(unreachable)
        if isinstance(e, ValueError) and "endpoint" in str(e).lower():
            return InvalidRequest(
                f"S3 endpoint {self.endpoint!r} is invalid: {e}", hint="pass --s3-endpoint http(s)://host[:port]"
            )
        if isinstance(e, (bex.BotoCoreError, OSError, *net)):
            return StoreError(f"S3 {what} {key!r} failed on {where}: {type(e).__name__}: {e}")
        return e  # a bug in puffer, not a store failure: let it surface as one

    # -- primitives ---------------------------------------------------------------
    async def _get_whole(self, key: str) -> tuple[bytes, str]:
        """GET ``key``: (body, ETag). A body of another length than Content-Length, or one whose
        MD5 is not the ETag, raises _ShortBody (a proxy that re-framed a cut body and dropped
        the checksum headers: only the ETag tells).

        A single-part upload's ETag is the MD5 of its bytes on AWS (unless SSE-KMS / SSE-C),
        moto, MinIO, SeaweedFS, Ceph, R2, GCS; a server whose ETags are something else is
        recognised by the same bytes coming back twice with the same mismatch, before any
        ETag of the store matched; from then on ETags are not checked. Once one matched, a
        mismatch is always a transport fault."""
        resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self._k(key))
        body = resp["Body"]
        try:
            data = await body.read()
        finally:
            body.close()
        want = resp.get("ContentLength")
        if want is not None and len(data) != int(want):
            raise _ShortBody(f"got {len(data)} bytes of {int(want)} (Content-Length)")
        etag = resp.get("ETag", "")
        md5 = _etag_md5(resp) if self._md5_etags is not False else None
        if md5 is not None:
            got = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if got == md5:
                self._md5_etags = True
                self._mismatch.pop(key, None)
            elif self._md5_etags is None and self._mismatch.get(key) == got:
                log.info("S3 at %s: ETags are not MD5s of the bytes (%s); not checked", self.endpoint, key)
                self._md5_etags = False
            else:
                if len(self._mismatch) > 256:
                    self._mismatch.clear()
                self._mismatch[key] = got
                raise _ShortBody(f"got {len(data)} bytes whose MD5 is not the object's ETag {etag}")
        return data, etag

    def read(self, key: str) -> bytes:
        data, _etag = self._call("read", key, lambda: self._get_whole(key))
        count_io(read=len(data))
        return data

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            out = self._call("read", key, lambda: self._get_whole(key))
        except FileNotFoundError:
            out = None
        count_io(read=len(out[0]) if out else 0)
        return out

    def read_range(self, key: str, start: int, end: int) -> bytes:
        data = self._call("read", key, lambda: self._get_range(key, start, end))
        count_io(read=len(data))
        return data

    def read_ranges(self, reqs) -> builtins.list[bytes]:
        """All ranged GETs of the batch from one coroutine on s3fs's loop, at most
        ``limits.RANGE_CONCURRENCY`` in flight (no thread per request: on a 2-core machine
        the threads' hand-offs cost as much as a loopback GET).  A retry re-sends only the
        ranges that have not arrived."""
        if len(reqs) <= 1:
            return [self.read_range(k, a, b) for k, a, b in reqs]
        got: builtins.list[bytes | None] = [None] * len(reqs)

        async def batch() -> None:
            sem = asyncio.Semaphore(limits.RANGE_CONCURRENCY)

            async def one(i: int) -> None:
                k, a, b = reqs[i]
                async with sem:
                    got[i] = await self._get_range(k, a, b)

            res = await asyncio.gather(*(one(i) for i in range(len(reqs)) if got[i] is None), return_exceptions=True)
            for r in res:
                if isinstance(r, BaseException):
                    raise r

        keys = {k for k, _, _ in reqs}
        label = reqs[0][0] if len(keys) == 1 else f"{reqs[0][0]} (and {len(keys) - 1} more objects)"
        self._call("read", label, batch)
        if any(g is None for g in got):  # cancelled under us (loop shutdown): never a silent empty range
            raise StoreError(f"ranged reads of {label} did not complete", hint="retry the request")
        out = [g for g in got if g is not None]
        for g in out:
            count_io(read=len(g))
        return out

    # -- lean ranged GETs -----------------------------------------------------------
    # A cold query's batch is ~100 ranged GETs of immutable index files.  Through
    # botocore each costs ~1.4 ms of client CPU (user agent, endpoint rules, event hooks,
    # response parsing; measured with yappi), more than moto takes to serve it, and a
    # 2-core machine runs both.  So a batch GETs presigned URLs (botocore signs them: one
    # per key, reused for S3_PRESIGN_REUSE_S) with aiohttp directly, ~0.5 ms each.  A
    # server that refuses presigned URLs (400/401/403) turns this off for the store and
    # the GETs go through botocore (which then reports a real access error as usual).
    _presign_ok = True

    async def _get_range(self, key: str, start: int, end: int) -> bytes:
        for fresh in (False, True):  # a refused reused URL (its credentials expired?) is signed again once
            if not self._presign_ok:
                break
            if fresh:
                self._urls.pop(key, None)
            url = await self._presigned(key)
            async with self._http().get(url, headers={"Range": f"bytes={start}-{end - 1}"}) as r:
                body = await r.read()
                status = r.status
                content_range = r.headers.get("Content-Range", "")
                length = r.headers.get("Content-Length")
            if status in (200, 206) and length is not None and length.isdigit() and len(body) != int(length):
                raise _ShortBody(f"got {len(body)} bytes of {length} (Content-Length)")
            if status == 206:
                return _check_range(body, start, end, content_range)
            if status == 200:  # the server ignored the Range header
                return _check_range(body[start:end], start, end, f"bytes {start}-{end - 1}/{len(body)}")
            if status not in (400, 401, 403):
                raise _client_error(status, body)
            if fresh:
                log.info("S3 at %s refused presigned GETs (%s); ranged reads use botocore", self.endpoint, status)
                self._presign_ok = False
        if end <= start:
            return b""
        resp = await self.fs._call_s3(
            "get_object", Bucket=self.bucket, Key=self._k(key), Range=f"bytes={start}-{end - 1}"
        )
        body = resp["Body"]
        try:
            data = await body.read()
        finally:
            body.close()
        return _check_range(data, start, end, resp.get("ContentRange", ""))

    async def _presigned(self, key: str) -> str:
        now = time.monotonic()
        hit = self._urls.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        s3 = await self.fs.get_s3()
        url = await s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._k(key)}, ExpiresIn=limits.S3_PRESIGN_EXPIRES_S
        )
        if len(self._urls) >= 4096:
            self._urls.clear()
        self._urls[key] = (url, now + limits.S3_PRESIGN_REUSE_S)
        return url

    def _http(self):
        """This store's aiohttp session (made on s3fs's loop; closed when the store goes)."""
        import aiohttp

        session = self._session
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limits.RANGE_CONCURRENCY),
                timeout=aiohttp.ClientTimeout(
                    sock_connect=limits.S3_CONNECT_TIMEOUT_S, sock_read=limits.S3_READ_TIMEOUT_S
                ),
                trust_env=True,  # HTTP(S)_PROXY, as botocore
                auto_decompress=False,
            )
            self._session = session
            weakref.finalize(self, _close_session, self.fs.loop, session)
        return session

    def write(self, key: str, data: bytes) -> None:
        if len(data) > MULTIPART_THRESHOLD:
            self._write_parts(key, data)
            return
        self._call("write", key, lambda: self.fs._pipe_file(self._p(key), data))
        count_io(written=len(data))

    def _write_parts(self, key: str, data: bytes) -> None:
        """A multipart upload: each part is one ``_call`` (retried on its own until the
        deadline), so one slow or refused part costs a retry of that part, not the upload.
        The object appears whole on completion or not at all; a failed upload is aborted
        (and an upload a killed process left is aborted by ``abort_stale_uploads``)."""
        k = self._k(key)
        up = self._call("write", key, lambda: self.fs._call_s3("create_multipart_upload", Bucket=self.bucket, Key=k))
        uid = up["UploadId"]
        try:
            parts = []
            for n, a in enumerate(range(0, len(data), MULTIPART_PART_BYTES), start=1):
                chunk = data[a : a + MULTIPART_PART_BYTES]
                got = self._call(
                    f"write (part {n})",
                    key,
                    lambda chunk=chunk, n=n: self.fs._call_s3(
                        "upload_part", Bucket=self.bucket, Key=k, UploadId=uid, PartNumber=n, Body=chunk
                    ),
                )
                count_io(written=len(chunk))
                parts.append({"PartNumber": n, "ETag": got["ETag"]})
            self._call(
                "write",
                key,
                lambda: self.fs._call_s3(
                    "complete_multipart_upload",
                    Bucket=self.bucket,
                    Key=k,
                    UploadId=uid,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException:
            try:
                self._call(
                    "abort",
                    key,
                    lambda: self.fs._call_s3("abort_multipart_upload", Bucket=self.bucket, Key=k, UploadId=uid),
                    deadline_s=5.0,
                )
            except Exception:  # noqa: BLE001 - best effort: GC aborts what is left
                log.warning("S3 multipart upload of %s: abort failed; the next GC aborts it", key)
            raise

    def abort_stale_uploads(self, prefix: str, older_than_s: float) -> int:
        """Abort multipart uploads under ``prefix`` started more than ``older_than_s`` ago
        (left by a killed writer: their parts are billed until aborted)."""
        import datetime

        full = self._k(prefix)
        resp = self._call(
            "list", prefix, lambda: self.fs._call_s3("list_multipart_uploads", Bucket=self.bucket, Prefix=full)
        )
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=older_than_s)
        n = 0
        for u in resp.get("Uploads", []):
            started = u.get("Initiated")
            if started is not None and started.tzinfo is not None and started > cutoff:
                continue
            try:
                self._call(
                    "abort",
                    u["Key"],
                    lambda u=u: self.fs._call_s3(
                        "abort_multipart_upload", Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"]
                    ),
                )
                n += 1
            except (FileNotFoundError, PufferError):
                pass
        return n

    def sweep_temp(self, prefix: str, older_than_s: float) -> int:
        return self.abort_stale_uploads(prefix, older_than_s)

    def _is_ours(self, key: str, data: bytes) -> bool:
        """After a conditional PUT was refused: did an earlier attempt of ours land (its
        response lost)? Then the object holds exactly our bytes. (puffer's creates and
        CAS payloads differ between writers and from what they replace: WAL entries
        carry a nonce, leases a holder and times.)"""
        got = self.read_versioned(key)
        return got is not None and got[0] == data

    def _create(self, key: str, data: bytes, deadline_s: float | None = None) -> bool:
        count_io(written=len(data))
        try:
            self._call(
                "create",
                key,
                lambda: self.fs._pipe_file(self._p(key), data, mode="create"),
                deadline_s=deadline_s,
                retry_check=lambda: self._is_ours(key, data),
            )
            return True
        except _Precondition:
            return False

    def create(self, key: str, data: bytes) -> bool:
        return self._create(key, data)

    def _probe_create(self, key: str, data: bytes) -> bool:
        return self._create(key, data, deadline_s=limits.S3_PROBE_TIMEOUT_S)

    def cas(self, key: str, data: bytes, version: str | None) -> bool:
        if version is None:
            return self.create(key, data)
        count_io(written=len(data))
        try:
            self._call(
                "cas",
                key,
                lambda: self.fs._pipe_file(self._p(key), data, IfMatch=version),
                retry_check=lambda: self._is_ours(key, data),
            )
            return True
        except (_Precondition, FileNotFoundError):  # stale version, or the object is gone
            return False

    def list(self, prefix: str, start_after: str | None = None) -> list[str]:
        full_prefix = self._k(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0

        async def go():
            out: builtins.list[str] = []
            token = None
            while True:
                kw = {"Bucket": self.bucket, "Prefix": full_prefix}
                if start_after is not None:
                    kw["StartAfter"] = self._k(start_after)
                if token:
                    kw["ContinuationToken"] = token
                resp = await self.fs._call_s3("list_objects_v2", **kw)
                count_io()
                out.extend(o["Key"][strip:] for o in resp.get("Contents", []))
                if not resp.get("IsTruncated"):
                    return out
                token = resp["NextContinuationToken"]

        return sorted(self._call("list", prefix, go))

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        full_prefix = self._k(prefix) if prefix else (self.prefix + "/" if self.prefix else "")

        async def go():
            out: builtins.list[str] = []
            token = None
            while True:
                kw = {"Bucket": self.bucket, "Prefix": full_prefix, "Delimiter": "/"}
                if token:
                    kw["ContinuationToken"] = token
                resp = await self.fs._call_s3("list_objects_v2", **kw)
                count_io()
                out.extend(p["Prefix"][len(full_prefix) :].rstrip("/") for p in resp.get("CommonPrefixes", []))
                if not resp.get("IsTruncated"):
                    return out
                token = resp["NextContinuationToken"]

        return sorted(self._call("list", prefix, go))

    def delete(self, key: str) -> None:
        count_io()
        self._call("delete", key, lambda: self.fs._rm_file(self._p(key)))

    def size(self, key: str) -> int:
        count_io()

        async def head() -> int:
            resp = await self.fs._call_s3("head_object", Bucket=self.bucket, Key=self._k(key))
            n = resp.get("ContentLength")
            if n is None:  # a proxy or server that dropped the header: a transport fault
                raise _ShortBody("HEAD answered without Content-Length")
            return int(n)

        return self._call("stat", key, head)


def _etag_md5(resp: dict) -> str | None:
    """The MD5 (hex) an S3 GET response's ETag promises, or None: a multipart ETag (``-N``),
    SSE-KMS or SSE-C (AWS: not an MD5), or no ETag."""
    etag = str(resp.get("ETag") or "").strip('"').lower()
    if not re.fullmatch(r"[0-9a-f]{32}", etag):
        return None
    if resp.get("SSECustomerAlgorithm") or str(resp.get("ServerSideEncryption") or "").startswith("aws:kms"):
        return None
    return etag


def _check_range(body: bytes, start: int, end: int, content_range: str) -> bytes:
    """``body`` if it is all of ``[start, end)`` (or all of it up to the object's end, which
    ``Content-Range: bytes a-b/total`` gives); else _ShortBody."""
    want = end - start
    m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range or "")
    if m and m.group(3) != "*":
        want = max(0, min(end, int(m.group(3))) - start)
    if len(body) != want:
        raise _ShortBody(f"got {len(body)} bytes of the {want} asked for (bytes {start}-{end - 1})")
    return body


def _client_error(status: int, body: bytes):
    """A failed presigned GET as the botocore ClientError ``_translate`` maps (the S3 error
    XML's Code and Message)."""
    from botocore.exceptions import ClientError

    text = body[:4096].decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]*)</Code>", text)
    msg = re.search(r"<Message>([^<]*)</Message>", text)
    return ClientError(
        {
            "Error": {"Code": code.group(1) if code else str(status), "Message": msg.group(1) if msg else text[:200]},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "GetObject",
    )


def _close_session(loop, session) -> None:
    """Close a store's aiohttp session on s3fs's loop (as s3fs closes its client)."""
    from fsspec.asyn import sync

    if session.closed:
        return
    if loop is not None and loop.is_running():
        try:
            sync(loop, session.close, timeout=1)
            return
        except Exception:  # noqa: BLE001 - shutting down: the sockets go with the process
            pass
    connector = getattr(session, "_connector", None)
    if connector is not None:
        try:
            connector._close()
        except Exception:  # noqa: BLE001
            pass
        session._connector = None
