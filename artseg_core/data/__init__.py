"""Synthetic data with exact ground truth (phantom fields and plates)."""
