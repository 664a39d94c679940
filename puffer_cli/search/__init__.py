"""Query execution: the exact engine, the indexed read path, scoring and response shaping."""
