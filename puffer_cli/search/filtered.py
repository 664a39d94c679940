"""Filtered vector search: which lists a filtered ANN query probes, and the cost model
that chooses between that probe and an exact search over the rows that pass.

Once a segment's filter mask is known (the filter's column chunks, read with the IVF
lists it probably needs in one round trip), the rows passing it are counted per IVF
list (``ivf.list_matches``: rows are stored in list order, so this is a search of the
lists' bounds among the matching rows).  The probe then takes the lists nearest the
query *that hold a matching row*, until they hold ``ivf.filtered_need`` matching rows,
and scores only those rows' codes: lists without a match are neither read nor scanned.

Exact search (every passing row's f32 vector) is chosen instead when few rows pass (tests
set ``reader.EXACT_MAX_ROWS`` and ``reader.EXACT_MAX_FRACTION`` to 0 to force the index):

* warm (vectors memory-mapped): at most ``reader.EXACT_MAX_ROWS`` rows, without planning the
  probe: its fixed costs (the mask counted per list over the whole segment, the lists
  ranked) exceed exact scoring there.  2M rows, 2 segments, 100 dims, each query both ways
  in turn in one process (``/work/notes/ab_exact.py``, 2026-12-07, load 1.2): 1% (10k rows a
  segment) exact 4.1-5.0 ms against the probe's 5.5-5.8; 3% (30k) exact 9.9-10.3 against 6.5-7.5;
* cold (vectors by range): at most ``reader.EXACT_MAX_ROWS`` rows or
  ``reader.EXACT_MAX_FRACTION`` of the segment, when the bytes of the passing rows' vectors
  read in at most ``EXACT_RANGES_MAX`` coalesced ranges (``ranged.bounded``) plus
  ``ranged.REQUEST_BYTES`` per request cost less than the probed lists' ranges not yet
  fetched, priced the same way.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from puffer_cli.index import ivf
from puffer_cli.index import ranged as RG
from puffer_cli.index.segment import row_ranges

EXACT_RANGES_MAX = 64  # ranges an exact search reads from one segment's vectors at most
#: cold: members of a probe's runs the read-ahead did not fetch, up to this share of the probe's,
#: are not scanned (another round trip for them is not worth it)
SMALL_MISS = 0.02
#: ... or, when per-list statistics placed the read-ahead, holding at most this share of the
#: passing members the probe wants
GUIDED_MISS = 0.2


@dataclass
class Plan:
    """The probe of one segment for a filtered query: the chosen lists and their member runs."""

    chosen: np.ndarray
    runs: list[tuple[int, int]]
    scanned: int  # members in the runs
    matched: int  # members in the runs passing the filter


def plan(
    route: ivf.Route,
    lists: ivf.Lists,
    q: np.ndarray,
    sel: np.ndarray,
    opts: dict,
    frac: float,
    want: int,
    ahead: tuple | None = None,
    base: float | None = None,
):
    """The filter-aware probe of a segment (:class:`Plan`), or None when the lists'
    members are not known without reading the lists file.  ``ahead``: (byte ranges, bytes)
    of the lists read ahead of the mask; runs they hold are not coalesced with others.
    ``base``: the rows an unfiltered query scans in this segment (default: its own IVF's,
    ``ivf.unfiltered_rows``; under shared routing its share of the namespace's probe)."""
    matches = ivf.list_matches(route, lists if lists.local else None, sel)
    if matches is None:
        return None
    base = ivf.unfiltered_rows(route.rows, opts) if base is None else base
    need = ivf.filtered_need(base, frac, want)
    chosen = route.matching_lists(route.prepare_query(q), matches, need)
    runs = route.runs(chosen, min(opts["fill"], ivf.FILTER_FILL_MAX))
    if not lists.local:
        runs = _cold_runs(route, chosen, runs, ahead)
        if ahead is not None and ahead[0]:
            # the read-ahead missed a sliver of the probe (a list at its edge): scanning
            # without it costs less than a round trip more
            held = _holder(route, ahead)
            kept = [r for r in runs if held(r)]
            miss = sum(b - a for a, b in runs) - sum(b - a for a, b in kept)
            small = miss <= SMALL_MISS * sum(b - a for a, b in runs)
            if not small and len(ahead) > 2 and ahead[2] and route.implicit:
                # placed by per-list statistics (index/liststats.py), the read-ahead misses only
                # the far edge of the probe: scanned without it when it holds few of the matches
                small = _matched(route, matches, runs) - _matched(route, matches, kept) <= GUIDED_MISS * need
            if miss > 0 and small:
                runs = kept
    scanned = int(sum(b - a for a, b in runs))
    matched = _matched(route, matches, runs) if route.implicit else int(matches[chosen].sum())
    return Plan(chosen, runs, scanned, matched)


def _matched(route: ivf.Route, matches: np.ndarray, runs: list[tuple[int, int]]) -> int:
    """Passing members in member runs ``runs`` of an implicit route (runs start and end on
    list bounds)."""
    cs = np.concatenate([[0], np.cumsum(matches)])
    lo = np.searchsorted(route.offsets, [a for a, _b in runs])
    hi = np.searchsorted(route.offsets, [b for _a, b in runs])
    return int(sum(cs[h] - cs[lo_] for lo_, h in zip(lo, hi)))


def _holder(route: ivf.Route, ahead: tuple):
    """``held(run)``: whether the read-ahead's byte ranges hold member run ``run`` whole."""
    have = sorted(ahead[0])
    starts = [a for a, _b in have]

    def inside(a: int, b: int) -> bool:
        i = bisect.bisect_right(starts, a) - 1
        return b <= a or (i >= 0 and have[i][0] <= a and b <= have[i][1])

    def held(run: tuple[int, int]) -> bool:
        return all(inside(a, b) for a, b in ivf.Lists.ranges(route, [run]))

    return held


def _cold_runs(route: ivf.Route, chosen: np.ndarray, runs: list[tuple[int, int]], ahead: tuple | None):
    """``runs`` for a cold read.  With lists read ahead of the mask: a run that fills gaps
    between chosen lists (``Route.runs``' ``fill``) is kept only where the read-ahead holds
    it (its fill budget, spent on a larger probe, filled other gaps), else it is its chosen
    lists alone; runs the read-ahead holds are kept as they are, the others coalesced
    (``ivf.bounded_runs``: reading through gaps the read-ahead skipped would cost those gap
    bytes a round trip of their own)."""
    if not ahead or not ahead[0]:
        return ivf.bounded_runs(route, runs)
    held = _holder(route, ahead)
    base = route.runs(chosen, 0.0)
    split: list[tuple[int, int]] = []
    for a, b in runs:
        if held((a, b)):
            split.append((a, b))
        else:
            split.extend((x, y) for x, y in base if a <= x and y <= b)
    kept = [r for r in split if held(r)]
    rest = [r for r in split if not held(r)]
    out: list[tuple[int, int]] = []
    for a, b in sorted(kept + (ivf.bounded_runs(route, rest) if rest else [])):
        if out and a < out[-1][1]:  # a coalesced run reads through a held one: one run
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def exact_cheaper(pos: np.ndarray, route: ivf.Route, p: Plan, ahead: tuple | None) -> bool:
    """Whether a cold exact search over the passing rows ``pos`` (their vectors by range)
    costs less than the probe ``p``."""
    return exact_cold_cost(pos, route.dims) <= probe_cold_cost(route, p, ahead)


def exact_cold_cost(pos: np.ndarray, dims: int) -> float:
    spans = RG.bounded(row_ranges(np.asarray(pos, np.int64), 4 * dims), EXACT_RANGES_MAX)
    return float(sum(b - a for a, b in spans) + RG.REQUEST_BYTES * len(spans))


def probe_cold_cost(route: ivf.Route, p: Plan, ahead: tuple | None) -> float:
    """Bytes + request cost of the probe's ranges not already fetched ahead."""
    have = sorted(ahead[0]) if ahead is not None else []
    cost = 0.0
    for a, b in ivf.Lists.ranges(route, p.runs):
        if b <= a or any(s <= a and b <= e for s, e in have):
            continue
        cost += (b - a) + RG.REQUEST_BYTES
    return cost
