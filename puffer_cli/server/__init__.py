"""The turbopuffer-compatible HTTP API (`puffer serve`): views over the library."""
