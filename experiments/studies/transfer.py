"""Across modalities on the phantom (the direction of the predecessor's reference BayeSeg): train on CT, test on
the MRI scans of the same test patients, and the reverse, with and without intensity augmentation.

`data.test_phantom_modality=M` scores the test patients of the phantom of modality M (same data.seed, cases and
spacing, so the same anatomy), each modality normalised as its own plan says. A cross-modality run is compared with
the in-domain run on the same test images (ct_to_mri with mri_to_mri), and each without-intensity run with its
with-intensity twin. A cross-modality run trains exactly its in-domain twin's model (only the scored scans
differ), so `experiments.ablate` scores that model instead of training it again (`"model_of"` in its record):
4 trainings per seed, not 6.
"""

from experiments.studies import INTENSITY_P, off
from heartjax.ablation import Study

STUDY = Study(
    name="transfer",
    description="train on phantom CT, test on phantom MRI and the reverse, with / without intensity augmentation",
    kinds=("2d", "3d"),
    variants={
        "ct_to_ct": ("data.phantom_modality=ct", "data.test_phantom_modality=None"),
        "mri_to_mri": ("data.phantom_modality=mri", "data.test_phantom_modality=None"),
        "ct_to_mri": ("data.phantom_modality=ct", "data.test_phantom_modality=mri"),
        "ct_to_mri_no_intensity": ("data.phantom_modality=ct", "data.test_phantom_modality=mri", *off(*INTENSITY_P)),
        "mri_to_ct": ("data.phantom_modality=mri", "data.test_phantom_modality=ct"),
        "mri_to_ct_no_intensity": ("data.phantom_modality=mri", "data.test_phantom_modality=ct", *off(*INTENSITY_P)),
    },
    reference="ct_to_ct",
    compare={"ct_to_mri": "mri_to_mri", "ct_to_mri_no_intensity": "ct_to_mri",
             "mri_to_ct": "ct_to_ct", "mri_to_ct_no_intensity": "mri_to_ct"},
    presets=("smoke", "default"),
    phantom_only=True,
)
