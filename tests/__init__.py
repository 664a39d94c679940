"""The test suite (see docs/development.md for how to run it)."""
