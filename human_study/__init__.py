"""Human rating studies against baselines: define, serve, store, analyse."""

__version__ = "0.1.0"
