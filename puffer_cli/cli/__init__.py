"""The `puffer` command: argument parsing, dispatch and output; the one place errors become `Error: ...`."""
