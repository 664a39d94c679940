"""The index: segments (attributes, IVF-SQ8 vectors, FTS postings), their building, merging and GC."""
