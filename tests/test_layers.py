"""The import layers of puffer_cli (docs/development.md "Layers"), checked on the source.

An AST walk over every module of the package (imports inside functions included,
relative and absolute forms) builds the import graph and asserts:

(a) no import cycle between modules;
(b) no module imports a private name (``_x``) of another module, or reads
    ``module._x`` of a module it imported;
(c) every import points down :data:`LAYERS` (or stays in its own layer).

:data:`LAYERS` is the one place the order is written down; docs/development.md
mirrors it as a table.  :data:`ALLOWED` lists the known exceptions, each with its
reason; keep it short and remove an entry when its reason goes away.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = "puffer_cli"
ROOT = Path(__file__).resolve().parent.parent / PKG

# Top to bottom: each entry is a package (or a module of the package root) and what it owns.  A module
# may import modules of its own package (without cycles) or of any package below it, never one above.
# A new module is placed by its folder.
LAYERS: list[tuple[str, str]] = [
    ("puffer_cli.cli", "the puffer command (a view over the library)"),
    ("puffer_cli.server", "the HTTP API (a view over the library)"),
    ("puffer_cli", "the public API: connect, the handle and result types, the errors"),
    ("puffer_cli.db", "the library face: connect, DB, NamespaceHandle"),
    ("puffer_cli.jobs", "one command's work: ingest, export, wal-inspect, branch, recall"),
    ("puffer_cli.search", "query execution: exact engine, indexed read path, scoring, responses"),
    ("puffer_cli.index", "build, publish, collect and open index generations; the index file formats"),
    ("puffer_cli.wal", "the WAL codec, the commit protocol, write compilation, replay"),
    ("puffer_cli.query", "the query model and its parsers"),
    ("puffer_cli.filters", "the filter language"),
    ("puffer_cli.schema", "attribute types, declared schemas, typed write frames"),
    ("puffer_cli.text", "text analysis and exact BM25"),
    ("puffer_cli.store", "object-store backends, key layout, the local file cache"),
    ("puffer_cli.caches", "the registry of in-process caches"),
    ("puffer_cli.cores", "one query's CPU work over the machine's cores (a process-wide thread pool)"),
    ("puffer_cli.config", "the one reader of the environment"),
    ("puffer_cli.limits", "constants and the request budget"),
    ("puffer_cli.errors", "typed exceptions, each with its HTTP status"),
]

# Listed in LAYERS before they exist (being written on other branches).
PLANNED: set[str] = set()

# Known exceptions: (importer, imported) -> reason.  Exempt from (a) and (c).
ALLOWED: dict[tuple[str, str], str] = {}

# Known private-name uses across modules, "file:line"-free so an edit elsewhere does not break
# them: (module, "other._name") -> reason.
WHY_SPARSE = "fts.py's blk-1 codecs, reused by the sparse index (made public once fts.py's parallel rework lands)"
ALLOWED_PRIVATE: dict[tuple[str, str], str] = {
    ("puffer_cli.index.sparse", "F._dict_block"): WHY_SPARSE,
    ("puffer_cli.index.sparse", "F._pack"): WHY_SPARSE,
    ("puffer_cli.index.sparse", "F._read_dict_block"): WHY_SPARSE,
    ("puffer_cli.index.sparse", "F._unpack"): WHY_SPARSE,
    ("puffer_cli.index.sparse", "F._widths"): WHY_SPARSE,
}


def _modules() -> dict[str, Path]:
    mods = {}
    for p in sorted(ROOT.rglob("*.py")):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


MODS = _modules()


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT.parent))


def _walk(mod: str):
    """(line, imported module, imported name or None, bound local name) per import of
    a puffer_cli module or name; and the module's AST."""
    path = MODS[mod]
    tree = ast.parse(path.read_text(), str(path))
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == PKG or a.name.startswith(PKG + "."):
                    out.append((node.lineno, a.name, None, a.asname or a.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == PKG or target.startswith(PKG + ".")):
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODS:  # `from . import x`: the module x
                    out.append((node.lineno, sub, None, a.asname or a.name))
                else:
                    out.append((node.lineno, target, a.name, a.asname or a.name))
    return out, tree


def _graph():
    """importer -> imported -> first line; plus private-name findings."""
    edges: dict[str, dict[str, int]] = defaultdict(dict)
    private = []
    for mod, path in MODS.items():
        imports, tree = _walk(mod)
        bound = {}
        for line, target, name, local in imports:
            if target != mod:
                edges[mod].setdefault(target, line)
            if name is not None and name.startswith("_") and not name.startswith("__") and target != mod:
                private.append(f"{_rel(path)}:{line}: imports private name {name} from {target}")
            if name is None and "." not in local:
                bound[local] = target
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and bound[node.value.id] != mod
                and (mod, f"{node.value.id}.{node.attr}") not in ALLOWED_PRIVATE
            ):
                private.append(
                    f"{_rel(path)}:{node.lineno}: uses private {node.value.id}.{node.attr} of {bound[node.value.id]}"
                )
    return edges, private


EDGES, PRIVATE = _graph()


def _layer(mod: str) -> int:
    """Index in LAYERS of the package (or root module) that holds ``mod``."""
    best = -1
    for i, (pkg, _) in enumerate(LAYERS):
        if (mod == pkg or mod.startswith(pkg + ".")) and (best < 0 or len(pkg) > len(LAYERS[best][0])):
            best = i
    return best


LEVEL = {m: _layer(m) for m in MODS}


def _where(a: str, b: str) -> str:
    return f"{_rel(MODS[a])}:{EDGES[a][b]}"


def test_every_module_is_placed():
    """Each module sits in a package LAYERS lists; the package root holds only the modules it names."""
    loose = sorted(m for m in MODS if m != PKG and LAYERS[LEVEL[m]][0] == PKG)
    assert not loose, f"modules in no package of tests/test_layers.py LAYERS (move them into one): {loose}"
    stale = sorted(p for p, _ in LAYERS if p not in MODS and not any(m.startswith(p + ".") for m in MODS))
    assert not stale, f"LAYERS names packages that do not exist: {stale}"
    assert all(k[0] in MODS and k[1] in EDGES[k[0]] for k in ALLOWED), "stale ALLOWED entry"


def test_no_private_names_across_modules():
    assert not PRIVATE, "private names used across modules:\n" + "\n".join(PRIVATE)


def test_imports_point_down_the_layers():
    bad = []
    for a, outs in EDGES.items():
        for b in outs:
            if (a, b) in ALLOWED or a not in LEVEL or b not in LEVEL:
                continue
            if LEVEL[b] < LEVEL[a]:
                bad.append(
                    f"{_where(a, b)}: {a} ({LAYERS[LEVEL[a]][0]}) imports {b} ({LAYERS[LEVEL[b]][0]}), a layer above it"
                )
    assert not bad, "imports against the layer order (tests/test_layers.py LAYERS):\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {a: [b for b in outs if (a, b) not in ALLOWED and b in MODS] for a, outs in EDGES.items()}
    cycles, seen = [], set()
    for start in sorted(MODS):
        # depth-first from start, reporting a path back to start
        stack = [(start, [start])]
        visited = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    key = frozenset(path)
                    if key not in seen:
                        seen.add(key)
                        cycles.append(
                            " -> ".join(f"{x} ({_where(x, y)})" for x, y in zip(path, path[1:] + [start]))
                            + f" -> {start}"
                        )
                elif nxt not in visited:
                    visited.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_allow_list_entries_say_why():
    """Every known exception carries its reason (the lists are empty today: keep them so)."""
    for reason in [*ALLOWED.values(), *ALLOWED_PRIVATE.values()]:
        assert len(reason) > 20, reason


#: the only modules that talk to the object-store libraries
STORE_MODULES = {m for m in MODS if m == "puffer_cli.store" or m.startswith("puffer_cli.store.")}


def test_only_the_store_modules_talk_to_fsspec():
    bad = []
    for mod, path in MODS.items():
        if mod in STORE_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for n in names:
                if n.split(".")[0] in ("fsspec", "s3fs", "botocore", "aiobotocore"):
                    bad.append(f"{_rel(path)}:{node.lineno}: imports {n}")
    assert not bad, "only the store modules may import fsspec/s3fs:\n" + "\n".join(bad)
