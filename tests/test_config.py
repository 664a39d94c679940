"""The environment is read at the boundary only (puffer_cli/config.py and the entry points),
and every variable is documented in the README "Environment" table."""

from __future__ import annotations

import re
from pathlib import Path

from puffer_cli import config

ROOT = Path(__file__).resolve().parent.parent
#: modules that may read os.environ: the boundary helper and the entry points
#: (index/builder.py: the lead's PUFFER_INDEX_GC_GRACE / test hooks, moving to config.py)
# index/hooks.py: the SIGKILL/pause test hooks read the environment where they fire
# cli/*.py: the CLI's command modules (the CLI is the boundary; serve hands options to workers)
BOUNDARY = {
    *("config.py", "db.py", "server/run.py", "index/builder.py", "index/hooks.py"),
    *("cli/main.py", "cli/options.py", "cli/data.py", "cli/querying.py", "cli/indexing.py"),
}


def test_environment_is_read_only_at_the_boundary():
    bad = []
    for p in sorted((ROOT / "puffer_cli").rglob("*.py")):
        rel = str(p.relative_to(ROOT / "puffer_cli"))
        if rel in BOUNDARY:
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if re.search(r"\benviron\b|\bgetenv\b", line):
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
