"""Training-set size with the test patients fixed: the predecessor's "20 patients are not enough", measured.

`data.train_cases=N` trains on the first N training patients of the split (validation and test patients
unchanged). On the phantom the baseline writes 50 cases (40 training patients in fold 0 of 5, 4 of them for
validation), so every size up to 32 exists; on ACDC (--data) that setting is ignored (72 training patients).
"""

from heartjax.ablation import Study

STUDY = Study(
    name="patients",
    description="mean Dice against the number of training patients (4 .. all), test patients fixed, 2D and 3D",
    baseline=("data.phantom_cases=50",),
    kinds=("2d", "3d"),
    variants={
        "n4": ("data.train_cases=4",),
        "n8": ("data.train_cases=8",),
        "n16": ("data.train_cases=16",),
        "n32": ("data.train_cases=32",),
        "all": ("data.train_cases=None",),
    },
    reference="all",
    x="data.train_cases",
    presets=("default", "acdc", "full"),
)
