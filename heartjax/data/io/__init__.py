"""Files in and out: `nifti` (read and write, RAS orientation, label codes), `nifti_probe` (header checks before
loading), `filenames` (case ids, pairing), `quirks` (per-dataset fixes), `dataset_meta` (dataset.json, Info.cfg)
and `cli_paths` (a command line's paths, checked before any work)."""
