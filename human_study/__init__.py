"""Human rating studies against baselines: define, serve, store, analyse (issue 6)."""

__version__ = "0.1.0"
