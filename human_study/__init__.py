"""Human rating studies against baselines (issue 6)."""
