"""Difficulty levels of the synthetic phantom: how much patients vary and how much the scans hide.

Level 0 is the first generator's phantom, kept bit for bit: smooth solids, mild pose changes, clean contrast.
Level 1 (the default) adds what makes real whole-heart CT hard (see docs/phantom.md): edgeless valve planes, the
auricles, trabeculae and papillary muscles inside the cavities, annotator-defined ends of the great vessels, tens
of degrees of heart rotation, cardiac phase, body habitus, field-of-view changes, arterial-to-venous contrast
timing, noise and streaks from dense contrast, and motion blur. Level 2 widens every range of level 1.

`VERSION` names the generator: the phantom folder carries it with the level, so an older phantom on disk is never
reused by mistake.
"""

from __future__ import annotations

import dataclasses

VERSION = 2  # bump whenever a level's output changes


@dataclasses.dataclass(frozen=True)
class Level:
    """Ranges (uniform, or +- for single angles) of one difficulty level; mm, degrees, HU."""

    yaw: float = 8.0                      # heart rotation about S-I
    tilt: float = 8.0                     # tilt of the long axis
    roll: float = 12.0                    # roll about the long axis
    v_lv: tuple = (105e3, 170e3)          # end-diastolic LV cavity (mm^3)
    r_pa: tuple = (11.0, 13.5)            # pulmonary trunk radius
    half_width: tuple = (140.0, 162.0)    # chest half width
    fat: tuple = (6.0, 22.0)              # subcutaneous fat
    fov_shift: float = 8.0                # field of view off the heart's centre
    detail: bool = False                  # auricles, inflows, trabeculae, papillary muscles, annotator cuts, phase
    phase: float = 0.0                    # cardiac phase 0 (end-diastole) .. phase (towards end-systole)
    fov_scale: tuple = (1.0, 1.0)         # field of view per axis, relative
    cut_jitter: float = 0.0               # annotator's end of AO / PA labels: up to this many mm short
    trabeculae: tuple = (0, 0)            # thin muscle bundles per ventricle
    label_sd: tuple = (0.0, 0.0)          # annotator: sd of the label boundaries' smooth wander (mm)
    halo: tuple = (3.0, 8.0)              # epicardial and mediastinal fat around the heart (mm)
    blood_left: tuple = (300.0, 440.0)    # CT: left-heart blood pool (HU)
    right_minus_left: tuple = (-140.0, 60.0)
    right_clip: tuple = (290.0, 430.0)
    myo: tuple = (90.0, 140.0)
    fat_hu: tuple = (-110.0, -85.0)
    lung_hu: tuple = (-880.0, -830.0)
    cortex_hu: tuple = (900.0, 1200.0)
    noise: tuple = (15.0, 25.0)           # CT noise sd (HU)
    mixing: tuple = (10.0, 40.0)          # RA/RV inflow swirl amplitude (HU)
    streaks: tuple = (0.0, 0.0)           # CT streak amplitude from dense contrast (HU)
    motion: tuple = (0.0, 0.0)            # extra blur of the heart along one direction (mm sd)
    mri_bias: float = 0.18                # sd of the log bias-field coefficients
    mri_noise: tuple = (0.02, 0.05)       # relative to a blood signal of about 1
    mri_myo: tuple = (0.2, 0.3)           # bSSFP myocardium relative to blood (about 1)
    mri_right: tuple = (0.8, 1.0)         # bSSFP right-heart blood (slower, more turbulent flow: darker)


LEVELS: dict[int, Level] = {
    0: Level(),
    1: Level(yaw=25.0, tilt=20.0, roll=30.0, v_lv=(90e3, 190e3), r_pa=(9.5, 13.0), half_width=(125.0, 175.0),
             fat=(3.0, 35.0), fov_shift=20.0, detail=True, phase=0.7, fov_scale=(0.9, 1.1), cut_jitter=15.0,
             trabeculae=(10, 18), label_sd=(0.5, 1.0), halo=(1.0, 8.0), blood_left=(440.0, 680.0),
             right_minus_left=(-220.0, 60.0), right_clip=(150.0, 680.0), myo=(95.0, 150.0), fat_hu=(-100.0, -65.0),
             lung_hu=(-850.0, -790.0), cortex_hu=(1300.0, 1800.0), noise=(25.0, 45.0), mixing=(20.0, 70.0),
             streaks=(40.0, 120.0), motion=(0.8, 2.2), mri_bias=0.3, mri_noise=(0.03, 0.07), mri_myo=(0.2, 0.32),
             mri_right=(0.62, 0.88)),
    2: Level(yaw=35.0, tilt=30.0, roll=45.0, v_lv=(80e3, 210e3), r_pa=(8.5, 13.0), half_width=(120.0, 180.0),
             fat=(2.0, 45.0), fov_shift=28.0, detail=True, phase=0.9, fov_scale=(0.85, 1.15), cut_jitter=20.0,
             trabeculae=(14, 24), label_sd=(0.8, 1.4), halo=(0.5, 8.0), blood_left=(250.0, 700.0),
             right_minus_left=(-300.0, 80.0), right_clip=(120.0, 700.0), myo=(95.0, 170.0), fat_hu=(-110.0, -65.0),
             lung_hu=(-850.0, -780.0), cortex_hu=(1300.0, 1800.0), noise=(30.0, 55.0), mixing=(30.0, 100.0),
             streaks=(80.0, 200.0), motion=(1.0, 2.5), mri_bias=0.4, mri_noise=(0.05, 0.1), mri_myo=(0.22, 0.42),
             mri_right=(0.55, 0.9)),
}
DEFAULT_LEVEL = 1
