"""Feature extractors; each declares `out_features` so heads are sized automatically."""
