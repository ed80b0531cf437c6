"""Analyses: pure functions over saved per-sample results (no model is run here)."""
