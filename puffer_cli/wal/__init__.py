"""The write path and a namespace's state: the WAL entry codec, the commit protocol, write compilation and replay."""
