"""The environment is read at the boundary only (puffer_cli/config.py and the entry points),
and every variable is documented in the README "Environment" table."""

from __future__ import annotations

import re
from pathlib import Path

from puffer_cli import config

ROOT = Path(__file__).resolve().parent.parent
#: the one module that reads os.environ
READER = "config.py"
#: modules that write it, only to hand serve's configuration to its uvicorn worker processes
HANDOFF = {"server/run.py", "cli/querying.py"}
WRITE = re.compile(r"\benviron\[[^]]+\]\s*=|\benviron\.pop\(")


def test_environment_is_read_only_at_the_boundary():
    """config.from_env is the one reader; serve's hand-off to its workers is the only writer."""
    bad = []
    for p in sorted((ROOT / "puffer_cli").rglob("*.py")):
        rel = str(p.relative_to(ROOT / "puffer_cli"))
        if rel == READER:
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if rel in HANDOFF and WRITE.search(code):
                continue
            if re.search(r"\benviron\b|\bgetenv\b", code):
                bad.append(f"puffer_cli/{rel}:{i}: {line.strip()}")
    assert not bad, "environment read below the boundary (use config.from_env):\n" + "\n".join(bad)


def test_every_variable_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Environment") :]
    table = table[: table.index("\n## ", 5)]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    missing = sorted(set(config.VARIABLES) - documented)
    assert not missing, f"README Environment table lacks {missing}"


def test_from_env():
    s = config.from_env({"AWS_ENDPOINT_URL": "http://a:1", "PUFFER_SINGLE_WRITER": "1", "PUFFER_CACHE_DIR": ""})
    assert s.s3_endpoint == "http://a:1" and s.single_writer and s.cache_dir == ""
    s = config.from_env({"AWS_ENDPOINT_URL": "http://a:1", "PUFFER_S3_ENDPOINT": "http://b:2"})
    assert s.s3_endpoint == "http://b:2" and not s.single_writer and s.cache_dir is None
    assert config.from_env({"PUFFER_INDEX_LEASE_TTL": "x"}).index_lease_ttl_s is None


def test_cache_dir_reaches_the_cache_through_set_default_root(tmp_path):
    import subprocess
    import sys

    code = (
        "from puffer_cli import config\nfrom puffer_cli.store import filecache as cache\n"
        "cache.set_default_root(config.from_env().cache_dir)\n"
        "print(cache.get_cache().root)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path), "PUFFER_CACHE_DIR": str(tmp_path / "c")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path / "c")


def test_ivf_routing_values():
    """PUFFER_IVF_ROUTING: shared or segment force a routing; unset or any other value (a
    typo) is the default, auto (shared past ivf.AUTO_SHARED_ROWS rows)."""
    for value, want in (("shared", "shared"), (" Shared ", "shared"), ("segment", "segment"), ("", "auto")):
        assert config.from_env({"PUFFER_IVF_ROUTING": value}).ivf_routing == want
    assert config.from_env({}).ivf_routing == "auto"
    for typo in ("sharde", "1", "none", "AUTO "):
        assert config.from_env({"PUFFER_IVF_ROUTING": typo}).ivf_routing == "auto"
