"""bnsearch: fair, tracked, statistically tested Batch Normalization sweeps."""


def __getattr__(name: str):
    # Lazy, so importing bnsearch (e.g. to validate a sweep) loads no pandas/pyarrow.
    if name == "load_results":
        from bnsearch.results import load_results

        return load_results
    raise AttributeError(f"module 'bnsearch' has no attribute {name!r}")
