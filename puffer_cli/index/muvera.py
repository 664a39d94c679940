"""MUVERA: the index of a multi-vector (``[][N]f32``, ``ann.late_interaction``) attribute.

MUVERA (Jayaram et al., "MUVERA: Multi-Vector Retrieval via Fixed Dimensional
Encodings", NeurIPS 2024) maps a set of token vectors to one fixed-dimensional
encoding (FDE) whose dot product with a query's FDE approximates the Chamfer /
MaxSim similarity of the two sets.  puffer computes the FDE of every document at
index time and feeds it to the dense IVF path (index/ivf.py) as a derived vector;
a query's FDE finds candidates there, and the candidates are re-ranked by exact
MaxSim from their token vectors (search/multivector.py), so ``$dist`` is exact.

The encoding, per repetition r (``REPS`` of them, each with its own random draw):

* SimHash partitions: ``K_SIM`` Gaussian hyperplanes put each token in one of
  ``2**K_SIM`` partitions (the sign bits);
* a random projection (``D_PROJ`` dims, +-1/sqrt(D_PROJ) entries; none when the
  vectors have at most ``D_PROJ`` dims) of each token;
* a document's block of partition p is the *average* of its projected tokens in p;
  an empty partition takes the document's token whose sign bits are nearest p in
  Hamming distance (the paper's ``fill_empty_partitions``);
* a query's block of partition p is the *sum* of its projected tokens in p.

FDE dims = REPS x 2**K_SIM x proj dims.  Under ``cosine_distance`` tokens are
unit-normalised first (MaxSim of cosines); under ``euclidean_squared`` the raw
tokens are encoded (candidates by dot product, re-ranked exactly by distance).

The IVF over the FDEs is a cosine one (the FDE norms of documents vary little: 13 to 17
on GCIDE x GloVe), so candidates come by angle to the query's FDE, and their order is
then exact MaxSim.  Routing is the weak part: FDEs of short word sets cluster weakly,
so the default ``probe`` of a multi-vector field is ``PROBE`` (see IVF_METRIC).

Per segment and field, files (docs/format-index.md):

``mv-{tag}.tok.f32``
    every document's token vectors, row after row (float32 little-endian, rows of
    ``dims``): the re-rank reads the candidates' byte ranges.
``mv-{tag}.off.npy``
    ``rows + 1`` int64 token offsets (row i's tokens are ``off[i]..off[i+1]``).
``mv-{tag}.route.npz`` / ``mv-{tag}.lists``
    the IVF-SQ8 over the FDEs (index/ivf.py's format, cosine).
``mv-{tag}.cent.npz`` (``plaid-1``, added later: segments without it use the FDEs alone)
    token-level candidates as in PLAID (Santhanam et al., "PLAID: An Efficient Engine for
    Late Interaction Retrieval", CIKM 2022): ``centroids`` (k, dims) float16, k-means
    centroids of the segment's token vectors (unit under cosine; about ``TOKENS_PER_CENTROID``
    tokens each, at most ``CENTROIDS_MAX``), and ``codes`` (tokens,) uint16, each token's
    nearest centroid.  A query scores every document by "centroid interaction" (each query
    vector's best centroid similarity over the document's codes, summed; uint8 cells) and
    adds the best to the FDE candidates before the exact re-rank (search/multivector.py).
    Fetched with the manifest (about 2 bytes per token + 200 bytes per centroid).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import polars as pl

from puffer_cli.index import docs as D
from puffer_cli.index import ivf, paged
from puffer_cli.schema import multivec as MVS
from puffer_cli.schema import types

KIND = "muvera-1"
# GCIDE x GloVe-100 (benchmarks/bench_multivector.py), share of the exact top 10 among the
# best 160 / 400 candidates by FDE dot product: (k_sim, d_proj, reps) = (3, 16, 8) 1,024 dims
# 0.54 / 0.71; (4, 16, 8) 0.62 / 0.77; (4, 8, 16) 2,048 dims 0.76 / 0.88; (4, 8, 32) 4,096 dims
# 0.78 / 0.86; (5, 8, 16) 0.75 / 0.86
K_SIM = 4  # SimHash bits per repetition: 16 partitions
D_PROJ = 8  # projected dimensions per partition block
REPS = 16  # repetitions
SEED = 0x6D757665  # the random draws (stored with the segment: queries redraw them)
#: candidates per requested result re-ranked by exact MaxSim (at least; the ann ``rerank``
#: option raises it): an FDE is a coarser proxy than a dense vector's int8 code
RERANK_MIN = 40
#: the IVF over the encodings: cosine (spherical k-means, routing by angle).  GCIDE x GloVe 20k,
#: share of the exact top 10 among 400 candidates at probe 0.02 / 0.1 / 1.0: cosine 0.21 / 0.41 /
#: 0.88; euclidean over encodings augmented for inner product (one extra coordinate
#: sqrt(M^2 - |x|^2)) 0.10 / 0.21 / 0.53 (the int8 step follows that coordinate; spread over 64
#: coordinates: 0.09 / 0.22 / 0.87): encodings of word sets cluster weakly, routing is the loss
IVF_METRIC = "cosine_distance"
#: the default ``probe`` of a multi-vector field (its ``ann.probe`` overrides it): the fraction
#: of the encodings a query scans (see IVF_METRIC for why it is larger than a dense vector's)
PROBE = 0.25
#: token-level candidates (``mv-{tag}.cent.npz``): tokens per k-means centroid.  GCIDE x GloVe,
#: 126k documents, 1.46M tokens, share of the exact top 10 among the best 200 / 400 documents by
#: centroid interaction: 4,096 centroids (356 tokens each) 0.84 / 0.88; 16,384 (89) 0.97 / 0.97
TOKENS_PER_CENTROID = 96
CENTROIDS_MAX = 1 << 16  # codes are uint16
CENTROID_SAMPLE_MAX = 262_144  # k-means training tokens at most
PLAID_KIND = "plaid-1"


@dataclass(frozen=True)
class Params:
    dims: int
    k_sim: int = K_SIM
    d_proj: int = D_PROJ
    reps: int = REPS
    seed: int = SEED

    @property
    def proj_dims(self) -> int:
        return self.dims if self.dims <= self.d_proj else self.d_proj

    @property
    def fde_dims(self) -> int:
        return self.reps * (1 << self.k_sim) * self.proj_dims

    def to_json(self) -> dict:
        return {"dims": self.dims, "k_sim": self.k_sim, "d_proj": self.d_proj, "reps": self.reps, "seed": self.seed}

    @classmethod
    def from_json(cls, d: dict) -> Params:
        return cls(int(d["dims"]), int(d["k_sim"]), int(d["d_proj"]), int(d["reps"]), int(d["seed"]))


def _draws(p: Params) -> tuple[np.ndarray, np.ndarray | None]:
    """(hyperplanes (reps, dims, k_sim), projections (reps, dims, proj) or None)."""
    rng = np.random.default_rng(p.seed)
    planes = rng.standard_normal((p.reps, p.dims, p.k_sim)).astype(np.float32)
    if p.dims <= p.d_proj:
        return planes, None
    signs = rng.integers(0, 2, size=(p.reps, p.dims, p.d_proj)).astype(np.float32) * 2 - 1
    return planes, signs / np.float32(np.sqrt(p.d_proj))


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1.0), 0.0).astype(np.float32)


def _all_codes(x: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """(T, reps) partition of every token in every repetition (one matmul for all)."""
    reps, dims, k = planes.shape
    bits = (x @ planes.transpose(1, 0, 2).reshape(dims, reps * k)).reshape(len(x), reps, k) > 0
    return (bits * (1 << np.arange(k))).sum(axis=2).astype(np.int64)


def _all_proj(x: np.ndarray, proj: np.ndarray | None, reps: int) -> np.ndarray:
    """(T, reps, proj dims) projected tokens (one matmul for all repetitions)."""
    if proj is None:
        return np.broadcast_to(x[:, None, :], (len(x), reps, x.shape[1]))
    _r, dims, dp = proj.shape
    return (x @ proj.transpose(1, 0, 2).reshape(dims, reps * dp)).reshape(len(x), reps, dp)


def doc_fdes(tok: np.ndarray, offsets: np.ndarray, p: Params, cosine: bool) -> np.ndarray:
    """(rows, fde_dims) float32 FDEs of documents (rows without tokens: zeros)."""
    rows = len(offsets) - 1
    b = 1 << p.k_sim
    out = np.zeros((rows, p.reps, b, p.proj_dims), np.float32)
    if not rows or not len(tok):
        return out.reshape(rows, -1)
    x = _unit(tok) if cosine else np.asarray(tok, np.float32)
    lens = np.diff(offsets)
    row_of = np.repeat(np.arange(rows), lens)
    has = np.flatnonzero(lens > 0)
    planes, proj = _draws(p)
    codes = _all_codes(x, planes)
    ys = _all_proj(x, proj, p.reps)
    pop = np.array([bin(i).count("1") for i in range(b)], np.int64)
    kt = np.int32 if len(x) * (p.k_sim + 1) < 2**31 else np.int64
    tix = np.arange(len(x), dtype=kt)[:, None]
    for r in range(p.reps):
        c = codes[:, r]
        y = ys[:, r]
        cell = row_of * b + c
        cnt = np.bincount(cell, minlength=rows * b)
        order = np.argsort(cell, kind="stable")
        filled = np.flatnonzero(cnt)
        flat = np.zeros((rows * b, p.proj_dims), np.float32)
        starts = np.concatenate([[0], np.cumsum(cnt[filled])[:-1]])
        flat[filled] = np.add.reduceat(y[order], starts, axis=0) / cnt[filled][:, None]
        block = flat.reshape(rows, b, p.proj_dims)
        # empty partitions: the row's token nearest in Hamming distance (ties: the first)
        empty = (cnt.reshape(rows, b)[has] == 0).nonzero()
        if len(empty[0]):
            key = pop[c[:, None] ^ np.arange(b)[None, :]].astype(kt) * len(x) + tix  # (T, b)
            best = np.minimum.reduceat(key, offsets[has], axis=0) % len(x)  # (rows with tokens, b)
            block[has[empty[0]], empty[1]] = y[best[empty]]
        out[:, r] = block
    out[lens == 0] = 0.0
    return out.reshape(rows, -1)


def query_fde(qm: np.ndarray, p: Params, cosine: bool) -> np.ndarray:
    """(fde_dims,) float32 FDE of a query's vectors (partition sums, no filling)."""
    b = 1 << p.k_sim
    x = _unit(qm) if cosine else np.asarray(qm, np.float32)
    planes, proj = _draws(p)
    codes = _all_codes(x, planes)
    ys = _all_proj(x, proj, p.reps)
    out = np.zeros((p.reps, b, p.proj_dims), np.float32)
    for r in range(p.reps):
        np.add.at(out[r], codes[:, r], ys[:, r])
    return out.reshape(-1)


def token_centroids(tok: np.ndarray, cosine: bool, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k, dims) float32, codes (tokens,) uint16): hierarchical k-means of the
    token vectors (index/ivf.py's ``train``; unit-normalised under cosine) and every token's
    nearest centroid."""
    x = _unit(tok) if cosine else np.ascontiguousarray(tok, np.float32)
    if not len(x):
        return np.zeros((1, tok.shape[1]), np.float32), np.zeros(0, np.uint16)
    k = int(min(CENTROIDS_MAX, max(1, round(len(x) / TOKENS_PER_CENTROID))))
    rng = np.random.default_rng(seed)
    n = min(len(x), CENTROID_SAMPLE_MAX)
    sample = x if n >= len(x) else x[np.sort(rng.choice(len(x), n, replace=False))]
    book = ivf.train(sample, k, cosine, rng)
    return book.centroids.astype(np.float32), book.assign(x).astype(np.uint16)


def multi_fields(schema: dict) -> list[str]:
    """The multi-vector attributes with a late-interaction index."""
    return [
        k
        for k, v in schema.items()
        if types.is_multi_vector(v["type"]) and isinstance(v.get("ann"), dict) and v["ann"].get("late_interaction")
    ]


def write(w, key, frame: pl.DataFrame, f: str, schema: dict, metric: str | None) -> dict:
    """Write field ``f``'s token file, offsets and FDE IVF for the segment ``frame``;
    the manifest entry (``seg["mv"][f]``)."""
    dims = types.multi_vector_dims(schema[f]["type"])
    assert dims is not None  # f is a multi-vector field
    col = frame.get_column(f) if f in frame.columns else pl.Series(f, [None] * frame.height)
    if col.dtype == pl.Null:
        col = col.cast(pl.List(pl.Array(pl.Float32, dims)))
    tok, offsets = MVS.flatten(col, dims)
    p = Params(dims)
    cosine = (metric or "cosine_distance") == "cosine_distance"
    mat = doc_fdes(tok, offsets, p, cosine)
    opts = ivf.build_options(schema[f])
    route, lists, info = ivf.build(mat, opts["list_rows"], IVF_METRIC)
    tag = D.field_tag(f)
    buf = io.BytesIO()
    np.save(buf, offsets.astype("<i8"))
    cent, codes = token_centroids(tok, cosine)
    cbuf = io.BytesIO()
    np.savez(cbuf, centroids=cent.astype("<f2"), codes=codes.astype("<u2"))
    return {
        "kind": KIND,
        "fde": p.to_json(),
        "fde_dims": p.fde_dims,
        "ivf_metric": IVF_METRIC,
        "metric": metric or "cosine_distance",
        "tokens": int(offsets[-1]),
        "tok": paged.put(w, key(f"mv-{tag}.tok.f32"), tok.astype("<f4").tobytes()),
        "offsets": w.put(key(f"mv-{tag}.off.npy"), buf.getvalue()),
        "route": w.put(key(f"mv-{tag}.route.npz"), route),
        "lists": paged.put(w, key(f"mv-{tag}.lists"), lists),
        "list_rows": opts["list_rows"],
        "plaid": {"kind": PLAID_KIND, "key": w.put(key(f"mv-{tag}.cent.npz"), cbuf.getvalue()), "k": len(cent)},
        **{k: v for k, v in info.items() if k in ("lists_n", "vectors")},
    }


def files(entry: dict) -> list[str]:
    """The store keys of one field's index files."""
    out = paged.files(entry["tok"]) + [entry["offsets"], entry["route"]] + paged.files(entry["lists"])
    return out + ([entry["plaid"]["key"]] if entry.get("plaid") else [])
