"""Text analysis and exact BM25 with namespace-global statistics."""
