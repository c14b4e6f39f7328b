"""Checks run by hand against real data or a finished run: `crosscheck_metrics` (scores against MONAI),
`postprocess_check` (post-processing rules on a run), `phantom_calibration` and `phantom_figure` (the phantom
against real scans; docs/phantom.png), `overlay` (one test case of a run drawn with its contours).
Each is `python -m experiments.checks.NAME`.
"""
