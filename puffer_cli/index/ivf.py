"""IVF-SQ8: the vector index of a segment (one per vector field), built for object storage.

A segment's vectors are clustered (k-means on a sample, then every row assigned to
its nearest centroid); each cluster is one *list*: the row positions of its members
and their vectors quantised to int8.  Two files per field and segment:

``ivf-{tag}.route.npz``
    the routing structure: ``centroids_i8`` / ``centroid_scale`` (nlist x dims int8,
    one float32 step per centroid; ``centroids`` float16 in older files), ``offsets``
    (nlist + 1 int64: list c holds members ``offsets[c]..offsets[c+1]``), ``scale``
    (the int8 step), ``coarse`` / ``bounds`` (the coarse clusters the lists are
    grouped by: lists ``bounds[j]..bounds[j+1]`` belong to coarse cluster j).
    About 1 byte per row at 100 dims and the default list size (1/400 of the f32 vectors).
``ivf-{tag}.lists``
    the row positions of every member, list after list (uint32), then their codes
    in the same order (int8, ``round(x / scale)``, x unit-normalised under cosine):
    two byte ranges per run of adjacent probed lists.

A query ranks the centroids (int8 SIMD dots), probes the nearest ``probe`` fraction
of the lists (one parallel batch of ranged reads when cold), scores their codes
with SIMD int8 dot products / squared distances (numkong, a usearch dependency),
keeps the ``rerank * k`` best candidates over all segments and hands them to the exact re-rank with the f32
vectors of the doc store, so ``$dist`` is exact.

Cost (``ann`` options of the vector attribute, all optional; see docs/indexer.md):

===========  =======  ==================================================================
option       default  cost
===========  =======  ==================================================================
list_rows    96       rows per list.  Build: assignment is O(rows x rows/list_rows) per
                      segment (segments are capped, so linear in the namespace);
                      query: centroid scan O(nlist x dims).
probe        0.02     fraction of a segment's rows a query scans (nearest lists first):
                      latency, cold bytes (``probe / 4`` of the f32 vector bytes: int8
                      codes; implicit row positions) and recall all grow with it.
probe_min_   16384    ... but at least this many rows (the whole segment when smaller):
rows                  a small segment needs a larger fraction for the same recall.  In a
                      namespace of several segments, x sqrt(the segment's share of the
                      rows), unfiltered, above 20,000 rows (``IndexedView._floor_scale``).
fill         0.75     the lists lying between probed ones in the file are scanned too
                      where that joins two runs of probed lists (gaps under 96 KiB
                      always, then the smallest while they add at most ``fill`` x the
                      probed rows): a cold query reads one range per run, so this buys
                      recall with bytes instead of requests.  GloVe-100 2M, cold on moto:
                      probe 0.035 without fill 213 requests, 1.44 % of the vector bytes,
                      recall 0.973; probe 0.02 with fill 0.75 66-84 requests, 1.8 %, 0.966.
                      Warm: the extra rows cost scan time (2M: p50 ~3.5 -> ~4.5 ms).
rerank       2        candidates per requested result re-ranked with exact f32 vectors,
                      chosen over all segments by approximate distance (cold: one
                      ranged read per run of rows, coalesced).  GloVe-100 and
                      Fashion-MNIST: the same recall at 1, 2, 4 and 10; 16-dim synthetic
                      data needs more (int8 codes rank coarsely in few dimensions).
===========  =======  ==================================================================

Codes (``ann.codes``): ``int8`` (the default) or ``int4`` (two dimensions a byte, a step
127/7 times the int8 one, the query quantised the same way; numkong's int4 SIMD dot /
squared distance; ``rerank`` default 4 instead of 2).  Measured in one run
(``benchmarks/bench_codes.py``, docs/benchmarks.md "IVF list codes"): int4 halves the lists'
bytes (GloVe 2M: 199 -> 99 MB) and on Fashion-MNIST (784 dims) keeps recall (0.998 vs 1.000)
at 24% less warm time, but on GloVe-100 with near-duplicate copies it loses 4-5 points at
every probe (0.922 vs 0.966 at 0.02, 0.935 vs 0.987 at 0.05; a deeper re-rank does not win
them back: rerank 16 gave 0.946 at the 2M filtered store) and cold reads shrink by only 9-16%
(bench_filtered: 1% filter 33.9 -> 29.6 MB, none 13.2 -> 11.6 MB: the cold planner's gap rules
are in bytes, so it reads through more of the smaller members).  So int8 stays the default and
int4 is for wide vectors whose lists dominate memory and cold bytes.  RaBitQ-style 1-bit codes
(with their per-vector error bound, which plain scalar codes lack) were not built here;
LanceDB's IVF_RQ is measured beside them in the same benchmark.

Filtered queries (``search/filtered.py``): :func:`list_matches` counts a filter's passing
rows per list (rows are stored in list order), :meth:`Route.matching_lists` takes the
nearest lists holding one until they hold :func:`filtered_need` of them, and :func:`search`
scores only the passing members; a cold query reads at most RUNS_MAX runs per segment.  The
route of a segment's first vector field also holds each list's min / max of up to 8 numeric
attributes (``liststats.py``), which place a cold query's read-ahead of the lists.

Filter codes (``ivf-{tag}.lists4``, format 2 with int8 codes and at least
FILTER_CODES_MIN_DIMS dimensions): the same members in the same order as the lists file,
in int4 codes (:func:`lists_file` with 4 bits, :meth:`Route.filter_copy`).  Filtered probes
read and score them instead of the int8 lists, warm and cold, and re-rank at least
FILTER_RERANK x k candidates exactly (a cold query fewer where their reads would pass its
request budget, ``search/topk.py``); unfiltered probes keep the int8 lists.  Why: a
filtered probe scans several times the members an unfiltered one does (the nearest lists
holding passing rows), so its cold bytes are mostly codes; int4 halves them.  Among sparse
passing members int4 keeps recall with a deeper re-rank (2M, warm, 3% / 10% filters: 0.908 /
0.893 at re-rank 2, 0.962 / 0.957 at 6, int8 at 2: 0.962 / 0.961).  Their fill gap is
counted in int8 members, so they fill the same lists.  +50% of the lists' bytes on the
bucket.  Measured: docs/benchmarks.md, "Filter codes".

Shared routing (built by default for a namespace of more than AUTO_SHARED_ROWS rows, see
:func:`decide_routing`; ``PUFFER_IVF_ROUTING=shared`` at any size, ``segment`` never: an IVF
per segment, format 2 in docs/format-index.md, in a manifest of format 3):
one :class:`Book` per vector field of the namespace (``index/{g}/book-{tag}-{run}.npz``,
named by the manifest's ``ann_books``) holds the two-level centroids and the int8 step;
every segment's lists follow it (its route file holds only ``offsets`` over the book's
lists, ``scale``, ``implicit``, ``unindexed`` and ``book``, the book's id).  A query
ranks the book's centroids once (int8 SIMD) and takes the nearest lists until they hold
:func:`probe_rows` rows of the namespace (``probe`` x rows up to 1M rows, ``probe`` x
sqrt(rows x 1M) beyond: the fraction shrinks as 1/sqrt(rows); at least ``probe_min_rows``;
divided by the share of a segment's rows a filter keeps); every segment scans its
members of exactly those lists (plus ``fill``), so rows scanned per query grow as
sqrt(rows), not with the number of segments (at the default probe 0.05): 331k 16k (the
floor), 2M 71k (3.5%), 10M 158k (1.6%), 30M 274k (0.91%), 100M 500k (0.5%).  A book has ``book_nlist`` lists:
rows / list_rows up to ~9.4M rows, then 32 x sqrt(rows) (10M: 101k lists of ~99 rows;
30M: 175k of ~171), so the routing scan (nlist x dims int8 bytes: 10 MB, ~1.2 ms at 10M)
is sublinear too; the book file stores its centroids as int8 rows with a scale each (a
cold query reads it whole: 10 MB at 10M) and rows are assigned to exactly those.
Measured at 2M (GloVe + noisy copies, warm, one run): 8 x sqrt(rows)
(11k lists of 177 rows, 262k training rows) lost recall at equal rows scanned (0.963 vs
0.971 at 70k); 16 x sqrt(rows) with up to 1M training rows (BOOK_SAMPLE_MAX, 64 per
list) found 0.970 at 49k rows and 0.982 at 71k (fill 0) where format 2 found 0.971 at
70k.  At 10M the lists, not the training rows, set recall (offline, 500 queries, share of
the true top 10 in the lists probed at 1% of the rows): 16 x sqrt on 1M rows 0.955, on 2M
rows 0.964, 32 x sqrt on 1M rows 0.973, on 3M rows 0.975; more k-means iterations none;
int8 ranking, int8 scoring and re-rank 2 lost <= 0.002 on top of the lists' loss.
Training the book on 1M rows takes 20-40 s of CPU (once per retrain).
Format 3 has its own ``probe`` / ``fill`` defaults (SHARED_DEFAULTS: probe 0.05, fill 0;
an ``ann`` value in the schema applies to both formats).  ``fill`` pays less here than
under format 2: a segment holds only its share of each list, so the 96 KiB gap rule joins
many lists (at probe 0.02, fill 0.75 took 28k probed rows to 113k scanned for recall
0.944 -> 0.967) where a larger probe buys more recall per row scanned (2M, 100 queries,
one run: noisy copies 0.968 at 42k rows with probe 0.03, 0.977 at 56k with 0.04; the
mixed set 0.949 at 42k, 0.961 at 57k, 0.969 at 71k with 0.05; fill 0.5 on top of probe
0.03 gave 0.955 at 63k).  Format 2 at its defaults: 0.965 at 109k (noisy), 0.938 at 112k
(mixed).  Probe 0.05 rather than 0.04: at 10M (bench_scale's set) 0.04 found 0.942 at 126k
rows, 0.05 found 0.950 at 158k (format 2: 0.967 at 558k); at 2M 0.05 finds 0.986 / 0.969
(noisy / mixed) at 71k rows.  A cold query reads a segment's lists in at most RUNS_MAX ranges
(:func:`bounded_runs`), as under format 2.  A filtered query plans each segment's probe as
under format 2 (``search/filtered.py``: the nearest lists, by the book's ranking, holding a
row that passes), scaled from the segment's share of the namespace's unfiltered probe.

Query-aware probe (``prune``, 0.5 by default under shared routing, 0.4 under format 2;
unfiltered queries): SPANN's
pruning (:func:`pruned`): the nearest lists holding PRUNE_FLOOR (0.4) x the fixed probe's rows
(but ``probe_min_rows``), then the next ones within (1 + ``prune``) x the nearest centroid's
distance, up to PRUNE_CAP (1.5; format 2: SEGMENT_PRUNE_CAP, 3.0) x the rows.  A query near a
dense region stops at the floor, one among many lists at similar distances scans up to the
cap.  Measured (docs/benchmarks.md, "A query-aware probe"), fixed -> pruned, recall@10 and
rows scanned a query (median): 10M GloVe + noisy copies 0.968 at 158k -> 0.960 at 63k (cold:
128.7 -> 57.1 MB); 30M mixed 0.960 at 274k -> 0.961 at 110k (cold: 294.7 -> 113.7 MB, 0.95%
of the vector bytes); format 2 at 2M, noisy 0.965 -> 0.971, mixed 0.929 -> 0.954, at fewer
median rows (109k / 113k -> 73k / 86k; cold ANN + include_attributes 14.4 -> 17.4 MB, issue 25's
5 queries).  Offline first (share of the true top 10 in the lists probed): a distance
gap of a fixed size did as well on GloVe but has units; a cut relative to the spread between
the nearest list and the fixed probe's last did worse.  Under shared routing the probe's tail
stays near its head in the file (:func:`near_tail`): past TAIL_KEEP (0.7) x the fixed probe's
rows, a list is taken only within TAIL_GAP_BYTES (2 MiB) of a nearer one, the others skipped
for the next near ones, to the same rows.  A far list alone costs a cold query a read through
the gap before it (a stack's reads are bounded to ``stack.RUNS_MAX`` ranges); 30M mixed, 40
cold queries on SeaweedFS: mean bytes 1.81% -> 1.37% of the vector bytes, max 12.7% -> 9.0%,
the same median (0.74%), requests and recall (warm, 100 queries: 0.961 -> 0.960; 10M: 0.960
both, mean 1.67% -> 1.53%).

Growth: new rows are assigned to the existing book (the hierarchical :meth:`Codebook.assign`,
no training), so an incremental run costs what its new rows cost.  Lists grow as the
namespace grows; a book is **retrained when the namespace holds more than GROWTH (4) times,
or less than 1/GROWTH of, the rows it was trained for**, and then every segment is rewritten
to follow the new book (a full rebuild).  Chosen over an SPFresh-style split of oversized
lists because a split changes a list that *every* segment holds members of: it would
rewrite every segment's files anyway (rows are stored in list order), or leave segments
on different list sets and the query routing per segment again.  Retraining at 4x growth
rewrites, over the namespace's life, at most 4/3 of its final rows (retrains at N0, 4 N0,
16 N0, ...: a geometric series), so the amortised build stays linear, and bounds a list at
4x its trained size (2x what a fresh book would give, since lists ~ sqrt(rows)).  Cost:
the run that crosses the threshold is a full rebuild (10M: about one full build's time);
data whose distribution drifts without growing is not retrained (a later version could
retrain on a measured imbalance, e.g. the largest list over 8x the mean).  The first run
of a big ingest trains the book on the first SEGMENT_MAX_ROWS rows, sized for the rows
the whole WAL range is expected to hold (extrapolated from the entries folded so far).

Why not HNSW (format 1): its build cost per row grows with the segment (1.99M x 100
did not finish in 60 minutes here) and a query must hold the whole graph, so a cold
query downloads every segment's graph.  Why numpy k-means and not faiss: numpy's BLAS
does the O(n x k x d) assignment at ~30 GFLOP/s on this machine, which is the whole
cost; faiss-cpu would add a 30 MB dependency for the same matmul.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from puffer_cli import cores
from puffer_cli.index import liststats, npyfile

log = logging.getLogger("puffer.index.ivf")

DEFAULTS = {"list_rows": 96, "probe": 0.02, "probe_min_rows": 16_384, "rerank": 2, "fill": 0.75, "prune": 0.4}
BOUNDS = {
    "list_rows": (16, 1 << 20),
    "probe": (1e-4, 1.0),
    "probe_min_rows": (0, 1 << 24),
    "rerank": (1, 1000),
    "fill": (0.0, 8.0),
    "prune": (0.0, 10.0),
}
FILL_GAP_BYTES = 96 * 1024  # lists between probed ones closer than this are always scanned too
#: format 3 (shared routing): its own ``probe`` / ``fill`` defaults and fill gap (see "Shared routing" above);
#: an ``ann`` value in the schema applies to both formats
SHARED_DEFAULTS = {"probe": 0.05, "fill": 0.0, "prune": 0.5}
#: ``prune`` > 0 (unfiltered): a query scans between these shares of its fixed probe's rows
#: (format 3: ``probe_rows``), as far as its lists' distances say (:func:`pruned`)
PRUNE_FLOOR = 0.4
PRUNE_CAP = 1.5
#: ... and under format 2, a segment's own IVF (its fixed probe is smaller: 2% of the segment,
#: its floor ``probe_min_rows``), with ``prune`` 0.4 there: 2M mixed / noisy 0.952 / 0.972 at
#: 94k / 81k rows, where 0.5 with a cap of 2 found 0.960 / 0.977 at 127k / 104k but read ~22 MB
#: cold in 3 of issue 25's 5 benchmark queries (docs/benchmarks.md, "A query-aware probe")
SEGMENT_PRUNE_CAP = 3.0
#: ... and under shared routing, past TAIL_KEEP x its fixed rows, only lists within
#: TAIL_GAP_BYTES of a nearer one in the file (:func:`near_tail`; < 0: off).  1 MiB read a
#: little less (30M cold mean 1.29%) for 0.005 of warm recall at 30M; 2 MiB kept it
TAIL_KEEP = 0.7
TAIL_GAP_BYTES = 2 << 20
SHARED_FILL_GAP_BYTES = 96 * 1024
SCORE_PER_RUN_MAX = 64  # up to this many runs are scored one by one (no copy), more in one call
SAMPLE_PER_LIST = 64  # k-means training rows per list (GloVe-100: 64 gave recall 0.955 where 32 gave 0.947)
SAMPLE_MAX = 262_144  # ... at most (bounds the training cost of a full segment)
SAMPLE_MIN = 8_192
ITERATIONS = 8
CHUNK = 32_768  # rows per assignment matmul (bounds the n x k distance block: 32k x 4k x 4 B = 512 MB max)
KIND = "ivf-sq8"
CODES = ("int8", "int4")  # ``ann.codes``: bits per dimension of the list codes (see "Codes" above)
INT4_LEVELS = 7  # int4 codes and query codes take -7..7 (numkong's signed nibbles, symmetric)
INT4_RERANK = 4  # the default ``rerank`` over int4 codes (their order is coarser: see "Codes")
#: format 2 with int8 codes also writes the lists' int4 copy (``ivf-{tag}.lists4``), which
#: filtered probes read instead (see "Filter codes" above); a filtered query over them
#: re-ranks at least FILTER_RERANK x k candidates
FILTER_CODES = True
FILTER_CODES_MIN_DIMS = 64  # ... for vectors of this many dimensions or more (int4 ranks too coarsely in fewer)
FILTER_RERANK = 6


_FORCED: contextvars.ContextVar[tuple[tuple[str, float], ...]] = contextvars.ContextVar("puffer_ivf_forced", default=())


@contextlib.contextmanager
def override(probe: float | None = None, fill: float | None = None, prune: float | None = None):
    """``with override(probe=0.1, fill=0):`` queries in this context use these values
    instead of the schema's (what ``puffer recall --probe/--fill/--prune`` measures); None
    keeps the schema's (or an enclosing override's)."""
    pairs = dict(_FORCED.get())
    pairs.update((k, v) for k, v in (("probe", probe), ("fill", fill), ("prune", prune)) if v is not None)
    token = _FORCED.set(tuple(sorted(pairs.items())))
    try:
        yield
    finally:
        _FORCED.reset(token)


def forced() -> tuple[tuple[str, float], ...]:
    """The values :func:`override` imposes in this context (part of a cache key of
    :func:`options`)."""
    return _FORCED.get()


def codes(spec: dict | None) -> str:
    """The list codes an attribute's ``ann`` entry asks for: ``int8`` (the default) or ``int4``."""
    ann = (spec or {}).get("ann")
    c = ann.get("codes") if isinstance(ann, dict) else None
    return c if c in CODES else "int8"


def options(spec: dict | None, shared: bool = False, filter_codes: bool = False) -> dict:
    """Build/search options from an attribute's ``ann`` entry; values outside BOUNDS
    (stored by an older version) are clamped with a warning rather than failing a build.
    ``shared``: for a segment following a shared :class:`Book` (format 3, its own defaults);
    ``filter_codes``: for a filtered probe of filter codes (``rerank`` at least FILTER_RERANK)."""
    o: dict[str, float] = dict(DEFAULTS)
    if shared:
        o.update(SHARED_DEFAULTS)
    if codes(spec) == "int4":
        o["rerank"] = INT4_RERANK
    ann = (spec or {}).get("ann")
    if isinstance(ann, dict):
        o.update({k: v for k, v in ann.items() if k in DEFAULTS and v is not None})
    o.update(dict(_FORCED.get()))
    for k, (lo, hi) in BOUNDS.items():
        v = o[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            log.warning("ann %s %r is not a number; using %s", k, v, DEFAULTS[k])
            v = DEFAULTS[k]
        v = min(max(v, lo), hi)
        o[k] = int(v) if isinstance(DEFAULTS[k], int) else float(v)
    if filter_codes:
        o["rerank"] = max(int(o["rerank"]), FILTER_RERANK)
    return o


def build_options(spec: dict | None) -> dict:
    """The options that shape the files (a change rebuilds the segment): list size and the
    routing (``shared``: one :class:`Book` per namespace and field, format 3; ``segment``:
    an IVF per segment, format 2); ``probe`` and ``rerank`` are read at query time from the
    schema in force."""
    o: dict = {"kind": KIND, "list_rows": options(spec)["list_rows"]}
    if shared_routing():
        o["routing"] = "shared"
    if codes(spec) != "int8":  # absent: int8 (the files and signatures of earlier builds)
        o["codes"] = codes(spec)
    return o


#: ``PUFFER_IVF_ROUTING`` unset (``auto``): a run builds shared routing (format 3) when the
#: namespace will hold more than this many rows, or already has a book; else an IVF per
#: segment (format 2).  Up to two full segments, format 2 reads less cold (2M: 13.8 against
#: 23.5 MB, ANN + include) at the same warm cost; beyond, its requests and rows scanned grow
#: with the segments (docs/indexer.md, "Which routing a run builds").
AUTO_SHARED_ROWS = 2_000_000
_RUN_SHARED: contextvars.ContextVar[bool | None] = contextvars.ContextVar("puffer_ivf_run_shared", default=None)


def routing_mode() -> str:
    """``PUFFER_IVF_ROUTING``: ``auto`` (the default), ``segment`` or ``shared``."""
    from puffer_cli import config

    return config.from_env().ivf_routing


def shared_routing() -> bool:
    """Does this run build format-3 shared routing?  ``PUFFER_IVF_ROUTING=shared``: always;
    ``segment``: never (an IVF per segment, format 2); ``auto`` (unset): what the run decided
    (:func:`decide_routing`; format 2 before it decides).  Generations of either format
    answer queries."""
    mode = routing_mode()
    if mode != "auto":
        return mode == "shared"
    return bool(_RUN_SHARED.get())


def decide_routing(rows: int, has_book: bool) -> bool:
    """Fix this run's routing (see :data:`AUTO_SHARED_ROWS`): shared when asked, or under
    ``auto`` when the namespace will hold more than AUTO_SHARED_ROWS ``rows`` or already
    follows a book (``has_book``: it stays shared, however it shrinks)."""
    mode = routing_mode()
    shared = mode == "shared" or (mode == "auto" and (has_book or rows > AUTO_SHARED_ROWS))
    _RUN_SHARED.set(shared)
    return shared


@contextlib.contextmanager
def routing_run():
    """A run's routing decision lives inside this block (reset after it: the next run decides again)."""
    token = _RUN_SHARED.set(None)
    try:
        yield
    finally:
        _RUN_SHARED.reset(token)


# ---------------------------------------------------------------- clustering
def _prepare(x: np.ndarray, cosine: bool) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if cosine:
        n = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(n > 0, n, 1)
    return x


def assign(x: np.ndarray, cent: np.ndarray, cosine: bool) -> np.ndarray:
    """Index of the nearest centroid of every row (exact; chunked matmul)."""
    out = np.empty(len(x), np.int32)
    c2 = None if cosine else np.einsum("ij,ij->i", cent, cent)
    for a in range(0, len(x), CHUNK):
        g = x[a : a + CHUNK] @ cent.T
        if cosine:
            out[a : a + CHUNK] = np.argmax(g, axis=1)
        else:
            out[a : a + CHUNK] = np.argmin(c2 - 2 * g, axis=1)
    return out


def kmeans(x: np.ndarray, k: int, cosine: bool, rng: np.random.Generator, iters: int = ITERATIONS) -> np.ndarray:
    """k centroids of the (already prepared) rows ``x``: Lloyd's iterations from a random
    start; empty clusters are re-seeded from random rows; spherical under cosine."""
    n = len(x)
    k = max(1, min(k, n))
    cent = x[rng.choice(n, k, replace=False)].astype(np.float32, copy=True)
    for _ in range(iters):
        lab = assign(x, cent, cosine)
        counts = np.bincount(lab, minlength=k)
        order = np.argsort(lab, kind="stable")
        nz = np.flatnonzero(counts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[nz]
        sums = np.add.reduceat(x[order], starts, axis=0)
        cent[nz] = sums / counts[nz, None]
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            cent[empty] = x[rng.choice(n, len(empty), replace=False)]
        if cosine:
            nn = np.linalg.norm(cent, axis=1, keepdims=True)
            cent /= np.where(nn > 0, nn, 1)
    return cent


class Codebook:
    """Two-level centroids: ``coarse`` (about sqrt(nlist)) and the fine ``centroids``
    (the lists), grouped by coarse cluster (``groups[j]`` = the fine ids of coarse j, a
    contiguous range), so lists near each other in space are near each other in the file."""

    def __init__(self, coarse: np.ndarray, centroids: np.ndarray, bounds: np.ndarray, cosine: bool):
        self.coarse, self.centroids, self.bounds, self.cosine = coarse, centroids, bounds, cosine
        # for each coarse cluster, its NEIGHBOURS nearest coarse clusters (itself first)
        k1 = len(coarse)
        nb = min(NEIGHBOURS, k1)
        self.near = np.argsort(_dist(coarse, coarse, cosine), axis=1)[:, :nb]

    def assign(self, x: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Nearest fine centroid of every row, searched among the children of the
        NEIGHBOURS coarse clusters around the row's nearest coarse cluster: O(rows x
        (sqrt(nlist) + NEIGHBOURS x nlist / sqrt(nlist))) instead of O(rows x nlist)."""
        top = assign(x, self.coarse, self.cosine)
        out = np.empty(len(x), np.int32)
        order = np.argsort(top, kind="stable")
        cuts = np.searchsorted(top[order], np.arange(len(self.coarse) + 1))
        done = 0
        for j in range(len(self.coarse)):
            rows = order[cuts[j] : cuts[j + 1]]
            if not len(rows):
                continue
            cand = np.concatenate([np.arange(self.bounds[m], self.bounds[m + 1]) for m in self.near[j]])
            out[rows] = cand[assign(x[rows], self.centroids[cand], self.cosine)]
            done += len(rows)
            if progress is not None:
                progress(done, len(x))
        return out


NEIGHBOURS = 6  # coarse clusters searched when assigning a row (3: recall 0.947, 6: 0.951 at probe 0.06)


def _dist(a: np.ndarray, b: np.ndarray, cosine: bool) -> np.ndarray:
    g = a @ b.T
    if cosine:
        return -g
    return np.einsum("ij,ij->i", b, b)[None, :] - 2 * g


def train(
    sample: np.ndarray, nlist: int, cosine: bool, rng: np.random.Generator, progress: Callable | None = None
) -> Codebook:
    """Hierarchical k-means: about sqrt(nlist) coarse clusters of the sample, then each
    coarse cluster split into lists in proportion to its share of the sample;
    ``progress(coarse clusters split, of)`` after each."""
    k1 = max(1, int(round(math.sqrt(nlist))))
    coarse = kmeans(sample, k1, cosine, rng)
    top = assign(sample, coarse, cosine)
    fine, bounds = [], [0]
    for j in range(len(coarse)):
        if progress is not None:
            progress(j, len(coarse))
        members = sample[top == j]
        if not len(members):
            fine.append(coarse[j : j + 1])
        else:
            kj = max(1, int(round(nlist * len(members) / len(sample))))
            fine.append(
                _chained(kmeans(members, kj, cosine, rng, iters=ITERATIONS), cosine) if kj > 1 else coarse[j : j + 1]
            )
        bounds.append(bounds[-1] + len(fine[-1]))
    return Codebook(coarse, np.concatenate(fine).astype(np.float32), np.asarray(bounds, np.int64), cosine)


def _chained(c: np.ndarray, cosine: bool) -> np.ndarray:
    """The centroids ``c`` of one coarse cluster in a greedy nearest-neighbour chain (from
    the most outlying one, each next the nearest not yet taken): lists are stored in this
    order, so a query's probed lists, which are near each other, are more often adjacent
    in the file and read by one request.  GloVe-100, 1M rows, probe 0.035: median 63 list
    requests per 1M-row segment instead of 72 (k-means order), and 9% fewer bytes (gaps)."""
    n = len(c)
    if n <= 2:
        return c
    d = _dist(c, c, cosine)
    taken = np.zeros(n, bool)
    cur = int(np.argmax(d.sum(axis=0)))  # column sums: the true total distance up to a constant
    order = [cur]
    taken[cur] = True
    for _ in range(n - 1):
        cur = int(np.argmin(np.where(taken, np.inf, d[cur])))
        order.append(cur)
        taken[cur] = True
    return c[np.asarray(order)]


# ---------------------------------------------------------------- build
@dataclass
class Fit:
    """A trained codebook and the list of every row (``labels``: -1 = not indexed)."""

    labels: np.ndarray
    book: Codebook | None
    scale: float
    cosine: bool

    def row_order(self) -> np.ndarray:
        """Row positions sorted by list (stable), rows without a list last: the order a
        segment's rows are written in, so a list's rows are contiguous in every file and a
        cold re-rank reads a few runs instead of one range per candidate."""
        n = self.book.centroids.shape[0] if self.book is not None else 0
        return np.argsort(np.where(self.labels < 0, n, self.labels), kind="stable")

    def permuted(self, perm: np.ndarray) -> Fit:
        return Fit(self.labels[perm], self.book, self.scale, self.cosine)


def fit(
    mat: np.ndarray,
    list_rows: int,
    metric: str | None,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> Fit:
    """Cluster the rows of ``mat`` that have a vector (non-NaN; under cosine also non-zero:
    a zero vector has no direction and ranks at distance 1, readers add those rows).
    ``progress(stage, done, total)``: coarse clusters trained, then rows assigned."""
    cosine = (metric or "cosine_distance") == "cosine_distance"
    rng = np.random.default_rng(seed)
    labels = np.full(len(mat), -1, np.int32)
    valid = _indexable(mat, cosine)
    x = _prepare(_rows(mat, valid), cosine)
    n = len(x)
    if not n:
        return Fit(labels, None, 1.0, cosine)
    nlist = max(1, int(round(n / list_rows)))
    want = min(SAMPLE_MAX, max(SAMPLE_MIN, nlist * SAMPLE_PER_LIST))
    sample = x if n <= want else x[np.sort(rng.choice(n, want, replace=False))]
    book = train(sample, nlist, cosine, rng, progress and (lambda d, t: progress("clusters trained", d, t)))
    labels[valid] = book.assign(x, progress and (lambda d, t: progress("rows assigned", d, t)))
    amax = float(np.quantile(np.abs(sample), 0.9995))
    return Fit(labels, book, (amax if amax > 0 else 1.0) / 127.0, cosine)


def _indexable(mat: np.ndarray, cosine: bool) -> np.ndarray:
    """Rows that have a vector: no NaN; under cosine also a non-zero value."""
    if not len(mat):
        return np.zeros(0, bool)
    with np.errstate(over="ignore", invalid="ignore"):  # sums may overflow: only their finiteness counts
        if np.isfinite(mat.sum(axis=1)).all():  # no NaN (nor inf) anywhere: one pass, no copies
            return (mat != 0).any(axis=1) if cosine else np.ones(len(mat), bool)
        ok = ~np.isnan(mat).any(axis=1)
        if cosine:
            ok &= np.abs(np.nan_to_num(mat)).sum(axis=1) > 0
        return ok


def _rows(mat: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``mat[valid]``, without the copy when every row is valid."""
    return mat if valid.all() else mat[valid]


def pack4(c: np.ndarray) -> np.ndarray:
    """Codes in -7..7, (n, dims) int8 -> (n, ceil(dims / 2)) uint8: value 2j in the low
    nibble of byte j, value 2j + 1 in the high one (numkong's ``int4``; an odd last value
    pairs with 0)."""
    c = np.asarray(c, np.int8)
    if c.shape[1] % 2:
        c = np.concatenate([c, np.zeros((len(c), 1), np.int8)], axis=1)
    u = c.view(np.uint8) & np.uint8(15)
    return np.ascontiguousarray(u[:, 0::2] | (u[:, 1::2] << np.uint8(4)))


def encode(
    f: Fit, mat: np.ndarray, book_id: str | None = None, bits: int = 8, extra: dict[str, np.ndarray] | None = None
) -> tuple[bytes, bytes, dict]:
    """(route file, lists file, info for the manifest) of ``mat`` under ``f`` (rows aligned).
    ``book_id``: ``f`` follows that shared :class:`Book`; the route then holds no centroids
    (the offsets of the book's lists in this segment, the scale, the book's id).  ``bits``:
    8 (int8 codes) or 4 (int4, two dimensions a byte, a step 127/7 times the int8 one).
    ``extra``: more arrays for the route (``liststats.build``: per-list statistics)."""
    dims = mat.shape[1]
    book = f.book
    nlist = len(book.centroids) if book is not None else 0
    valid = f.labels >= 0
    lab = f.labels[valid]
    lists, implicit, step = lists_file(f, mat, bits)
    counts = np.bincount(lab, minlength=nlist) if nlist else np.zeros(0, np.int64)
    offsets = np.zeros(nlist + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    empty = np.zeros((0, dims), np.float32)
    route = io.BytesIO()
    arrays: dict[str, Any]
    if book_id is not None:
        arrays = {"book": np.str_(book_id)}
    else:
        arrays = quantise_centroids(book.centroids if book is not None else empty)
        arrays["coarse"] = (book.coarse if book is not None else empty).astype("<f4")
        arrays["bounds"] = book.bounds if book is not None else np.zeros(1, np.int64)
    if bits == 4:
        arrays["bits"] = np.array(4, np.uint8)
    arrays.update(extra or {})
    if book_id is not None:
        # members per book list in the narrowest unsigned type, deflated: a route holds a
        # count for every list of the book and a cold query reads every segment's route, so
        # int64 offsets grew as segments x lists (30M rows: 1.4 MB a segment, 42 MB a query)
        arrays["counts"] = counts.astype(np.min_scalar_type(int(counts.max()) if len(counts) else 0))
    else:
        arrays["offsets"] = offsets
    (np.savez_compressed if book_id is not None else np.savez)(
        route,
        **arrays,
        scale=np.float32(step),
        implicit=np.bool_(implicit),
        # rows with a vector left out of the lists (zero vectors under cosine): they rank at
        # distance 1, so readers add them as candidates without reading the vectors file
        unindexed=_unindexed(mat, valid),
    )
    info = {"vectors": int(len(lab)), "lists_n": int(nlist), "max_list": int(counts.max()) if nlist else 0}
    return route.getvalue(), lists, info


def lists_file(f: Fit, mat: np.ndarray, bits: int = 8) -> tuple[bytes, bool, float]:
    """(lists file, whether member positions are implicit, the code step) of ``mat`` under
    ``f`` in ``bits``-bit codes: the members in list order, their row positions unless
    implicit, then their codes.  The int4 file of an int8 route (``bits`` 4) is its filter
    codes: the same members in the same order (:meth:`Route.filter_copy`)."""
    valid = f.labels >= 0
    pos = np.flatnonzero(valid).astype(np.uint32)
    lab = f.labels[valid]
    step = f.scale if bits == 8 else f.scale * 127.0 / INT4_LEVELS
    lim = 127 if bits == 8 else INT4_LEVELS
    codes = np.clip(np.rint(_prepare(_rows(mat, valid), f.cosine) / step), -lim, lim).astype(np.int8)
    if bits == 4:
        codes = pack4(codes)
    order = np.argsort(lab, kind="stable")
    # rows written in list order (the segment's first vector field): member i is row i, so
    # the lists file holds the codes only
    implicit = bool(np.array_equal(pos[order], np.arange(len(pos))))
    return (b"" if implicit else pos[order].astype("<u4").tobytes()) + codes[order].tobytes(), implicit, step


def _unindexed(mat: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Rows with a vector that the lists leave out (zero vectors under cosine), uint32."""
    if valid.all():
        return np.zeros(0, "<u4")
    return np.flatnonzero(~valid & ~np.isnan(mat).any(axis=1)).astype("<u4")


def quantise_centroids(c: np.ndarray) -> dict[str, np.ndarray]:
    """Centroids as int8 rows with a float32 scale each (``max |x| / 127``): the route is
    a cold query's one whole-file read, and this halves it (f16 before) while ranking lists
    as well (a list is picked among its neighbours, not scored exactly)."""
    c = np.asarray(c, dtype=np.float32)
    m = np.abs(c).max(axis=1) if len(c) else np.zeros(0, np.float32)
    sc = np.where(m > 0, m / 127.0, 1.0).astype("<f4")
    q = np.clip(np.rint(c / sc[:, None]), -127, 127).astype(np.int8) if len(c) else np.zeros(c.shape, np.int8)
    return {"centroids_i8": q, "centroid_scale": sc}


def build(
    mat: np.ndarray, list_rows: int, metric: str | None, seed: int = 0, bits: int = 8
) -> tuple[bytes, bytes, dict]:
    """:func:`fit` then :func:`encode`, rows kept in their order."""
    return encode(fit(mat, list_rows, metric, seed), mat, bits=bits)


# ---------------------------------------------------------------- shared routing (format 3)
GROWTH = 4.0  # a book is retrained when the namespace's vectors grow (or shrink) by this factor since training
LISTS_PER_SQRT = 32  # a book has min(rows / list_rows, LISTS_PER_SQRT x sqrt(rows)) lists
BOOK_SAMPLE_MAX = 1 << 20  # a book's training rows at most (64 per list): trained once, so more than a segment's
PROBE_REF_ROWS = 1_000_000  # ``probe`` is the fraction scanned at this many rows; sqrt growth beyond


def book_nlist(n: int, list_rows: int) -> int:
    """Lists of a book trained for ``n`` rows: ``list_rows`` rows each up to ~600k rows,
    then ~sqrt(n) lists (``LISTS_PER_SQRT`` x sqrt(n)), so rows per list grow as sqrt(n)
    and a query's routing scan (over the centroids) stays sublinear too."""
    return max(1, min(int(round(n / list_rows)), int(round(LISTS_PER_SQRT * math.sqrt(max(1, n))))))


def probe_rows(total: int, probe: float, min_rows: int) -> int:
    """Rows a shared-routing query scans over the whole namespace: ``probe`` x rows up to
    PROBE_REF_ROWS (a segment's share under format 2), ``probe`` x sqrt(rows x
    PROBE_REF_ROWS) beyond (the fraction shrinks as 1 / sqrt(rows)); at least
    ``min_rows``; at most all."""
    base = min(float(total), math.sqrt(float(total) * PROBE_REF_ROWS))
    return int(min(total, max(min_rows, math.ceil(probe * base))))


class Book:
    """The shared routing of one vector field of a namespace (format 3): one two-level
    codebook (see :class:`Codebook`) and one int8 step, trained once on a sample and kept
    across incremental runs; every segment's lists follow its centroids (a segment's route
    holds only its offsets per list), so a query ranks the centroids once and scans, in
    every segment, only the members of the chosen lists."""

    def __init__(self, book_id: str, codebook: Codebook, scale: float, trained_rows: int):
        self.id, self.codebook, self.scale, self.trained_rows = book_id, codebook, scale, trained_rows
        q = quantise_centroids(codebook.centroids)
        self.c_i8, self.c_scale = q["centroids_i8"], q["centroid_scale"]
        c32 = self.c_i8.astype(np.float32) * self.c_scale[:, None]
        self.c2 = None if codebook.cosine else np.einsum("ij,ij->i", c32, c32)
        self._last: tuple[bytes, np.ndarray] | None = None
        self._packed: Any = None  # numkong's packed form of c_i8 (dots_pack), made on first use

    @property
    def nlist(self) -> int:
        return len(self.c_i8)

    def to_bytes(self) -> bytes:
        cb = self.codebook
        buf = io.BytesIO()
        np.savez(
            buf,
            book=np.str_(self.id),
            centroids_i8=self.c_i8,
            centroid_scale=self.c_scale.astype("<f4"),
            coarse=cb.coarse.astype("<f4"),
            bounds=cb.bounds.astype("<i8"),
            scale=np.float32(self.scale),
            trained_rows=np.int64(self.trained_rows),
            cosine=np.bool_(cb.cosine),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Book:
        z = npyfile.load_npz(data)
        cosine = bool(z["cosine"])
        if "centroids_i8" in z.files:  # int8 rows with a scale each (books before: float32)
            c = (
                np.asarray(z["centroids_i8"], np.int8).astype(np.float32)
                * np.asarray(z["centroid_scale"], np.float32)[:, None]
            )
        else:
            c = np.asarray(z["centroids"], np.float32)
        cb = Codebook(np.asarray(z["coarse"], np.float32), c, np.asarray(z["bounds"]), cosine)
        return cls(str(z["book"]), cb, float(z["scale"]), int(z["trained_rows"]))

    def fit(self, mat: np.ndarray, progress: Callable[[str, int, int], None] | None = None) -> Fit:
        """Every row of ``mat`` with a vector assigned to its nearest list of this book."""
        cb = self.codebook
        labels = np.full(len(mat), -1, np.int32)
        valid = _indexable(mat, cb.cosine)
        if valid.any():
            x = _prepare(_rows(mat, valid), cb.cosine)
            labels[valid] = cb.assign(x, progress and (lambda d, t: progress("rows assigned", d, t)))
        return Fit(labels, cb, self.scale, cb.cosine)

    def distances(self, qq: np.ndarray) -> np.ndarray:
        """Approximate distance of the prepared query ``qq`` to every list's centroid
        (int8 SIMD; smaller = nearer).  The last query's are kept: every segment of a
        filtered query asks for them (:meth:`Route.distances` of a route following this book)."""
        import numkong as nk

        key = np.asarray(qq, np.float32).tobytes()
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        m = float(np.abs(qq).max()) or 1.0
        qi = np.clip(np.rint(qq * (127.0 / m)), -127, 127).astype(np.int8)[None, :]
        if self._packed is None:  # ~15 ms at 175k lists, once: then 1.7 ms a query where cdist took 3.4-3.9
            parts = cores.shares(self.nlist)
            at = (self.nlist * np.arange(parts + 1)) // parts
            self._packed = [(int(x), int(y), nk.dots_pack(self.c_i8[x:y])) for x, y in zip(at[:-1], at[1:])]

        # a share of the centroids a thread, each packed on its own
        def share(packed: Any) -> np.ndarray:
            return np.asarray(nk.dots_packed(qi, packed)).reshape(-1)

        got = cores.run([functools.partial(share, p) for _x, _y, p in self._packed])
        g = (got[0] if len(got) == 1 else np.concatenate(got)).astype(np.float32)
        g *= self.c_scale
        g *= np.float32(m / 127.0)
        d = np.negative(g, out=g) if self.c2 is None else self.c2 - 2 * g
        self._last = (key, d)
        return d

    def metric_distances(self, q: np.ndarray, lists: np.ndarray) -> np.ndarray:
        """The approximate distance of ``q`` to the centroids of ``lists`` in the metric's
        units (cosine: 1 - cos against the unit query; euclidean: squared), from
        :meth:`distances` (kept: free after :meth:`ranked` of the same query)."""
        qq = _prepare(np.asarray(q, np.float32)[None, :], self.codebook.cosine)[0]
        d = self.distances(qq)[lists]
        return d + (1.0 if self.codebook.cosine else float(qq @ qq))

    def ranked(self, q: np.ndarray, sizes: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
        """(lists nearest ``q`` first, cumulative member counts) until the lists hold
        ``need`` rows of the namespace (``sizes``: members per list over every segment)."""
        if not self.nlist:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        d = self.distances(_prepare(np.asarray(q, np.float32)[None, :], self.codebook.cosine)[0])
        total = int(sizes.sum())
        need = min(max(1, need), total)
        guess = min(self.nlist, max(16, int(4 * need * self.nlist / max(1, total))))
        while True:
            cand = cores.smallest(d, guess)
            cand = cand[np.argsort(d[cand])]  # (``cand`` is in no order: a stable sort buys nothing, at 4x the cost)
            cum = np.cumsum(sizes[cand])
            if cum[-1] >= need or guess >= self.nlist:
                return cand, cum
            guess = min(self.nlist, guess * 2)


def pruned(ranked: tuple[np.ndarray, np.ndarray], dist: np.ndarray, lo: float, hi: float, eps: float) -> np.ndarray:
    """SPANN's query-aware pruning of the nearest lists of ``ranked`` (``dist``: the metric's
    distance from the query to each one's centroid, ascending): those holding ``lo`` rows,
    then the next ones whose centroid lies within (1 + ``eps``) x the nearest one's distance,
    up to ``hi`` rows (:func:`probe_span`).  A query near a dense cluster stops at ``lo``;
    one among many lists at similar distances scans more (docs/indexer.md, "Query-aware
    probe")."""
    cand, cum = ranked
    if not len(cand):
        return cand
    a = int(np.searchsorted(cum, lo)) + 1
    b = int(np.searchsorted(cum, hi)) + 1
    near = int(np.searchsorted(dist, max(float(dist[0]), 0.0) * (1.0 + eps), side="right"))
    return cand[: max(a, min(near, b))]


def near_tail(ranked: tuple[np.ndarray, np.ndarray], k: int, ends: np.ndarray, keep: float, gap: int) -> np.ndarray:
    """The lists a probe of the ``k`` nearest lists of ``ranked`` takes when its tail must lie
    near its head in the file (shared routing: book lists stored in list order; ``ends``:
    where each list ends, in members).  The nearest lists holding ``keep`` rows are taken;
    past them, in rank order, only lists within ``gap`` members of one of those, until they
    hold as many rows as the ``k`` nearest.  A far list alone in the file would cost a cold
    query a request or a read through the gap before it (``stack.RUNS_MAX``); a list next to
    one already read costs its own bytes only, and is about as near (docs/indexer.md,
    "Query-aware probe")."""
    cand, cum = ranked
    a = int(np.searchsorted(cum, keep)) + 1
    if k <= a or gap < 0:
        return cand[:k]
    sizes = np.diff(cum, prepend=0)
    en = ends[cand]
    st = en - sizes
    hs, he = np.sort(st[:a]), np.sort(en[:a])  # lists do not overlap: starts and ends sort alike
    j = np.searchsorted(hs, st[a:])
    far = np.iinfo(np.int64).max // 4
    before = st[a:] - np.where(j > 0, he[np.maximum(j - 1, 0)], -far)
    after = np.where(j < a, hs[np.minimum(j, a - 1)], far) - en[a:]
    idx = np.concatenate([np.arange(a), a + np.flatnonzero(np.minimum(before, after) <= gap)])
    rows = np.cumsum(sizes[idx])
    return cand[idx[: int(np.searchsorted(rows, cum[k - 1])) + 1]]


def probe_span(need: float, total: int, min_rows: int, cap: float | None = None) -> tuple[float, float]:
    """(lo, hi): the rows a pruned probe (:func:`pruned`) scans at least and at most, for a
    fixed probe of ``need`` rows: PRUNE_FLOOR x ``need`` (but ``min_rows``, when ``need``
    holds that many) to ``cap`` (PRUNE_CAP) x ``need`` (at most ``total``)."""
    hi = (PRUNE_CAP if cap is None else cap) * need
    return max(PRUNE_FLOOR * need, min(need, float(min_rows))), min(float(total), hi)


def prefix(ranked: tuple[np.ndarray, np.ndarray], need: float) -> np.ndarray:
    """The nearest lists of ``ranked`` holding together at least ``need`` rows."""
    cand, cum = ranked
    if not len(cand):
        return cand
    return cand[: int(np.searchsorted(cum, need)) + 1]


def train_book(
    sample_rows: np.ndarray,
    total_rows: int,
    list_rows: int,
    metric: str | None,
    seed: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> Book | None:
    """A new :class:`Book` for a namespace of about ``total_rows`` vectors, trained on
    ``sample_rows`` (a uniform sample of them; BOOK_SAMPLE_MAX rows at most are used); None
    when there is no indexable vector."""
    import uuid

    cosine = (metric or "cosine_distance") == "cosine_distance"
    rng = np.random.default_rng(seed)
    x = _prepare(sample_rows[_indexable(sample_rows, cosine)], cosine)
    if not len(x):
        return None
    total = max(int(total_rows), len(x))
    nlist = min(book_nlist(total, list_rows), len(x))
    want = min(BOOK_SAMPLE_MAX, max(SAMPLE_MIN, nlist * SAMPLE_PER_LIST))
    sample = x if len(x) <= want else x[np.sort(rng.choice(len(x), want, replace=False))]
    cb = train(sample, nlist, cosine, rng, progress and (lambda d, t: progress("clusters trained", d, t)))
    # the lists are the int8 centroids the file stores (a quarter of float32's bytes: a cold
    # query reads the whole book), so rows are assigned to what queries rank
    q = quantise_centroids(cb.centroids)
    cb.centroids = q["centroids_i8"].astype(np.float32) * q["centroid_scale"][:, None]
    amax = float(np.quantile(np.abs(sample), 0.9995))
    return Book(uuid.uuid4().hex[:12], cb, (amax if amax > 0 else 1.0) / 127.0, total)


# ---------------------------------------------------------------- query
def list_runs(offsets: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the member runs of lists ``s`` (sorted, unique) in a file whose list
    ``c`` holds members ``offsets[c] .. offsets[c + 1]``: adjacent lists merged, empty ones
    dropped (a segment's lists file, or a namespace's stack: index/stack.py)."""
    a, b = offsets[s].astype(np.int64), offsets[s + 1].astype(np.int64)
    a, b = a[b > a], b[b > a]  # empty lists hold no run
    # a run ends where the next list does not start at its end
    cut = np.flatnonzero(a[1:] != b[:-1]) + 1
    first = np.concatenate([[0], cut]).astype(np.int64)
    last = np.concatenate([cut, [len(a)]]).astype(np.int64) - 1
    return (a[first], b[last]) if len(a) else (a, b)


class Route:
    """The routing structure of one field of one segment (see the module docstring)."""

    def __init__(self, data: bytes, dims: int, metric: str | None):
        z = npyfile.load_npz(data)
        #: the shared :class:`Book` this segment's lists follow (format 3), None: own centroids
        self.book: str | None = str(z["book"]) if "book" in z.files else None
        self._book: Book | None = None  # the Book itself, once attached (:meth:`attach`)
        self.cscale: np.ndarray | None
        if self.book is not None:  # no centroids of its own: the book's
            self.centroids = np.zeros((0, dims), np.int8)
            self.cscale = np.zeros(0, np.float32)
            c32 = self.centroids.astype(np.float32)
        elif "centroids_i8" in z.files:  # int8 rows with a scale each (half the bytes of f16)
            self.centroids = np.ascontiguousarray(z["centroids_i8"], dtype=np.int8)
            self.cscale = np.asarray(z["centroid_scale"], dtype=np.float32)
            c32 = self.centroids.astype(np.float32) * self.cscale[:, None]
        else:  # f16 (indexes built before int8 routes)
            self.centroids = np.ascontiguousarray(z["centroids"], dtype=np.float16)
            self.cscale = None
            c32 = self.centroids.astype(np.float32)
        if "counts" in z.files:  # a route following a book: members per list (routes before: offsets)
            self.offsets = np.concatenate([[0], np.cumsum(z["counts"], dtype=np.int64)])
        else:
            self.offsets = np.asarray(z["offsets"], dtype=np.int64)
        self.scale = float(z["scale"])
        #: bits per dimension of the list codes: 8 (int8) or 4 (int4, packed two a byte)
        self.bits = int(z["bits"]) if "bits" in z.files else 8
        self.implicit = bool(z["implicit"]) if "implicit" in z.files else False
        self.unindexed = np.asarray(z["unindexed"], dtype=np.int64) if "unindexed" in z.files else None
        #: per-list min / max of numeric attributes (index/liststats.py), None in older routes
        self.stats = liststats.ListStats.from_npz(z, len(self.offsets) - 1)
        self.dims = dims
        self.cosine = (metric or "cosine_distance") == "cosine_distance"
        self.c2 = None if self.cosine else np.einsum("ij,ij->i", c32, c32)
        #: bytes a member counts for in the fill gap (FILL_GAP_BYTES): its row's, but an int8
        #: member's for the filter codes, which fill the same members as the int8 lists
        self.gap_unit = 0
        self.filter_codes = False  # this route reads the filter codes (:meth:`filter_copy`)

    def filter_copy(self) -> Route:
        """This (int8, format 2) route for its segment's filter codes (``lists4``: the same
        members in the same order, int4 codes at the int4 step): their lists are ranked and
        filled as the int8 ones (the fill gap counted in members)."""
        import copy

        r = copy.copy(self)
        r.bits = 4
        r.scale = self.scale * 127.0 / INT4_LEVELS
        r.gap_unit = self.row_bytes
        r.filter_codes = True
        return r

    @property
    def nlist(self) -> int:
        return len(self.offsets) - 1

    def nearest_lists(self, q: np.ndarray, probe: float, min_rows: int = 0, prune: float = 0.0) -> np.ndarray:
        """The nearest lists holding together at least ``probe`` x rows members (and at
        least ``min_rows``): the scan cost and cold bytes are a fraction of the rows,
        whatever the list sizes.  ``prune`` > 0: as many as :func:`pruned` takes, between
        :func:`probe_span`'s bounds of that many rows."""
        if self.nlist == 0:
            return np.zeros(0, np.int64)
        g = self.dots(q)
        d = -g if self.cosine else self.c2 - 2 * g
        need = max(1, int(math.ceil(probe * self.rows)), min_rows)
        lo, deep = probe_span(need, self.rows, min_rows, SEGMENT_PRUNE_CAP) if prune > 0 else (need, need)
        if lo >= self.rows:
            return np.arange(self.nlist)
        sizes = np.diff(self.offsets)
        # lists are about rows / nlist each: sort a few times the expected count, not all
        guess = min(self.nlist, max(8, int(4 * deep * self.nlist / max(1, self.rows))))
        while True:
            cand = np.argpartition(d, guess - 1)[:guess] if guess < self.nlist else np.arange(self.nlist)
            cand = cand[np.argsort(d[cand], kind="stable")]
            cum = np.cumsum(sizes[cand])
            if cum[-1] >= deep or guess >= self.nlist:
                if prune > 0:  # the metric's distances: 1 - cos (q is the unit query), or squared euclidean
                    return pruned((cand, cum), d[cand] + (1.0 if self.cosine else float(q @ q)), lo, deep, prune)
                return cand[: int(np.searchsorted(cum, need)) + 1]
            guess = min(self.nlist, guess * 2)

    def attach(self, book: Book) -> bool:
        """Rank this route's lists with ``book`` if it is the one it follows (format 3), so
        the filtered planner (:meth:`matching_lists`) works as for a route with centroids;
        whether the route's lists can be ranked."""
        if book.id == self.book and book.nlist == self.nlist:
            self._book = book
        return self.book is None or self._book is not None

    def distances(self, qq: np.ndarray) -> np.ndarray:
        """Approximate distance of the prepared query ``qq`` to every centroid (smaller = nearer)."""
        if self._book is not None:
            return self._book.distances(qq)
        g = self.dots(qq)
        return -g if self.cosine else self.c2 - 2 * g

    def matching_lists(self, qq: np.ndarray, matches: np.ndarray, need: float) -> np.ndarray:
        """The lists holding a member that passes a filter (``matches``: such members per
        list, :func:`list_matches`), nearest the prepared query first, until they hold
        ``need`` matching members: lists without one are neither read nor scanned."""
        has = np.flatnonzero(matches)
        if not len(has) or need >= int(matches[has].sum()):
            return has
        d = self.distances(qq)[has]
        m = matches[has]
        need = max(1.0, float(need))
        # sort a few times the expected count of lists, not all
        guess = min(len(has), max(16, int(4 * need * len(has) / max(1, int(m.sum())))))
        while True:
            cand = np.argpartition(d, guess - 1)[:guess] if guess < len(has) else np.arange(len(has))
            cand = cand[np.argsort(d[cand], kind="stable")]
            cum = np.cumsum(m[cand])
            if cum[-1] >= need or guess >= len(has):
                return has[cand[: int(np.searchsorted(cum, need)) + 1]]
            guess = min(len(has), guess * 2)

    def dots(self, q: np.ndarray) -> np.ndarray:
        """Centroids . q (numkong's int8 / f16 SIMD: BLAS sgemv here was 8 ms at 5k centroids
        under load, its threads contending; this is ~80 us)."""
        import numkong as nk

        if not self.nlist:
            return np.zeros(0)
        if self.cscale is None:
            return np.asarray(nk.cdist(q.astype(np.float16)[None, :], self.centroids, metric="dot"))[0]
        m = float(np.abs(q).max()) or 1.0
        qi = np.clip(np.rint(q * (127.0 / m)), -127, 127).astype(np.int8)[None, :]
        return np.asarray(nk.cdist(qi, self.centroids, metric="dot"))[0] * self.cscale * (m / 127.0)

    @property
    def rows(self) -> int:
        return int(self.offsets[-1]) if len(self.offsets) else 0

    def runs(self, lists: np.ndarray, fill: float = 0.0) -> list[tuple[int, int]]:
        """Member ranges ``[a, b)`` (in list order) covering ``lists``, adjacent lists merged:
        lists are stored grouped by coarse cluster and chained by nearness within one, so
        probed lists are often adjacent.  ``fill``: the lists *between* runs are scanned
        too where that joins runs (gaps under ``FILL_GAP_BYTES``, then the smallest gaps
        while their members stay within ``fill`` x the probed ones): they are near the
        probed lists, so scanning them buys recall that a larger probe would buy with more
        separate ranges, i.e. more requests of a cold query (see :func:`search`)."""
        a, b = self.run_bounds(np.unique(np.asarray(lists, np.int64)))
        out: list[tuple[int, int]] = list(zip(a.tolist(), b.tolist()))
        if fill > 0 and len(out) > 1:
            from puffer_cli.index.ranged import coalesce

            gap = SHARED_FILL_GAP_BYTES if self.book is not None else FILL_GAP_BYTES
            out = coalesce(out, gap=gap // (self.gap_unit or self.row_bytes), extra=fill)
        return out

    def run_bounds(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of the member runs of the lists ``s`` (sorted, unique), adjacent
        lists merged, no fill: numpy only (a query under shared routing asks every segment
        for the book's chosen lists, a thousand of them at 10M)."""
        return list_runs(self.offsets, s)

    @property
    def code_bytes(self) -> int:
        """Bytes of one member's codes."""
        return self.dims if self.bits == 8 else (self.dims + 1) // 2

    @property
    def code_dtype(self) -> type:
        """The dtype member codes are read as (int8 values; int4: packed bytes)."""
        return np.int8 if self.bits == 8 else np.uint8

    @property
    def levels(self) -> int:
        """The largest code value (query codes take -levels..levels too)."""
        return 127 if self.bits == 8 else INT4_LEVELS

    @property
    def row_bytes(self) -> int:
        """Bytes a member takes in the lists file (its codes, and its row position unless implicit)."""
        return self.code_bytes + (0 if self.implicit else 4)

    def positions_range(self, a: int, b: int) -> tuple[int, int]:
        """Byte range of members ``a..b`` 's row positions in the lists file (empty when
        positions are implicit: member i is row i)."""
        return (0, 0) if self.implicit else (4 * a, 4 * b)

    def codes_range(self, a: int, b: int) -> tuple[int, int]:
        base = 0 if self.implicit else 4 * self.rows
        return base + a * self.code_bytes, base + b * self.code_bytes

    def query_codes(self, q: np.ndarray) -> np.ndarray:
        lv = self.levels
        if self.cosine:
            m = float(np.abs(q).max()) or 1.0
            qc = np.clip(np.rint(q * (lv / m)), -lv, lv).astype(np.int8)[None, :]
        else:
            qc = np.clip(np.rint(q / self.scale), -lv, lv).astype(np.int8)[None, :]
        return qc if self.bits == 8 else pack4(qc)

    def prepare_query(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float32)
        if self.cosine:
            n = float(np.linalg.norm(q.astype(np.float64)))  # |q| may pass the f32 range
            return (q.astype(np.float64) / n).astype(np.float32) if n > 0 else q
        return q


def cdist_args(route: Route) -> dict:
    """numkong.cdist's keyword arguments for ``route``'s codes: the dot product under cosine
    (negated by the caller: smaller = nearer), else the squared distance; int4 codes packed
    two a byte."""
    kw = {"metric": "dot" if route.cosine else "sqeuclidean"}
    if route.bits == 4:  # packed nibbles
        kw["dtype"] = "int4"
    return kw


def score(route: Route, qc: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Approximate distances (smaller = nearer) of one list's codes to the query codes."""
    import numkong as nk

    if not len(codes):
        return np.zeros(0, np.float64)
    got = np.asarray(nk.cdist(qc, codes, **cdist_args(route)))[0]
    return -got if route.cosine else got


class Lists:
    """The lists file of one field of one segment: memory-mapped when the file is local
    or cached, else read by ranges (only the probed lists' bytes)."""

    def __init__(self, route: Route, local=None, fetch=None):
        self.route = route
        self._pos: np.ndarray | None = None
        self._codes: np.ndarray | None = None
        self._items: np.ndarray | None = None
        if local is not None:
            n = route.rows
            # a plain ndarray over the map: slicing a np.memmap costs a subclass round trip each time
            raw = np.asarray(np.memmap(local, dtype=np.uint8, mode="r")) if n else np.zeros(0, np.uint8)
            p = 0 if route.implicit else 4 * n
            self._pos = np.arange(n, dtype=np.uint32) if route.implicit else raw[:p].view("<u4")
            self._codes = raw[p:].view(route.code_dtype).reshape(n, route.code_bytes)
            # the same bytes as one opaque item per member: a fancy-indexed gather copies an
            # item at a time (GloVe-100 at 10M: ~2x faster than gathering 2-d rows)
            self._items = raw[p:].view(np.dtype((np.void, route.code_bytes)))
        self._fetch = fetch  # fetch(list of (start, end)) -> list of bytes-like

    @property
    def local(self) -> bool:
        return self._pos is not None

    @staticmethod
    def ranges(r: Route, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Byte ranges of the member runs: positions (unless implicit), then codes."""
        ranges = [r.positions_range(a, b) for a, b in runs] + [r.codes_range(a, b) for a, b in runs]
        return ranges[len(runs) :] if r.implicit else ranges

    def fetcher(self):
        """The ranged fetch of a lists file that is not local (None when it is)."""
        return self._fetch

    def blocks(self, runs: list[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(positions, codes) of each member run."""
        if self._pos is not None and self._codes is not None:
            pos, codes = self._pos, self._codes
            return [(pos[a:b], codes[a:b]) for a, b in runs]
        r = self.route
        assert self._fetch is not None
        got = self._fetch(Lists.ranges(r, runs))
        n = len(runs)
        if r.implicit:
            return [
                (np.arange(a, b, dtype=np.uint32), np.frombuffer(got[i], dtype=r.code_dtype).reshape(-1, r.code_bytes))
                for i, (a, b) in enumerate(runs)
            ]
        return [
            (
                np.frombuffer(got[i], dtype="<u4"),
                np.frombuffer(got[n + i], dtype=r.code_dtype).reshape(-1, r.code_bytes),
            )
            for i in range(n)
        ]


def list_matches(route: Route, lists: Lists | None, sel: np.ndarray) -> np.ndarray | None:
    """Members of each list that pass a filter (``sel``: a boolean mask over the segment's
    rows), or None when the lists' members are not known without reading the lists file
    (row positions stored and the file not local).  Rows are written in list order, so
    list ``c`` is usually rows ``offsets[c]..offsets[c+1]`` (``implicit``): counting is a
    search of the lists' bounds among the matching rows."""
    if route.nlist == 0:
        return np.zeros(0, np.int64)
    if route.implicit:
        hits = np.flatnonzero(sel[: route.rows])
    elif lists is not None and lists._pos is not None:
        hits = np.flatnonzero(sel[lists._pos])  # members (in list order) whose row passes
    else:
        return None
    return np.diff(np.searchsorted(hits, route.offsets))


FILTER_SCAN_EXP = 0.25  # a filter keeping a fraction f of a segment scans probe_rows x f**-FILTER_SCAN_EXP rows
FILTER_FILL_MAX = 0.3  # ... and fills at most this much (``fill``) between its lists


def filtered_need(base: float, frac: float, want: int) -> float:
    """Matching members a query whose filter keeps the fraction ``frac`` of a segment's
    rows scores (:meth:`Route.matching_lists`): an unfiltered query scans ``base`` rows
    of the segment (:func:`unfiltered_rows`; under shared routing its share of
    :func:`probe_rows`); a filtered one scans the nearest lists holding a match until they
    hold ``f**(1 - FILTER_SCAN_EXP)`` of that many matches, i.e. about ``f**-FILTER_SCAN_EXP``
    times the unfiltered rows (1%: 3.2x, 10%: 1.8x), not ``1/f`` times (see docs/query.md
    for the measurements); at least ``4 x want``."""
    f = min(1.0, max(frac, 1e-9))
    return max(4.0 * want, float(base) * f ** (1.0 - FILTER_SCAN_EXP))


def unfiltered_rows(rows: int, opts: dict) -> float:
    """Rows an unfiltered query scans in a segment of ``rows`` rows with its own IVF
    (format 2): ``probe`` x rows, at least ``probe_min_rows``."""
    return max(opts["probe"] * rows, float(opts["probe_min_rows"]))


RUNS_MAX = 72  # member runs a cold query reads from one segment's lists file at most


def bounded_runs(route: Route, runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``runs`` of a lists file read by range, at most RUNS_MAX of them: the narrowest gaps
    are read (and scanned) through, so a filtered query probing many lists costs a bounded
    number of requests and some more bytes (see ``ranged.bounded``)."""
    from puffer_cli.index.ranged import REQUEST_BYTES, bounded

    if len(runs) <= RUNS_MAX:
        return runs
    return bounded(runs, RUNS_MAX, REQUEST_BYTES // max(1, route.row_bytes))


def served(ahead: tuple[list[tuple[int, int]], list], fetch):
    """A ``Lists`` fetch that serves ranges from those fetched ahead (``(ranges, bytes)``)
    and fetches only the bytes they lack (with ``fetch``, in one batch): a range partly
    read ahead costs only its missing pieces."""
    have = sorted(zip(ahead[0], ahead[1]), key=lambda x: x[0][0])

    def pieces(a: int, b: int) -> list[tuple[int, int, memoryview | None]]:
        """(start, end, bytes or None when missing) covering ``a..b`` in order."""
        out: list[tuple[int, int, memoryview | None]] = []
        at = a
        for (s, e), data in have:
            if e <= at or s >= b:
                continue
            if s > at:
                out.append((at, s, None))
                at = s
            end = min(e, b)
            out.append((at, end, memoryview(data)[at - s : end - s]))
            at = end
            if at >= b:
                break
        if at < b:
            out.append((at, b, None))
        return out

    def go(ranges):
        plan = [pieces(a, b) for a, b in ranges]
        miss = [(s, e) for p in plan for s, e, d in p if d is None]
        got = iter(fetch(miss) if miss else [])
        out: list = []
        for p in plan:
            parts = [d if d is not None else memoryview(next(got)) for _s, _e, d in p]
            out.append(parts[0] if len(parts) == 1 else b"".join(parts))
        return out

    return go


def search(
    route: Route,
    lists: Lists,
    q: np.ndarray,
    want: int,
    probe: float,
    sel: np.ndarray | None = None,
    min_rows: int = 0,
    fill: float = 0.0,
    chosen: np.ndarray | None = None,
    runs: list[tuple[int, int]] | None = None,
    sorted_chosen: np.ndarray | None = None,
    prune: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Row positions of the ``want`` best candidates by approximate distance among the
    members of the probed lists (``sel``: the rows allowed, a boolean mask over the
    segment; at least ``min_rows`` members scanned; ``fill``: see :meth:`Route.runs`),
    their approximate distances in the metric's units (comparable across segments: each
    segment has its own int8 step), and how many members were scanned.  ``chosen``: the
    lists to probe, already picked by the shared :class:`Book` or by a filter's matches
    per list (``probe`` and ``min_rows`` are then unused); ``runs``: their member runs,
    already planned (``chosen`` and ``fill`` are then unused); ``sorted_chosen``: ``chosen``
    sorted and unique (the shared ranking's, sorted once per query); ``prune``: the lists a
    segment's own IVF probes, query-aware (:meth:`Route.nearest_lists`).  Only members whose
    row passes ``sel`` are copied and scored; a cold query reads at most RUNS_MAX runs."""
    if route.nlist == 0 or want <= 0:
        return np.zeros(0, np.int64), np.zeros(0), 0
    qq = route.prepare_query(q)
    qc = route.query_codes(qq)
    if runs is None and sorted_chosen is not None and fill <= 0 and lists.local:
        # shared routing, warm: the book's lists (sorted once per query) to runs and members
        # without a Python step per run
        a, b = route.run_bounds(sorted_chosen)
        return _gathered(route, lists, qc, qq, a, b, sel, want)
    if runs is None:
        if chosen is None:
            chosen = route.nearest_lists(qq, probe, min_rows=max(want, min_rows), prune=prune)
        runs = route.runs(chosen, fill)
        if not lists.local:
            runs = bounded_runs(route, runs)
    if lists.local and runs and (sel is not None or len(runs) > SCORE_PER_RUN_MAX):
        # a memory-mapped file, filtered or many runs (shared routing probes hundreds of small
        # lists): the members of every run gathered by one index and scored in one call
        r = np.asarray(runs, np.int64).reshape(-1, 2)
        return _gathered(route, lists, qc, qq, r[:, 0], r[:, 1], sel, want)
    blocks = lists.blocks(runs)
    if sel is not None:  # only the members passing the filter are copied and scored
        blocks = [_passing(route, sel, run, p, c) for run, (p, c) in zip(runs, blocks)]
    if len(blocks) <= SCORE_PER_RUN_MAX:
        # few runs (fill joins them): a SIMD call each, no copy of the codes
        pos_l, sc_l = [], []
        for p, c in blocks:
            pos_l.append(p)
            sc_l.append(score(route, qc, c))
        pos = np.concatenate(pos_l) if pos_l else np.zeros(0, np.uint32)
        sc = np.concatenate(sc_l) if sc_l else np.zeros(0, np.float64)
    else:
        # many runs: one SIMD call over the gathered runs (a call per run costs ~15 us of
        # Python each, more than the copy)
        pos = np.concatenate([p for p, _c in blocks])
        codes = np.concatenate([c for _p, c in blocks])
        sc = score(route, qc, codes)
    return _best(pos, sc, want, route, qq, int(sum(b - a for a, b in runs)))


def member_index(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The member indexes of the runs ``[a[i], b[i])``, concatenated: one numpy pass, no
    Python step per run."""
    n = b - a
    tot = int(n.sum())
    if not tot:
        return np.zeros(0, np.int64)
    return np.arange(tot, dtype=np.int64) + np.repeat(a - (np.cumsum(n) - n), n)


def _gathered(route: Route, lists: Lists, qc, qq, a: np.ndarray, b: np.ndarray, sel, want: int):
    """:func:`search` over the runs ``[a[i], b[i])`` of a memory-mapped lists file: their
    members gathered by one index (rows as fixed-size opaque items: one copy each), passing
    ``sel`` if given, and scored in one call."""
    assert lists._pos is not None and lists._items is not None
    idx = member_index(a, b)
    scanned = len(idx)
    pos = idx if route.implicit else lists._pos[idx]
    if sel is not None:
        keep = sel[pos]
        idx, pos = idx[keep], pos[keep]
    codes = lists._items[idx].view(route.code_dtype).reshape(len(idx), route.code_bytes)
    return _best(pos, score(route, qc, codes), want, route, qq, scanned)


def _best(pos: np.ndarray, sc: np.ndarray, want: int, route: Route, qq: np.ndarray, scanned: int):
    if len(pos) > want:
        top = np.argpartition(sc, want - 1)[:want]
        pos, sc = pos[top], sc[top]
    return pos.astype(np.int64), approx_distance(route, qq, sc), scanned


def _passing(route: Route, sel: np.ndarray, run: tuple[int, int], p: np.ndarray, c: np.ndarray):
    """The members of one run (positions ``p``, codes ``c``) whose rows pass ``sel``."""
    if route.implicit:  # member i is row i: a slice of the mask, no gather
        idx = np.flatnonzero(sel[run[0] : run[1]])
        return (p, c) if len(idx) == len(p) else (p[idx], c[idx])
    keep = sel[p]
    return (p, c) if keep.all() else (p[keep], c[keep])


def approx_distance(route: Route, qq: np.ndarray, sc: np.ndarray) -> np.ndarray:
    """:func:`score` values in the metric's units: under cosine the codes are
    ``x / scale`` and the query codes ``q * 127 / max|q|``, so their dot is
    ``cos * 127 / (max|q| * scale)``; under euclidean both are ``/ scale``."""
    if route.cosine:
        m = float(np.abs(qq).max()) or 1.0
        return 1.0 + sc * (m * route.scale / route.levels)
    return sc * route.scale**2
