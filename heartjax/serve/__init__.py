"""The serving layer: `predict` (a trained run's models on new scans; `python -m heartjax.predict`), `segment`
(numpy arrays in, labels out) and `scan_checks` (warnings for scans that cannot hold a heart)."""
