"""The data layer: label schemes, NIfTI I/O, dataset layouts and splits, the phantom, plan, preprocessing, sampling."""
