"""Published and measured reference figures that results.md sets beside a run, keyed by label scheme name.

Each entry: `rows` (name, per-structure Dice or None, mean Dice, what it is) and `differences` (what a reader
must keep in mind before comparing). Dice as fractions.
"""

REFERENCES = {
    "acdc": {
        "rows": [
            ("MONAI 2D recipe", {"RV": 0.90, "MYO": 0.87, "LV": 0.95}, 0.91,
             "monai.networks.nets.UNet 16-256, 2 residual units, instance norm, 1.6 M parameters, DiceCE, AdamW "
             "1e-3 cosine, batch 16 of 192^2 at 1.5 mm, 25 min (2550 steps) on a 2-core CPU of the same kind; "
             "unseen ACDC patients"),
            ("nnU-Net (published)", None, 0.915,
             "5-fold cross-validation on the 100 ACDC training patients, ED and ES frames, mean of RV, MYO, LV"),
        ],
        "differences": [
            "This run: one patient-level split and end-diastolic frames only; nnU-Net's figure averages 5 folds and "
            "both ED and ES (ES structures are smaller and usually score lower).",
            "nnU-Net trains 1000 epochs of 250 steps on a GPU; this run's steps and wall time are in the table above.",
            "The MONAI figure's unseen patients need not be this run's test patients.",
            "Dice here is on each scan's original grid, per patient, then averaged; the 'this run' rows use the "
            "largest-component post-processing only where validation chose it (what heartjax.predict applies).",
        ],
    },
}
