"""Training-set size with the test patients fixed: the predecessor's "20 patients are not enough", measured.

`data.train_cases=N` trains on a nested random subset of N of the split's training patients (validation and test
patients unchanged; the plan is made from the N). On the default phantom (40 cases, fold 0 of 5: 8 test, 4
validation) "all" is 28 patients and is the `default` preset's own run; on ACDC (--data, `acdc` preset) it is 72.
"""

from heartjax.ablation import Study

STUDY = Study(
    name="patients",
    description="mean Dice against the number of training patients (4 .. all), test patients fixed, 2D and 3D (2.5D at all)",
    kinds=("2d", "3d"),
    variants={
        "n4": ("data.train_cases=4",),
        "n8": ("data.train_cases=8",),
        "n16": ("data.train_cases=16",),
        "all": ("data.train_cases=None", "train.models=['2d', '2.5d', '3d']"),
    },
    reference="all",
    x="data.train_cases",
    presets=("default", "acdc", "full"),
)
