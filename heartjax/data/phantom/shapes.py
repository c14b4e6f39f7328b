"""The phantom's anatomy: one patient's parameters (`sample_patient`) and the heart, great vessels and airways
as painted parts (`heart_parts`), built from the primitives of `heartjax.data.phantom.geometry` and, at levels
>= 1, the detail of `heartjax.data.phantom.detail`.
"""

from __future__ import annotations

import numpy as np

from heartjax.data.phantom import detail as dd
from heartjax.data.phantom.detail import detail_params
from heartjax.data.phantom.geometry import (AIR, BLOOD_L, BLOOD_R, FAT, IVC, L_AO, L_LA, L_LV, L_MYO, L_PA,  # noqa: F401
                                            L_RA, L_RV, LUNG, LV_FRAME, MUSCLE, MYO, REF_RC, SVC, TISSUES, D0, E2, Field,
                                            Grid, Part, Pose, lvq, polyline, rotation, unit)
from heartjax.data.phantom.levels import LEVELS, Level


def sample_patient(rng: np.random.Generator, level: Level = LEVELS[0]) -> dict:
    """Draw one patient's anatomy and pose parameters (mm and degrees) within a difficulty level's ranges."""
    extra = np.random.default_rng(rng.integers(0, 2 ** 63)) if level.detail else None
    phase = extra.uniform(0.0, level.phase) if extra is not None else 0.0
    v_lv = rng.uniform(*level.v_lv) * (1.0 - 0.45 * phase)  # towards end-systole the cavity shrinks
    aspect = rng.uniform(2.7, 3.2)
    rc = (3 * v_lv / (2 * np.pi * aspect)) ** (1 / 3)
    az, el, roll = rng.uniform(-level.yaw, level.yaw), rng.uniform(-level.tilt, level.tilt), rng.uniform(
        -level.roll, level.roll)
    # patient rotation: yaw about S-I, tilt of the long axis, roll about the long axis
    tilt_axis = np.cross(D0, (0.0, 0.0, 1.0))
    rot = rotation((0, 0, 1), az) @ rotation(tilt_axis, el) @ rotation(D0, roll)
    p = dict(
        s=rc / REF_RC, rot=rot, lc=aspect * rc, rc=rc, t=rng.uniform(8.0, 12.0), apex_thin=rng.uniform(0.6, 0.9),
        f_rv=rng.uniform(0.94, 1.08), f_la=rng.uniform(0.9, 1.12), f_ra=rng.uniform(0.88, 1.12),
        r_ao=rng.uniform(13.5, 16.5), r_pa=rng.uniform(*level.r_pa), halo=rng.uniform(*level.halo),
        midline=15.0 + rng.uniform(-8, 8), spine_y=-72.0 + rng.uniform(-4, 4), front_y=66.0 + rng.uniform(-2, 6),
        half_width=rng.uniform(*level.half_width), fat=rng.uniform(*level.fat), muscle=rng.uniform(8, 14),
        dome=-40.0 + rng.uniform(-8, 8), dome_left=rng.uniform(5, 15), rib_phase=rng.uniform(0, 27),
        rib_drop=rng.uniform(70, 100), fov_shift=rng.uniform(-level.fov_shift, level.fov_shift, 3),
    )
    if extra is not None:
        p["t"] *= 1.0 + 0.35 * phase  # the wall thickens as the cavity empties
        p.update(detail_params(extra, level), phase=phase)
    return p


def _landmarks(p: dict) -> dict:
    """One patient's heart-frame sizes and valve, trunk and airway points (mm before the scale `s`)."""
    s = p["s"]
    av, ao1, ao_top = np.array([6.0, 6, 8]), np.array([14.0, 12, 40]), np.array([14.0, 6, 70])
    pv, pa1, bif = np.array([-12.0, 32, 28]), np.array([-18.0, 18, 52]), np.array([-14.0, 0, 62])
    xm, ys = p["midline"], p["spine_y"]
    tr = (xm - 3.0, ys + 28.0)
    return dict(s=s, lc=p["lc"] / s, rc=p["rc"] / s, t=p["t"] / s, av=av, ao1=ao1, ao_top=ao_top, pv=pv, pa1=pa1,
                bif=bif, n_ao=ao1 - av, n_top=ao_top - ao1, n_pa=pa1 - pv, n_bif=bif - pa1, r_ao=p["r_ao"] / s,
                r_pa=p["r_pa"] / s, halo=p["halo"], xm=xm, ys=ys,
                dx=xm - 33.0, dy=ys + 17.0,  # descending aorta: left-anterior of the vertebral body
                tr=tr, carina=np.array([tr[0], tr[1], 60.0 * s]), detail=bool(p.get("detail")))


def _adder(parts: list):
    """`add(shapes, **kw)`: append a Part per shape (one shape or a list) to `parts`."""
    def add(shapes, **kw):
        parts.extend(Part(sh, **kw) for sh in (shapes if isinstance(shapes, list) else [shapes]))
    return add


def _surroundings(p: dict, ps: Pose, *, s, xm, ys, tr, carina, ao_top, bif, r_ao, r_pa, dx, dy, pv, pa1, av, ao1,
                  n_pa, n_bif, n_ao, n_top, detail, **_) -> list[Part]:
    """Airways, oesophagus and the unlabelled vessels: the lowest painting priority."""
    parts = []
    add = _adder(parts)
    # airways and oesophagus: lowest priority, walls of soft tissue
    add(polyline([(tr[0], tr[1], 260.0), carina], [9.0, 9.0]), tissue=AIR, wall=2.5, wall_tissue=MUSCLE)
    add(polyline([carina, carina + (36.0, -5, -18)], [7.0, 6.0]), tissue=AIR, wall=2.0, wall_tissue=MUSCLE)
    add(polyline([carina, carina + (-48.0, 7, -16)], [6.5, 5.5]), tissue=AIR, wall=2.0, wall_tissue=MUSCLE)
    add(polyline([(xm - 13.0, ys + 21, 260), (xm - 13.0, ys + 21, -260)], [7.0, 7.0]), tissue=MUSCLE, halo=3.0)
    # unlabelled contrast vessels; the aortic arch (heart frame) runs into the descending aorta beside the spine
    add(ps.tube([ao_top, (4, -12, 86), (-12, -38, 86)], [0.9 * r_ao, 0.85 * r_ao, 0.8 * r_ao],
                world_tail=[(dx, dy, 68.0 * s), (dx, dy - 2, -300.0)]), tissue=BLOOD_L, wall=1.5, halo=3.0)
    add(ps.tube([bif, (10, -20, 58), (40, -22, 56), (62, -24, 50)], np.array([0.75, 0.72, 0.65, 0.6]) * r_pa),
        tissue=BLOOD_R, wall=1.5, halo=2.0)
    add(ps.tube([bif, (-34, -18, 66), (-58, -28, 58)], [0.72 * r_pa, 0.68 * r_pa, 0.6 * r_pa]),
        tissue=BLOOD_R, wall=1.5, halo=2.0)
    for a, b in (((28, -30, 24), (55, -35, 32)), ((28, -34, 4), (55, -40, -4)),
                 ((-24, -30, 24), (-50, -34, 32)), ((-24, -34, 4), (-50, -40, -4))):
        add(ps.tube([a, b], [6.0, 5.5]), tissue=BLOOD_L, wall=1.5, halo=2.0)
    add(ps.tube([(44, 2, 140), (42, -2, 18)], [10.0, 10.0]), tissue=SVC, wall=1.5, halo=3.0)
    add(ps.tube([(36, -14, -160), (40, -8, -18)], [12.0, 12.0]), tissue=IVC, wall=1.5, halo=2.0)
    if detail:  # unlabelled lumen under the labelled trunks, so the annotator's label ends are free to move
        add(ps.tube([pv, pa1, bif], [r_pa, r_pa, 0.95 * r_pa], cut_start=n_pa, cut_end=n_bif), tissue=BLOOD_R,
            wall=1.5, halo=3.0)
        add(ps.tube([av, ao1, ao_top], [r_ao, 1.05 * r_ao, r_ao], cut_start=n_ao, cut_end=n_top), tissue=BLOOD_L,
            wall=1.5, halo=3.0)
    return parts


def _chambers(p: dict, ps: Pose, *, s, lc, rc, t, halo, pv, pa1, bif, av, ao1, ao_top, n_pa, n_bif, n_ao, n_top,
              r_ao, r_pa, detail, **_) -> list[Part]:
    """The labelled chambers and vessels, lowest priority first."""
    parts = []
    add = _adder(parts)
    base = (D0, np.zeros(3))
    eye = np.eye(3)
    add(ps.ellipsoid((42, -6, 0), eye, np.array([24, 22, 28]) * p["f_ra"]), tissue=BLOOD_R, label=L_RA, wall=2.0,
        wall_tissue=MYO, halo=halo)
    add(ps.ellipsoid((3, -24, 15), eye, np.array([34, 17, 24]) * p["f_la"]), tissue=BLOOD_L, label=L_LA, wall=2.0,
        wall_tissue=MYO, halo=halo)
    if detail:  # the auricles, and inflows that meet the ventricles without a wall (edgeless valve planes)
        parts.extend(dd.atrial_detail(p, ps, halo))
    add(ps.tube([lvq(12, 30, -18), pv], [13.0, 12.0], cut_end=n_pa), tissue=BLOOD_R, label=L_RV, wall=3.0,
        wall_tissue=MYO, halo=halo)
    # RV: an ellipsoid around the septal side of the LV; the LV (painted later) carves the crescent, and a cut
    # where the crescent is still ~4 mm thick keeps its tips from breaking into voxel slivers
    r_out = rc + t
    rv_rad = np.array([0.68 * lc, r_out + 5.0, r_out + 8.0]) * p["f_rv"]
    rv_cuts = [(D0, -8.0 * D0), (E2, -0.1 * r_out * E2)]
    add(ps.ellipsoid(lvq(0.12 * lc, 0.36 * r_out, 0), LV_FRAME, rv_rad, rv_cuts), tissue=BLOOD_R, label=L_RV,
        wall=3.0, wall_tissue=MYO, halo=halo)
    pa_end, ao_end = bif, ao_top
    if detail:  # the annotator ends the labels a little short of the bifurcation level (docs/phantom.md)
        pa_end = bif - p["pa_cut"] / s * unit(n_bif)
        ao_end = ao_top - p["ao_cut"] / s * unit(n_top)
    add(ps.tube([pv, pa1, pa_end], [r_pa, r_pa, 0.95 * r_pa], cut_start=n_pa, cut_end=n_bif), tissue=BLOOD_R,
        label=L_PA, wall=1.5, halo=3.0)
    add(ps.tube([av, ao1, ao_end], [r_ao, 1.05 * r_ao, r_ao], cut_start=n_ao, cut_end=n_top), tissue=BLOOD_L,
        label=L_AO, wall=1.5, halo=3.0)
    outer = np.array([lc + t * p["apex_thin"], rc + t, 0.95 * rc + t])
    add(ps.ellipsoid(np.zeros(3), LV_FRAME, outer, [base]), tissue=MYO, label=L_MYO, halo=halo)
    add(ps.ellipsoid(np.zeros(3), LV_FRAME, np.array([lc, rc, 0.95 * rc]), [base]), tissue=BLOOD_L, label=L_LV)
    add(ps.tube([lvq(18, 8, 0), av], [12.0, 13.0], cut_end=n_ao), tissue=BLOOD_L, label=L_LV)
    if detail:
        parts.extend(dd.cavity_detail(p, ps, lc, rc, t, rv_rad, lvq(0.12 * lc, 0.36 * r_out, 0)))
    return parts


def heart_parts(p: dict) -> list[Part]:
    """All heart, great-vessel and airway parts in painting priority order (later parts win)."""
    ps, marks = Pose(p), _landmarks(p)
    return _surroundings(p, ps, **marks) + _chambers(p, ps, **marks)
