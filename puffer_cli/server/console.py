"""``/console``: a read-only web console over the library, served by ``puffer serve``.

Server-rendered HTML (no build step, no script, no CDN): every page is built here with
:func:`h` escaping each value that came from the store or the request, text and attribute
values alike; the style sheet is package data (``console.css``). Pages::

    GET  /console                  namespaces: rows, index generation, covers_through_seq, unindexed WAL
    GET  /console/ns/{ns}          a namespace: overview, index, schema; a query form and its results
                                   (?rank=...), WAL verify (?verify=1) and recall (?recall=1) on demand
    POST /console/login            the API key (form field ``key``) -> a session cookie
    POST /console/logout           drops the cookie
    GET  /console/static/console.css

Auth (docs/console.md): with ``--api-key`` set, a page needs ``Authorization: Bearer KEY``
(as the JSON API) or the session cookie the login form sets: ``EXPIRY.HMAC-SHA256(key, EXPIRY)``,
HttpOnly, SameSite=Strict, path /console, 12 hours. The key itself is never stored in the
browser, any server process with the same key accepts the cookie, and changing the key
ends every session. Without the key a page answers 401 with the login form. Without
``--api-key`` the console is as open as the API.

The console only reads: queries, recall and WAL verification run through the same library
calls (and the same query slots and time budget) as the JSON API; nothing here writes.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import importlib.resources
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from puffer_cli.db import DB, NamespaceHandle, QueryResponse
from puffer_cli.errors import InvalidRequest, PufferError, with_hint
from puffer_cli.jobs import walinspect
from puffer_cli.schema import types
from puffer_cli.server.http import ServeConfig, hide_paths, http_hint, indexed_seq, iso_ms, schema_out

log = logging.getLogger("puffer.serve")

COOKIE = "puffer_console"
SESSION_S = 12 * 3600
PAGE_SIZE = 50  # namespaces per page of the list
MAX_TOP_K = 1000  # rows one page shows
CELL_CHARS = 160  # a longer value is cut (the whole value in the cell's title, up to TITLE_CHARS)
TITLE_CHARS = 2000
VECTOR_SHOWN = 4  # leading components of a vector shown in a cell
HTML = "text/html; charset=utf-8"
HEADERS = {
    # no script at all, styles from our own sheet, forms only to ourselves, never framed
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",  # query strings (filters, search text) stay here
    "cache-control": "no-store",
}


class ConsoleServer(Protocol):
    """What the console needs of :class:`puffer_cli.server.app.Server`."""

    cfg: ServeConfig
    db: DB
    redact: tuple[str, ...]
    query_limiter: Any

    async def run(self, fn: Callable, *args, limiter=None, **kw) -> Any: ...
    async def run_query(self, fn: Callable, *args, what: str = "query", **kw) -> Any: ...
    async def body(self, request: Request) -> bytes | bytearray: ...
    def release(self, request: Request) -> None: ...
    def finish(self, request: Request, route: str, status: int, t0: float) -> None: ...
    def ns(self, name: str) -> Any: ...
    def _metadata(self, ns) -> dict: ...


def h(value: Any) -> str:
    """``value`` as HTML text, safe in element content and in a quoted attribute value."""
    return html.escape(str(value), quote=True)


# ------------------------------------------------------------------ sessions
def session_token(key: str, expires: int) -> str:
    mac = hmac.new(key.encode(), f"puffer-console-session:{expires}".encode(), hashlib.sha256).hexdigest()
    return f"{expires}.{mac}"


def session_ok(key: str, token: str, now: float | None = None) -> bool:
    exp, _, _mac = token.partition(".")
    if not exp.isdigit() or int(exp) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(session_token(key, int(exp)).encode(), token.encode())


def bearer_ok(key: str, header: str) -> bool:
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def safe_next(path: str | None, base: str) -> str:
    """Where to go after logging in: a console path of this server, nothing else (no open redirect)."""
    if not path or not path.startswith(base) or path.startswith("//") or "\\" in path:
        return base
    return path


# ------------------------------------------------------------------ formatting
def error_text(e: PufferError, redact: Iterable[str]) -> str:
    """The one line the JSON API would answer (no server path, no CLI-only hint)."""
    return hide_paths(with_hint(e.message, http_hint(e.hint)), list(redact))


def cell(v: Any) -> str:
    """One value of a result row as table-cell HTML."""
    if isinstance(v, Markup):
        return v
    if v is None:
        return '<span class="muted">null</span>'
    if isinstance(v, float):
        return h(f"{v:.6g}")
    if isinstance(v, (list, tuple)) and len(v) > VECTOR_SHOWN and all(isinstance(x, float) for x in v):
        head = ", ".join(f"{x:.4g}" for x in v[:VECTOR_SHOWN])
        return f'<span class="vec">[{h(head)}, …]</span> <span class="muted">({len(v)} dims)</span>'
    text = v if isinstance(v, str) else repr(v) if isinstance(v, bytes) else _json(v)
    if len(text) > CELL_CHARS:
        return f'<span title="{h(text[:TITLE_CHARS])}">{h(text[:CELL_CHARS])}…</span>'
    return h(text)


def _json(v: Any) -> str:
    import json

    try:
        return json.dumps(v, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(v)


class Markup(str):
    """HTML built (and escaped) here: :func:`cell` puts it in as it is."""


def when(iso: str) -> Markup:
    """An ISO timestamp (``iso_ms``) as a ``<time>``: ``2026-01-02 03:04:05 UTC``."""
    short = iso[:19].replace("T", " ") + " UTC" if len(iso) >= 19 else iso
    return Markup(f'<time datetime="{h(iso)}">{h(short)}</time>')


def dl(pairs: Iterable[tuple[str, Any]], cls: str = "facts") -> str:
    """A description list of (label, value) pairs, each value shown as :func:`cell` shows it."""
    items = "".join(f"<div><dt>{h(k)}</dt><dd>{cell(v)}</dd></div>" for k, v in pairs)
    return f'<dl class="{h(cls)}">{items}</dl>'


def table(caption: str, head: list[str], rows: Iterable[list[str]], label: str, numeric: Iterable[int] = ()) -> str:
    """A table in a scrollable region (keyboard-focusable: a narrow screen scrolls it sideways).
    ``head`` is text; ``rows`` hold cell HTML (already escaped)."""
    num = set(numeric)
    ths = "".join(f'<th scope="col"{" class=num" if i in num else ""}>{h(c)}</th>' for i, c in enumerate(head))
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if i in num else ''}>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return (
        f'<div class="scroll" role="region" aria-label="{h(label)}" tabindex="0">'
        f"<table><caption>{h(caption)}</caption><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table></div>"
    )


def alert(msg: str) -> str:
    return f'<p class="error" role="alert"><strong>Error:</strong> {h(msg)}</p>'


PERF_LABELS = {
    "object_store_requests": "object store requests",
    "object_store_round_trips": "object store round trips",
    "object_store_bytes_read": "object store bytes read",
    "cache_temperature": "cache temperature",
    "cache_hit_ratio": "cache hit ratio",
    "query_execution_ms": "query execution (ms)",
    "server_total_ms": "server total (ms)",
    "approx_namespace_size": "rows in namespace (approx.)",
    "exhaustive_search_count": "rows scored exactly",
}


# ------------------------------------------------------------------ the console
class Console:
    def __init__(self, server: ConsoleServer):
        self.s = server
        self._css = importlib.resources.files("puffer_cli.server").joinpath("console.css").read_bytes()

    def routes(self) -> list[Route]:
        page = self.page
        return [
            Route("/console", page(self.home), methods=["GET"]),
            Route("/console/ns/{ns}", page(self.namespace), methods=["GET"]),
            Route("/console/login", page(self.login, auth=False), methods=["POST"]),
            Route("/console/logout", page(self.logout, auth=False), methods=["POST"]),
            Route("/console/static/console.css", page(self.css, auth=False), methods=["GET"]),
        ]

    # -- plumbing
    def base(self, request: Request) -> str:
        return request.scope.get("root_path", "") + "/console"

    def authed(self, request: Request) -> bool:
        key = self.s.cfg.api_key
        if not key:
            return True
        if bearer_ok(key, request.headers.get("authorization", "")):
            return True
        return session_ok(key, request.cookies.get(COOKIE, ""))

    def page(self, fn: Callable[[Request], Awaitable[Response]], *, auth: bool = True):
        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            try:
                if auth and not self.authed(request):
                    nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                    resp = self.login_page(request, nxt, status=401)
                else:
                    resp = await fn(request)
            except PufferError as e:
                resp = self.html(request, "Error", alert(error_text(e, self.s.redact)), status=e.status)
            except Exception as e:  # noqa: BLE001 - a bug: logged with its trace, shown as one line
                log.error("internal error on %s %s", request.method, request.url.path, exc_info=e)
                msg = hide_paths(f"internal error: {type(e).__name__}: {e}", self.s.redact)
                resp = self.html(request, "Error", alert(msg), status=500)
            finally:
                self.s.release(request)
            resp.headers.update(HEADERS)
            self.s.finish(request, "console", resp.status_code, t0)
            return resp

        return endpoint

    def html(self, request: Request, title: str, main: str, *, status: int = 200, crumbs: str = "") -> Response:
        base = self.base(request)
        logout = ""
        if self.s.cfg.api_key and self.authed(request) and request.cookies.get(COOKIE):
            logout = f'<form method="post" action="{h(base)}/logout"><button type="submit">Log out</button></form>'
        doc = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{h(title)} · puffer console</title>"
            '<link rel="icon" href="data:,">'
            f'<link rel="stylesheet" href="{h(base)}/static/console.css"></head><body>'
            '<a class="skip" href="#main">Skip to content</a>'
            f'<header><nav aria-label="Breadcrumb"><a href="{h(base)}">puffer console</a>{crumbs}</nav>'
            f"{logout}</header>"
            f'<main id="main" tabindex="-1">{main}</main></body></html>'
        )
        return Response(doc, status, media_type=HTML)

    # -- auth pages
    def login_page(self, request: Request, nxt: str, *, status: int = 401, error: str = "") -> Response:
        base = self.base(request)
        main = (
            "<h1>Log in</h1>"
            "<p>This server needs its API key (what <code>puffer serve --api-key</code> was given).</p>"
            + (alert(error) if error else "")
            + f'<form method="post" action="{h(base)}/login" class="stack">'
            f'<input type="hidden" name="next" value="{h(nxt)}">'
            '<label for="key">API key</label>'
            '<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>'
            '<button type="submit">Log in</button></form>'
        )
        return self.html(request, "Log in", main, status=status)

    async def login(self, request: Request) -> Response:
        base = self.base(request)
        raw = await self.s.body(request)
        form = urllib.parse.parse_qs(bytes(raw).decode("utf-8", "replace"), max_num_fields=10)
        got = (form.get("key") or [""])[0]
        nxt = safe_next((form.get("next") or [""])[0], base)
        key = self.s.cfg.api_key
        if key and not hmac.compare_digest(got.strip().encode(), key.encode()):
            return self.login_page(request, nxt, error="invalid API key")
        resp = Response(b"", 303, headers={"location": nxt})
        if key:
            exp = int(time.time()) + SESSION_S
            resp.set_cookie(
                COOKIE,
                session_token(key, exp),
                max_age=SESSION_S,
                path=base,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return resp

    async def logout(self, request: Request) -> Response:
        base = self.base(request)
        resp = Response(b"", 303, headers={"location": base})
        resp.delete_cookie(COOKIE, path=base, httponly=True, samesite="strict")
        return resp

    async def css(self, request: Request) -> Response:
        return Response(self._css, 200, media_type="text/css; charset=utf-8")

    # -- the namespace list
    def summary(self, name: str) -> dict[str, Any]:
        """One row of the list: the API's metadata numbers plus the index pointer."""
        ns = self.s.db.open_namespace(name)  # not self.s.ns(): listing must not churn the hot set
        try:
            md = self.s._metadata(ns)
            meta, _ = ns.read_meta()
        except PufferError as e:
            return {"name": name, "error": error_text(e, self.s.redact)}
        idx = (meta or {}).get("index") or {}
        return {
            "name": name,
            "rows": md["approx_row_count"],
            "last_seq": md["last_seq"],
            "generation": idx.get("generation"),
            "covers": indexed_seq(meta),
            "unindexed": max(0, md["last_seq"] - indexed_seq(meta)),
            "updated": md["updated_at"],
        }

    def listing(self, prefix: str | None, cursor: str | None) -> tuple[list[dict], str | None]:
        names, nxt = self.s.db.namespaces_page(prefix, cursor, PAGE_SIZE)
        if len(names) < 2:
            return [self.summary(n) for n in names], nxt
        with ThreadPoolExecutor(min(8, len(names))) as ex:
            return list(ex.map(self.summary, names)), nxt

    async def home(self, request: Request) -> Response:
        base = self.base(request)
        q = request.query_params
        prefix, cursor = q.get("prefix") or None, q.get("cursor") or None
        found, nxt = await self.s.run(self.listing, prefix, cursor)
        rows = []
        for r in found:
            link = f'<a href="{h(base)}/ns/{h(urllib.parse.quote(r["name"], safe=""))}">{h(r["name"])}</a>'
            if "error" in r:
                rows.append([link, f'<span class="error-text">{h(r["error"])}</span>', "", "", "", "", ""])
                continue
            gen = h(r["generation"]) if r["generation"] is not None else '<span class="muted">none</span>'
            unindexed = h(r["unindexed"]) if r["unindexed"] else '<span class="ok">0</span>'
            rows.append(
                [link, h(f"{r['rows']:,}"), h(r["last_seq"]), gen, h(r["covers"]), unindexed, when(r["updated"])]
            )
        head = ["Namespace", "Rows (approx.)", "Last seq", "Index generation", "Covers through seq"]
        head += ["Unindexed WAL entries", "Updated"]
        what = f"{len(found)} namespace{'' if len(found) == 1 else 's'}" + (
            f" starting with {prefix!r}" if prefix else ""
        )
        main = (
            "<h1>Namespaces</h1>"
            f'<form method="get" action="{h(base)}" class="inline" role="search">'
            '<label for="prefix">Name prefix</label>'
            f'<input id="prefix" name="prefix" value="{h(prefix or "")}" autocomplete="off">'
            '<button type="submit">Filter</button></form>'
        )
        if found:
            main += table(what, head, rows, "Namespaces", numeric=(1, 2, 3, 4, 5))
        else:
            main += f"<p>No namespaces{h(' starting with ' + repr(prefix)) if prefix else ''} yet.</p>"
        if nxt:
            more = urllib.parse.urlencode({k: v for k, v in (("prefix", prefix), ("cursor", nxt)) if v})
            main += f'<p><a href="{h(base)}?{h(more)}" rel="next">Next page</a></p>'
        return self.html(request, "Namespaces", main)

    # -- a namespace
    async def namespace(self, request: Request) -> Response:
        base = self.base(request)
        name = request.path_params["ns"]
        ns = self.s.ns(name)  # validates the name (400)
        handle = NamespaceHandle(ns)
        md = await self.s.run(self.s._metadata, ns)  # 404 for a namespace that does not exist
        meta, _ = await self.s.run(ns.read_meta)
        schema = await self.s.run(handle.schema)
        q = request.query_params
        status = 200
        parts = [f"<h1>{h(name)}</h1>", self.overview(md, meta)]
        parts.append(self.schema_section(schema))
        qhtml, qstatus = await self.query_section(request, handle, schema)
        parts.append(qhtml)
        status = max(status, qstatus)
        parts.append(await self.verify_section(request, ns, q.get("verify") == "1"))
        parts.append(await self.recall_section(request, handle, schema))
        crumbs = (
            f' <span aria-hidden="true">/</span> <a href="{h(base)}/ns/{h(name)}" aria-current="page">{h(name)}</a>'
        )
        return self.html(request, name, "".join(parts), status=status, crumbs=crumbs)

    def overview(self, md: dict, meta: dict | None) -> str:
        idx = (meta or {}).get("index") or {}
        covers = indexed_seq(meta)
        unindexed = max(0, md["last_seq"] - covers)
        pending = md.get("index") or {}
        out = '<section aria-labelledby="h-overview"><h2 id="h-overview">Overview</h2>'
        out += dl(
            [
                ("rows (approx.)", f"{md['approx_row_count']:,}"),
                ("logical bytes (approx.)", f"{md['approx_logical_bytes']:,}"),
                ("distance metric", md.get("distance_metric") or "—"),
                ("last WAL seq", md["last_seq"]),
                ("created", when(md["created_at"])),
                ("updated", when(md["updated_at"])),
            ]
        )
        out += '</section><section aria-labelledby="h-index"><h2 id="h-index">Index</h2>'
        if not idx:
            out += "<p>No index built yet: queries score every row exactly (<code>puffer index</code> builds one).</p>"
        facts: list[tuple[str, Any]] = []
        if idx:
            facts += [
                ("generation", idx.get("generation")),
                ("covers through seq", covers),
                ("indexed rows", f"{idx['rows']:,}" if isinstance(idx.get("rows"), int) else "—"),
                ("segments", idx.get("segments")),
                ("published", when(iso_ms(idx["published_at"])) if isinstance(idx.get("published_at"), int) else "—"),
            ]
        facts += [
            ("status", pending.get("status", "—")),
            ("unindexed WAL entries", unindexed),
        ]
        if "unindexed_rows" in pending:
            facts += [
                ("unindexed rows (approx.)", f"{pending['unindexed_rows']:,}"),
                ("unindexed bytes", f"{pending['unindexed_bytes']:,}"),
            ]
        return out + dl(facts) + "</section>"

    def schema_section(self, schema: dict) -> str:
        rows = []
        for attr, spec in schema_out(schema).items():
            fts = spec.get("full_text_search")
            rows.append(
                [
                    f"<code>{h(attr)}</code>",
                    f"<code>{h(spec['type'])}</code>",
                    "yes" if spec.get("filterable") else "no",
                    "yes" if fts else "no",
                    "yes" if spec.get("ann") else "—",
                ]
            )
        head = ["Attribute", "Type", "Filterable", "Full-text search", "Vector index"]
        return (
            '<section aria-labelledby="h-schema"><h2 id="h-schema">Schema</h2>'
            + table(f"{len(rows)} attributes", head, rows, "Schema")
            + "</section>"
        )

    # -- the query box
    async def query_section(self, request: Request, handle: NamespaceHandle, schema: dict) -> tuple[str, int]:
        q = request.query_params
        vectors = [a for a, s in schema.items() if types.is_vector(s["type"])]
        texts = [a for a, s in schema.items() if s.get("full_text_search")]
        rank = q.get("rank") or ("vector" if vectors else "bm25" if texts else "id")
        form = self.query_form(request, handle.name, q, rank, vectors, texts)
        out = f'<section aria-labelledby="h-query"><h2 id="h-query">Query</h2>{form}'
        if "rank" not in q:
            return out + "</section>", 200
        status = 200
        try:
            res, what = await self.s.run_query(self.run_query, handle, schema, q, vectors, texts)
            out += self.results(res, what, schema)
        except PufferError as e:
            out += f'<div id="results">{alert(error_text(e, self.s.redact))}</div>'
            status = e.status
        return out + "</section>", status

    def query_form(self, request, name: str, q, rank: str, vectors: list[str], texts: list[str]) -> str:
        action = f"{self.base(request)}/ns/{urllib.parse.quote(name, safe='')}#results"

        def select(id_: str, label: str, opts: list[tuple[str, str]], cur: str) -> str:
            o = "".join(f'<option value="{h(v)}"{" selected" if v == cur else ""}>{h(t)}</option>' for v, t in opts)
            return (
                f'<div class="field"><label for="{id_}">{h(label)}</label>'
                f'<select id="{id_}" name="{id_}">{o}</select></div>'
            )

        def text(id_: str, label: str, value: str, hint: str = "", kind: str = "text", extra: str = "") -> str:
            desc = f' aria-describedby="{id_}-hint"' if hint else ""
            hint_html = f'<small id="{id_}-hint">{hint}</small>' if hint else ""
            return (
                f'<div class="field"><label for="{id_}">{h(label)}</label>'
                f'<input id="{id_}" name="{id_}" type="{kind}" value="{h(value)}"{desc}{extra} autocomplete="off">'
                f"{hint_html}</div>"
            )

        ranks = [("vector", "Vector: nearest to a row"), ("bm25", "Full text (BM25)"), ("id", "Id order (filter only)")]
        parts = [select("rank", "Rank by", ranks, rank)]
        if vectors:
            parts.append(
                "<fieldset><legend>Vector search</legend>"
                + (select("vfield", "Vector attribute", [(v, v) for v in vectors], q.get("vfield") or vectors[0]))
                + text("row_id", "Row id", q.get("row_id", ""), "the query vector is this row's vector")
                + "</fieldset>"
            )
        if texts:
            parts.append(
                "<fieldset><legend>Full-text search</legend>"
                + select("field", "Text attribute", [(t, t) for t in texts], q.get("field") or texts[0])
                + text("text", "Search text", q.get("text", ""))
                + "</fieldset>"
            )
        parts.append(
            text(
                "where",
                "Filter (SQL WHERE)",
                q.get("where", ""),
                "e.g. <code>lang = 'en' AND n &gt;= 5</code>, <code>title LIKE 'a%'</code>, "
                "<code>'x' = ANY(tags)</code>; empty: no filter",
                extra=' class="wide" spellcheck="false"',
            )
        )
        parts.append(
            text(
                "top_k",
                "Top k",
                q.get("top_k", "10"),
                kind="number",
                extra=f' min="1" max="{MAX_TOP_K}" inputmode="numeric"',
            )
        )
        fields = "".join(parts)
        button = '<button type="submit">Run query</button>'
        return f'<form method="get" action="{h(action)}" class="query">{fields}{button}</form>'

    def run_query(
        self, handle: NamespaceHandle, schema: dict, q: Mapping[str, str], vectors: list[str], texts: list[str]
    ) -> tuple[QueryResponse, str]:
        """The form's query through the library (``NamespaceHandle.query(where=...)``)."""
        rank = q.get("rank", "id")
        top_k_text = (q.get("top_k") or "10").strip()
        try:
            top_k = int(top_k_text)
        except ValueError:
            raise InvalidRequest(f"top k must be a whole number, got {top_k_text[:40]!r}") from None
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidRequest(f"top k must be between 1 and {MAX_TOP_K} here")
        where = (q.get("where") or "").strip() or None
        shown = [a for a, s in schema.items() if a != "id" and not types.is_vector(s["type"])]
        if rank == "vector":
            field = q.get("vfield") or (vectors[0] if vectors else "vector")
            if field not in vectors:
                raise InvalidRequest(f"{field!r} is not a vector attribute of this namespace")
            rid = self.row_id(q.get("row_id", ""), schema)
            src = handle.query(filters=["id", "Eq", rid], include_attributes=[field], top_k=1)
            if not src.rows:
                raise InvalidRequest(f"no row with id {rid!r}", hint="pick an id from the results of an id-order query")
            vec = src.rows[0].get(field)
            if vec is None:
                raise InvalidRequest(f"row {rid!r} has no {field}")
            rank_by: Any = [field, "ANN", [float(x) for x in vec]]
            what = f"nearest {top_k} to row {rid!r} by {field}"
        elif rank == "bm25":
            field = q.get("field") or (texts[0] if texts else "")
            if field not in texts:
                raise InvalidRequest(f"{field!r} is not a full-text search attribute of this namespace")
            words = (q.get("text") or "").strip()
            if not words:
                raise InvalidRequest("type some search text for a BM25 query")
            rank_by = [field, "BM25", words]
            what = f"top {top_k} by BM25 on {field} for {words!r}"
        elif rank == "id":
            rank_by = ["id", "asc"]
            what = f"first {top_k} by id"
        else:
            raise InvalidRequest(f"unknown ranking {rank[:40]!r}")
        if where:
            what += f" where {where}"
        res = handle.query(rank_by=rank_by, top_k=top_k, where=where, include_attributes=shown or None)
        return res, what

    @staticmethod
    def row_id(text: str, schema: dict) -> Any:
        text = text.strip()
        if not text:
            raise InvalidRequest("type the id of a row whose vector to search with")
        if schema.get("id", {}).get("type") in ("uint", "int"):
            try:
                return int(text)
            except ValueError:
                raise InvalidRequest(f"ids of this namespace are integers, got {text[:40]!r}") from None
        return text

    def results(self, res: QueryResponse, what: str, schema: dict) -> str:
        rows = res.rows
        cols: list[str] = []
        for r in rows:
            cols += [c for c in r if c not in cols]
        cols = [c for c in ("id", "$dist") if c in cols] + [c for c in cols if c not in ("id", "$dist")]
        body = [[cell(r.get(c)) for c in cols] for r in rows]
        numeric = [i for i, c in enumerate(cols) if c == "$dist"]
        caption = f"{len(rows)} row{'' if len(rows) == 1 else 's'}: {what}"
        out = '<div id="results" tabindex="-1"><h3>Results</h3>'
        out += table(caption, cols, body, "Query results", numeric) if rows else f"<p>No rows: {h(what)}.</p>"
        perf = res.performance
        known = [k for k in PERF_LABELS if k in perf] + [k for k in perf if k not in PERF_LABELS]
        out += '<h3 id="h-perf">Performance</h3>' + dl(
            [(PERF_LABELS.get(k) or k, perf[k]) for k in known], "facts perf"
        )
        return out + "</div>"

    # -- WAL verify and recall, on demand
    async def verify_section(self, request: Request, ns, run: bool) -> str:
        action = f"{self.base(request)}/ns/{urllib.parse.quote(ns.name, safe='')}#wal"
        out = (
            '<section aria-labelledby="h-wal"><h2 id="h-wal">WAL health</h2>'
            "<p>Reads every WAL entry as a reader would (framing, checksums, seq chain): "
            "the same check as <code>puffer wal-inspect --verify</code>.</p>"
            f'<form method="get" action="{h(action)}"><input type="hidden" name="verify" value="1">'
            '<button type="submit">Verify WAL</button></form><div id="wal" tabindex="-1">'
        )
        if run:
            try:
                rows = await self.s.run(walinspect.inspect, ns, limiter=self.s.query_limiter)
            except PufferError as e:
                return out + alert(error_text(e, self.s.redact)) + "</div></section>"
            bad = [r for r in rows if not r["ok"]]
            if not bad:
                out += f'<p class="ok" role="status">All {len(rows):,} WAL entries are readable.</p>'
            else:
                out += (
                    f'<p class="error" role="alert">{len(bad):,} of {len(rows):,} WAL entries are damaged or missing '
                    "(<code>puffer wal-inspect NAMESPACE --repair</code> salvages them).</p>"
                )
                body = [[h(r["seq"]), h(r["kind"] or ""), h(hide_paths(str(r["problem"]), self.s.redact))] for r in bad]
                out += table("Damaged or missing WAL entries", ["Seq", "Kind", "Problem"], body, "WAL problems", (0,))
        return out + "</div></section>"

    async def recall_section(self, request: Request, handle: NamespaceHandle, schema: dict) -> str:
        q = request.query_params
        if not any(types.is_vector(s["type"]) for s in schema.values()):
            return ""
        action = f"{self.base(request)}/ns/{urllib.parse.quote(handle.name, safe='')}#recall"
        num, top_k = q.get("num", "25"), q.get("recall_k", "10")
        out = (
            '<section aria-labelledby="h-recall"><h2 id="h-recall">Recall</h2>'
            "<p>The index's answers against exhaustive search on sampled rows' vectors "
            "(<code>puffer recall</code>).</p>"
            f'<form method="get" action="{h(action)}" class="inline"><input type="hidden" name="recall" value="1">'
            '<label for="num">Queries</label>'
            f'<input id="num" name="num" type="number" min="1" max="1000" value="{h(num)}">'
            '<label for="recall_k">Top k</label>'
            f'<input id="recall_k" name="recall_k" type="number" min="1" max="{MAX_TOP_K}" value="{h(top_k)}">'
            '<button type="submit">Measure recall</button></form><div id="recall" tabindex="-1">'
        )
        if q.get("recall") == "1":
            try:
                try:
                    n, k = int(num), int(top_k)
                except ValueError:
                    raise InvalidRequest("queries and top k must be whole numbers") from None
                if not (1 <= n <= 1000 and 1 <= k <= MAX_TOP_K):
                    raise InvalidRequest(f"queries must be 1 to 1000 and top k 1 to {MAX_TOP_K}")
                r = await self.s.run_query(handle.recall, num=n, top_k=k, what="recall evaluation")
            except PufferError as e:
                return out + alert(error_text(e, self.s.redact)) + "</div></section>"
            out += dl(
                [
                    (
                        "recall",
                        f"{r['avg_recall']:.4f}" if isinstance(r.get("avg_recall"), float) else r.get("avg_recall"),
                    ),
                    ("vector attribute", r.get("field")),
                    ("queries", r.get("num")),
                    ("top k", r.get("top_k")),
                    ("avg. results (index)", r.get("avg_ann_count")),
                    ("avg. results (exhaustive)", r.get("avg_exhaustive_count")),
                    ("p50 index ms", r.get("p50_ann_ms")),
                    ("p50 exhaustive ms", r.get("p50_exhaustive_ms")),
                ]
            )
        return out + "</div></section>"


def routes(server: ConsoleServer) -> list[Route]:
    """The console's routes, for ``Server.app()``."""
    return Console(server).routes()
