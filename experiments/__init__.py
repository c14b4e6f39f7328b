"""Experiment scripts that compose heartjax (no math here)."""
