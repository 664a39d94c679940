"""The query model and the parsers of a turbopuffer query body (rank_by, filters, computed attributes)."""
