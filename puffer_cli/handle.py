"""The namespace object ``db.namespace(name)`` returns: the library's one handle on a namespace.

It is the low-level :class:`puffer_cli.wal.namespace.Namespace` (the commit protocol, which the
server and the jobs use) plus the jobs a user reaches for: query, ingest, export, index,
warm, recall. It lives in the jobs layer because ``query`` and ``index`` sit above the
namespace's own layer (docs/development.md "Layers").

>>> import puffer_cli
>>> db = puffer_cli.connect("memory://handle-demo")
>>> ns = db.namespace("docs")
>>> ns
NamespaceHandle('docs', store='memory://handle-demo')
>>> ns.exists()
False
>>> ns.write({"upsert_rows": [{"id": 1, "vector": [0.1, 0.2], "text": "quick fox"},
...                           {"id": 2, "vector": [0.9, 0.1], "text": "lazy dog"}],
...           "schema": {"text": {"type": "string", "full_text_search": True}}})["rows_upserted"]
2
>>> res = ns.query(rank_by=["vector", "ANN", [0.1, 0.2]], top_k=1, include_attributes=["text"])
>>> res.rows[0]["id"], res.rows[0]["text"]
(1, 'quick fox')
>>> res.to_polars().columns
['id', '$dist', 'text']
>>> ns.query(rank_by=["text", "BM25", "dog"]).rows[0]["id"]
2
>>> sorted(ns.schema())
['id', 'text', 'vector']
>>> ns.rows()["id"].to_list()
[1, 2]
>>> ns.index().status
'indexed'
>>> ns.delete() > 0, ns.exists()
(True, False)
>>> ns.rows()
Traceback (most recent call last):
...
puffer_cli.errors.NamespaceNotFound: namespace 'docs' not found in memory://handle-demo
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from puffer_cli.errors import InvalidRequest
from puffer_cli.wal.namespace import Namespace

PUBLIC = (
    "name",
    "store",
    "write",
    "query",
    "ingest",
    "export",
    "index",
    "warm",
    "recall",
    "metadata",
    "schema",
    "rows",
    "delete",
    "exists",
)


@dataclass
class QueryResponse:
    """One query's answer: ``rows`` (dicts of typed values), ``aggregations``,
    ``aggregation_groups``, ``performance``; ``results`` holds one response per
    sub-query of a multi-query; ``raw`` is the engine's response dict."""

    rows: list[dict] = field(default_factory=list)
    aggregations: dict | None = None
    aggregation_groups: list[dict] | None = None
    performance: dict = field(default_factory=dict)
    results: list[QueryResponse] = field(default_factory=list)
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_engine(cls, out: Mapping[str, Any]) -> QueryResponse:
        subs = [cls.from_engine(r) for r in out.get("results", [])]
        return cls(
            rows=list(out.get("rows") or []),
            aggregations=out.get("aggregations"),
            aggregation_groups=out.get("aggregation_groups"),
            performance=dict(out.get("performance") or {}),
            results=subs,
            raw=dict(out),
        )

    def to_polars(self) -> pl.DataFrame:
        """The rows (or the aggregation groups) as a polars frame."""
        rows = self.rows if self.rows or self.aggregation_groups is None else self.aggregation_groups
        return pl.DataFrame(rows) if rows else pl.DataFrame()

    def __len__(self) -> int:
        return len(self.rows)


class NamespaceHandle(Namespace):
    """A namespace of a store; ``db.namespace(name)`` makes one (nothing is created until
    the first write). Every method is one library call; errors are
    :class:`puffer_cli.PufferError` subclasses (``NamespaceNotFound``, ``InvalidRequest``, ...)."""

    def __repr__(self) -> str:
        return f"NamespaceHandle({self.name!r}, store={self.store.url!r})"

    def __dir__(self) -> list[str]:
        return sorted(PUBLIC)

    def query(
        self,
        body: Mapping[str, Any] | None = None,
        *,
        rank_by: Any = None,
        top_k: int | None = None,
        filters: Any = None,
        include_attributes: Any = None,
        consistency: str | None = None,
        aggregate_by: Mapping[str, Any] | None = None,
        group_by: Sequence[str] | None = None,
        queries: Sequence[Mapping[str, Any]] | None = None,
    ) -> QueryResponse:
        """Run a turbopuffer query: a whole ``body`` dict, or keyword arguments (which
        override the body's keys). ``consistency`` is "strong" (default) or "eventual";
        ``queries`` is a multi-query (``res.results``). Raises NamespaceNotFound."""
        from puffer_cli.search import engine

        q: dict[str, Any] = dict(body or {})
        for key, v in (
            ("rank_by", rank_by),
            ("top_k", top_k),
            ("filters", filters),
            ("include_attributes", include_attributes),
            ("aggregate_by", aggregate_by),
            ("group_by", list(group_by) if group_by is not None else None),
            ("queries", list(queries) if queries is not None else None),
        ):
            if v is not None:
                q[key] = v
        if consistency is not None:
            if consistency not in ("strong", "eventual"):
                raise InvalidRequest(f"unknown consistency {consistency!r}", hint="use strong or eventual")
            q["consistency"] = {"level": consistency}
        if "queries" not in q and q.get("rank_by") is None and not q.get("aggregate_by"):
            q["rank_by"] = ["id", "asc"]
        return QueryResponse.from_engine(engine.run(self, q))

    def ingest(self, paths: str | Sequence[str], **options: Any):
        """Batch-load parquet / ndjson / csv files (``puffer ingest``); options as
        :func:`puffer_cli.jobs.ingest.ingest` (id_col, vector_col, schema, ...). Returns its report."""
        from puffer_cli.jobs.ingest import ingest

        return ingest(self, [paths] if isinstance(paths, str) else list(paths), **options)

    def export(self, output: str | None = None, fmt: str | None = None, at_seq: int | None = None) -> dict:
        """Write a consistent snapshot to ``output`` (parquet / ndjson / csv; ``puffer export``)."""
        from puffer_cli.jobs.export import export

        return export(self, output, fmt, at_seq)

    def index(self, **options: Any):
        """Build and publish the next index generation (``puffer index``); options as
        :func:`puffer_cli.index.builder.index_namespace`. Returns its IndexReport."""
        from puffer_cli.index.builder import index_namespace

        return index_namespace(self, **options)

    def warm(self) -> dict:
        """Prefetch the current index generation into the local cache (``puffer warm``)."""
        from puffer_cli.index.warm import warm

        self.require()
        return warm(self)

    def recall(
        self,
        *,
        num: int | None = None,
        top_k: int = 10,
        filters: Any = None,
        field: str | None = None,
        rank_by: Any = None,
        include_ground_truth: bool = False,
        probe: float | None = None,
        fill: float | None = None,
    ) -> dict:
        """ANN vs exhaustive recall@k on sampled vectors (``puffer recall``; 25 unless ``num``),
        or on the one vector of ``rank_by``; ``include_ground_truth`` adds the exact neighbours;
        ``probe`` / ``fill`` measure other IVF options than the schema's (docs/indexer.md)."""
        from puffer_cli.jobs.recall import recall

        return recall(
            self,
            num=num,
            top_k=top_k,
            filters=filters,
            field=field,
            rank_by=rank_by,
            include_ground_truth=include_ground_truth,
            probe=probe,
            fill=fill,
        )

    def metadata(self) -> dict:
        """Head seq, schema, distance metric, timestamps, index pointer. Raises NamespaceNotFound."""
        head = self.require()
        meta, _ = self.read_meta()
        return {
            "namespace": self.name,
            "seq": head.seq,
            "schema": head.schema,
            "distance_metric": head.metric,
            "created_at": head.created_at,
            "updated_at": head.updated_at,
            "index": (meta or {}).get("index"),
        }

    def schema(self) -> dict:
        """The schema in force at the head: {attribute: {"type": ..., ...}}."""
        return dict(self.require().schema)

    def rows(self, at_seq: int | None = None) -> pl.DataFrame:
        """The live documents as a polars frame ordered by id: at the head, or as they were at
        committed seq ``at_seq`` (what ``export`` writes). Raises NamespaceNotFound."""
        from puffer_cli.jobs.export import snapshot

        return snapshot(self, at_seq)[0]

    def delete(self) -> int:
        """Remove every key of the namespace; returns how many. Raises NamespaceNotFound."""
        return self.delete_all()
