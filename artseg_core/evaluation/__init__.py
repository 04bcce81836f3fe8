"""Metrics and the evaluation of predicted masks against ground truth."""
