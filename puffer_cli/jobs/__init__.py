"""One command's work each: ingest, export, wal-inspect, branch, recall."""
