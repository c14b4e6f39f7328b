"""Phantom against real scans: tissue intensities of the phantom CT and MRI next to a real chest CT and ACDC.

  python -m experiments.checks.phantom_calibration [--ct DIR] [--acdc DIR] [--cases 40] [--difficulty 1] [--out DIR]

The real scans are read from local folders (by default ../shared/data/ct-chest-sample and ../shared/data/acdc-ed)
and nothing derived from them is meant for the repository: the figure and JSON go to --out.

Regions, one rule for the real CT and the phantom CT alike (`ct_regions`), inside a whole-heart mask H (the real
scan's heart mask resampled onto its grid by the affines; on the phantom the LV, RV, LA, RA and MYO labels):
  blood pool  H eroded by 3 mm, HU >= 250
  myocardium  H eroded by 3 mm, 0 <= HU < 250, and at least 3 mm from the blood pool (no partial volume)
  fat         the 1.5-12 mm shell outside H, -250 <= HU < -30
  lung        further than 12 mm from H, HU < -500
  bone        further than 12 mm from H, HU >= 700
The phantom's own tissue medians (from its tissue map) are reported beside its rule medians.

MRI is on an arbitrary scale: intensities are divided by each volume's LV blood-pool median, and the myocardium
and RV blood medians compared as ratios (ACDC labels 1 RV, 2 MYO, 3 LV; phantom cine MRI at 1.5 x 1.5 x 10 mm).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage

from heartjax.common import atomic
from heartjax.data import phantom
from heartjax.data.labels import MMWHS

HERE = Path(__file__).resolve().parents[2]
SHARED = HERE.parent / "shared" / "data"
REGIONS = ("blood", "myocardium", "fat", "lung", "bone")
TISSUE_OF = {"blood": ("blood_left", "blood_right"), "myocardium": ("myocardium",), "fat": ("fat",),
             "lung": ("lung",), "bone": ("cortex",)}
CT_SPACING = (1.5, 1.5, 1.5)  # the real sample's voxel size
CINE_SPACING = (1.5, 1.5, 10.0)  # ACDC-like


def _ball(radius_mm: float, spacing) -> np.ndarray:
    r = [int(np.ceil(radius_mm / s)) for s in spacing]
    g = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    return sum((gi * s) ** 2 for gi, s in zip(g, spacing)) <= radius_mm ** 2


def ct_regions(hu: np.ndarray, heart: np.ndarray, spacing) -> dict[str, np.ndarray]:
    """The calibration regions (boolean masks) of a CT in HU with a whole-heart mask (module docstring)."""
    inner = ndimage.binary_erosion(heart, _ball(3.0, spacing))
    blood = inner & (hu >= 250)
    near_blood = ndimage.distance_transform_edt(~blood, sampling=spacing) < 3.0
    far = ndimage.distance_transform_edt(~heart, sampling=spacing)
    return {
        "blood": blood,
        "myocardium": inner & (hu >= 0) & (hu < 250) & ~near_blood,
        "fat": (far >= 1.5) & (far <= 12.0) & (hu >= -250) & (hu < -30),
        "lung": (far > 12.0) & (hu < -500),
        "bone": (far > 12.0) & (hu >= 700),
    }


def _medians(hu, masks) -> dict[str, float | None]:
    return {k: (float(np.median(hu[m])) if m.any() else None) for k, m in masks.items()}


def real_ct(folder: Path) -> dict:
    """Rule medians, voxel counts and histogram samples of the real chest CT with its (resampled) heart mask."""
    ct = nibabel.load(folder / "ct.nii.gz")
    mask_img = nibabel.load(folder / "heart_mask_model_output.nii.gz")
    hu = np.asarray(ct.dataobj, np.float32)
    to_mask = np.linalg.inv(mask_img.affine) @ ct.affine  # CT voxel -> mask voxel
    idx = np.indices(hu.shape, np.float32).reshape(3, -1)
    coords = to_mask[:3, :3] @ idx + to_mask[:3, 3:]
    heart = ndimage.map_coordinates(np.asarray(mask_img.dataobj, np.float32), coords, order=0, cval=0.0)
    heart = heart.reshape(hu.shape) > 0.5
    spacing = tuple(float(z) for z in ct.header.get_zooms()[:3])
    masks = ct_regions(hu, heart, spacing)
    return {"medians": _medians(hu, masks), "voxels": {k: int(m.sum()) for k, m in masks.items()},
            "noise_sd": _noise_sd(hu, masks["blood"]), "samples": {k: hu[m] for k, m in masks.items()}}


def _noise_sd(img: np.ndarray, region: np.ndarray) -> float | None:
    """Noise sd in a region from neighbouring-voxel differences along x: 1.4826 MAD / sqrt(2) (the same estimator
    for real and phantom; it reads correlated noise low, equally for both)."""
    pair = region[1:] & region[:-1]
    if pair.sum() < 50:
        return None
    d = (img[1:] - img[:-1])[pair]
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def phantom_ct(cases: int, difficulty: int) -> dict:
    """Per-case rule medians and tissue-map medians of phantom CT cases at the real sample's voxel size."""
    heart_codes = [MMWHS.codes[MMWHS.names.index(n)] for n in ("MYO", "LA", "LV", "RA", "RV")]
    rule, truth, noise = {k: [] for k in REGIONS}, {k: [] for k in REGIONS}, []
    samples = {k: [] for k in REGIONS}
    for i in range(cases):
        seed = phantom.case_seed(0, i)
        hu, label, _ = phantom.generate_case(seed, "ct", CT_SPACING, difficulty=difficulty)
        tissue, _, _ = phantom.generate_tissues(seed, CT_SPACING, difficulty=difficulty)
        masks = ct_regions(hu, np.isin(label, heart_codes), CT_SPACING)
        for k, v in _medians(hu, masks).items():
            rule[k].append(v)
            samples[k].append(hu[masks[k]][::max(1, cases)])
        for k, names in TISSUE_OF.items():
            truth[k].append(float(np.median(hu[np.isin(tissue, [phantom.TISSUES.index(n) for n in names])])))
        noise.append(_noise_sd(hu, masks["blood"]))
    return {"rule": rule, "truth": truth, "noise_sd": noise,
            "samples": {k: np.concatenate(v) for k, v in samples.items()}}


def _ratios(img, lv, myo, rv) -> dict[str, float]:
    ref = float(np.median(img[lv]))
    return {"myo_over_lv": float(np.median(img[myo])) / ref, "rv_over_lv": float(np.median(img[rv])) / ref}


def acdc_mri(folder: Path, limit: int) -> dict:
    """Myocardium and RV blood relative to the LV blood pool, per ACDC volume (labels 1 RV, 2 MYO, 3 LV)."""
    out, samples = [], []
    for path in sorted((folder / "images").glob("*.nii.gz"))[:limit]:
        img = np.asarray(nibabel.load(path).dataobj, np.float32)
        lab = np.asarray(nibabel.load(folder / "masks" / path.name.replace(".nii.gz", "_mask.nii.gz")).dataobj)
        out.append(_ratios(img, lab == 3, lab == 2, lab == 1))
        samples.append(img[lab > 0] / np.median(img[lab == 3]))
    return {"cases": out, "samples": np.concatenate(samples)}


def phantom_mri(cases: int, difficulty: int) -> dict:
    """The same ratios on phantom cine MRI (ACDC-like thick slices)."""
    code = {n: MMWHS.codes[MMWHS.names.index(n)] for n in ("LV", "MYO", "RV")}
    out, samples = [], []
    for i in range(cases):
        img, lab, _ = phantom.generate_case(phantom.case_seed(0, i), "cine", CINE_SPACING, difficulty=difficulty)
        out.append(_ratios(img, lab == code["LV"], lab == code["MYO"], lab == code["RV"]))
        heart = np.isin(lab, list(code.values()))
        samples.append(img[heart] / np.median(img[lab == code["LV"]]))
    return {"cases": out, "samples": np.concatenate(samples)}


def summarise(real: dict | None, ph: dict, acdc: dict | None, ph_mri: dict) -> dict:
    """The numbers of docs/phantom.md: medians per region, differences, MRI ratios (no image data)."""
    def med(values):
        v = [x for x in values if x is not None]
        return float(np.median(v)) if v else None

    ct = {}
    for k in REGIONS:
        row = {"phantom_rule": med(ph["rule"][k]), "phantom_tissue": med(ph["truth"][k])}
        if real is not None:
            row["real"] = real["medians"][k]
            row["diff"] = None if None in (row["real"], row["phantom_rule"]) else row["phantom_rule"] - row["real"]
        ct[k] = row
    noise = {"phantom_blood": med(ph["noise_sd"]), "real_blood": None if real is None else real["noise_sd"]}
    mri = {}
    for key in ("myo_over_lv", "rv_over_lv"):
        mri[key] = {"phantom": med([c[key] for c in ph_mri["cases"]])}
        if acdc is not None:
            mri[key]["acdc"] = med([c[key] for c in acdc["cases"]])
    return {"ct_hu_medians": ct, "ct_noise_sd": noise, "mri_ratios": mri}


def figure(path: Path, real, ph, acdc, ph_mri) -> None:
    """Histograms: real against phantom CT per region, and ACDC against phantom MRI (relative to the LV blood)."""
    fig = Figure(figsize=(22, 3.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 6)
    bins = {"blood": (150, 800), "myocardium": (-20, 260), "fat": (-260, -20), "lung": (-1000, -480),
            "bone": (650, 1500)}
    for ax, k in zip(axes, REGIONS):
        lo, hi = bins[k]
        if real is not None:
            ax.hist(real["samples"][k], bins=60, range=(lo, hi), density=True, alpha=0.5, label="real CT")
        ax.hist(ph["samples"][k], bins=60, range=(lo, hi), density=True, alpha=0.5, label="phantom CT")
        ax.set_title(f"{k} (HU)")
    axes[0].legend()
    if acdc is not None:
        axes[5].hist(acdc["samples"], bins=60, range=(0, 1.6), density=True, alpha=0.5, label="ACDC")
    axes[5].hist(ph_mri["samples"], bins=60, range=(0, 1.6), density=True, alpha=0.5, label="phantom cine")
    axes[5].set_title("MRI heart / LV blood median")
    axes[5].legend()
    fig.tight_layout()
    atomic.write_with(path, lambda p: fig.savefig(p, dpi=90, format="png"))


def markdown(summary: dict) -> str:
    """The tables of docs/phantom.md."""
    lines = ["| region | real CT | phantom CT (rule) | phantom - real | phantom tissue map |", "|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    for k, row in summary["ct_hu_medians"].items():
        lines.append(f"| {k} | {fmt(row.get('real'))} | {fmt(row['phantom_rule'])} | {fmt(row.get('diff'))} | "
                     f"{fmt(row['phantom_tissue'])} |")
    n = summary["ct_noise_sd"]
    lines += ["", f"Noise sd in the blood pool (HU): real {fmt(n['real_blood'])}, phantom {fmt(n['phantom_blood'])}",
              "", "| MRI ratio | ACDC | phantom cine |", "|---|---|---|"]
    for k, row in summary["mri_ratios"].items():
        acdc = "-" if row.get("acdc") is None else f"{row['acdc']:.2f}"
        lines.append(f"| {k} | {acdc} | {row['phantom']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.checks.phantom_calibration", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", default=str(SHARED / "ct-chest-sample"), help="folder of the real chest CT")
    parser.add_argument("--acdc", default=str(SHARED / "acdc-ed"), help="ACDC folder (images/, masks/)")
    parser.add_argument("--cases", type=int, default=40, help="phantom cases per modality (default 40)")
    parser.add_argument("--acdc-cases", type=int, default=30, help="ACDC volumes to read (default 30)")
    parser.add_argument("--difficulty", type=int, default=phantom.DEFAULT_LEVEL, help="phantom difficulty level")
    parser.add_argument("--out", default="runs/phantom-calibration", help="where the figure and JSON go")
    args = parser.parse_args(argv)
    ct_dir, acdc_dir = Path(args.ct), Path(args.acdc)
    real = real_ct(ct_dir) if (ct_dir / "ct.nii.gz").exists() else None
    acdc = acdc_mri(acdc_dir, args.acdc_cases) if (acdc_dir / "images").is_dir() else None
    for name, value, folder in (("real CT", real, ct_dir), ("ACDC", acdc, acdc_dir)):
        if value is None:
            print(f"note: no {name} at {folder}: phantom figures only", file=sys.stderr)
    ph, ph_mri = phantom_ct(args.cases, args.difficulty), phantom_mri(args.cases, args.difficulty)
    summary = summarise(real, ph, acdc, ph_mri)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out / "calibration.json", {"difficulty": args.difficulty, "cases": args.cases, **summary})
    figure(out / "calibration.png", real, ph, acdc, ph_mri)
    print(markdown(summary))
    print(f"\nwrote {out / 'calibration.json'} and {out / 'calibration.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
