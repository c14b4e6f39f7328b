"""The built-in synthetic whole-heart phantom: CT and MRI volumes with MM-WHS labels, the default dataset.

Each case is a chest with all seven MM-WHS structures (LV, RV, LA, RA cavities, LV myocardium, ascending aorta,
pulmonary artery trunk) drawn from implicit shapes (`heartjax.data.phantom.shapes`), with the surroundings that make
intensity alone insufficient (`heartjax.data.phantom.chest`): mediastinal and subcutaneous fat, lungs, ribs, sternum,
spine, liver dome, and contrast-filled vessels that are not labelled (aortic arch and descending aorta, pulmonary
branches and veins, SVC, IVC), plus the unlabelled thin RV free wall. Patients vary in size, pose, chamber
proportions, wall thickness and contrast timing; how much, and how much of real anatomy and acquisition is drawn,
is the difficulty level (`heartjax.data.phantom.levels`; scanner models in `heartjax.data.phantom.render`). Files
follow the MM-WHS layout and are stored in LPS-like voxel order, as DICOM-derived scans are, so loaders must
reorient them to RAS.

Cases are written in parallel, one process per core (`write_phantom(workers=)`, `--workers`); each case is a pure
function of its seed, so the files are the same bytes whatever the number of processes.

Command line:
  python -m heartjax.phantom --out DIR --cases 20 --modality ct|mri|cine [--difficulty 1] [--seed 0]
                             [--spacing 1 1 1.6] [--overwrite] [--workers N]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel
import numpy as np
from scipy import ndimage

from heartjax.common import atomic
from heartjax.data.phantom import render
from heartjax.data.phantom import shapes as shp
from heartjax.data.phantom.levels import DEFAULT_LEVEL, LEVELS, VERSION, Level
from heartjax.data.labels import MMWHS
from heartjax.data.phantom.chest import lung_vessels, paint_chest
from heartjax.data.phantom.detail import annotate
from heartjax.common.errors import HeartjaxError

MODALITIES = {"ct": "ct_train", "mri": "mr_train", "cine": "mr_train"}  # cine: thick, shifted MRI slices
TISSUES = shp.TISSUES  # tissue class names, indexed by the values of `generate_tissues`
DEFAULT_SPACING = (1.0, 1.0, 1.6)
DEFAULT_FOV_MM = (200.0, 200.0, 160.0)
FIRST_CASE = 1001
PARALLEL_VOXELS = 2 ** 23  # write_phantom's default: processes from this many voxels in all (~2 s of one core)


def _check_settings(modality, spacing, fov_mm) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate modality, spacing and field of view; return them as float tuples."""
    if modality not in MODALITIES:
        raise HeartjaxError(f"modality={modality!r} is unknown; choose one of {sorted(MODALITIES)}")
    out = []
    for name, value in (("spacing", spacing), ("fov_mm", fov_mm)):
        try:
            vals = tuple(float(v) for v in value)
        except (TypeError, ValueError):
            raise HeartjaxError(f"{name}={value!r} must be three numbers in mm (x y z)") from None
        if len(vals) != 3 or not all(np.isfinite(v) and v > 0 for v in vals):
            raise HeartjaxError(f"{name}={value!r} must be three positive numbers in mm (x y z)")
        out.append(vals)
    return out[0], out[1]


def _check_seed(seed) -> int:
    """A seed must be a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise HeartjaxError(f"seed={seed!r} must be a non-negative integer")
    return int(seed)


def _paint(grid: shp.Grid, p: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tissue classes (uint8) and label indices (uint8, 0..7) on the grid; later paints win."""
    tissue = np.zeros(grid.shape, np.uint8)
    label = np.zeros(grid.shape, np.uint8)
    paint_chest(tissue, grid, p)
    parts = shp.heart_parts(p)
    fields = [shp.Field(grid, part.shape, max(part.halo, part.wall)) for part in parts]
    for part, field in zip(parts, fields):
        if part.halo:  # mediastinal and epicardial fat displaces lung only
            field.paint([(tissue, shp.FAT)], hi=part.halo, only=(tissue, shp.LUNG))
    lung = np.flatnonzero(tissue == shp.LUNG)
    starts = np.zeros((0, 3))
    if len(lung):  # peripheral lung vessels start at random lung voxels
        picks = np.unravel_index(lung[rng.integers(0, len(lung), 600)], grid.shape)
        starts = np.stack([grid.axis(k)[picks[k]] for k in range(3)], axis=1).astype(np.float64)
    for part in lung_vessels(p, rng, starts):
        shp.Field(grid, part.shape, 0.0).paint([(tissue, part.tissue)], only=(tissue, shp.LUNG))
    for part, field in zip(parts, fields):  # all walls first, so a neighbour's lumen opens its junctions
        if part.wall:
            field.paint([(tissue, part.wall_tissue), (label, 0)], hi=part.wall, lo=0.0)
    for part, field in zip(parts, fields):
        field.paint([(tissue, part.tissue), (label, part.label)], only=(label, part.inside) if part.inside else None)
    _drop_fragments(tissue, label)
    return tissue, label


def _drop_fragments(tissue: np.ndarray, label: np.ndarray) -> None:
    """Keep each structure's largest face-connected piece: where thin shapes meet (the RV crescent's tips) a
    grid can leave voxel slivers, which become unlabelled wall."""
    for index, box in enumerate(ndimage.find_objects(label), start=1):
        if box is None:
            continue
        pieces, count = ndimage.label(label[box] == index)
        if count > 1:
            stray = pieces != np.argmax(np.bincount(pieces.ravel())[1:]) + 1
            stray &= pieces > 0
            label[box][stray] = 0
            tissue[box][stray] = shp.MYO


def _check_difficulty(difficulty) -> Level:
    """The Level of a difficulty setting (an int key of LEVELS)."""
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, np.integer)) or difficulty not in LEVELS:
        raise HeartjaxError(f"difficulty={difficulty!r} is unknown; choose one of {sorted(LEVELS)} "
                            "(0: the first generator's easy phantom, 1: realistic, the default; 2: harder)")
    return LEVELS[int(difficulty)]


def cine_subslices(spacing_z: float) -> int:
    """Thin sub-slices (odd, about 2 mm each) averaged into one thick cine slice."""
    return max(1, int(np.ceil(spacing_z / 2.0))) | 1


def _build(seed, modality, spacing, fov_mm, difficulty):
    """Validate, draw the patient and paint it: (grid, patient, tissue, label indices, rng, level, sub-slices)."""
    spacing, fov_mm = _check_settings(modality, spacing, fov_mm)
    level = _check_difficulty(difficulty)
    rng = np.random.default_rng(_check_seed(seed))
    p = shp.sample_patient(rng, level)
    sub = cine_subslices(spacing[2]) if modality == "cine" else 0
    fov = np.asarray(fov_mm) * p.get("fov_scale", 1.0)
    shape = tuple(max(1, int(round(f / s))) for f, s in zip(fov, spacing))
    centre = np.array([0.0, 5.0, 5.0]) + p["fov_shift"]  # the heart, with the usual centring slack
    origin = centre - (np.array(shape) - 1) / 2 * np.array(spacing)
    if sub:  # paint on thin slices; render_mri averages them into the thick ones
        origin[2] -= (sub // 2) * spacing[2] / sub
        grid = shp.Grid((shape[0], shape[1], shape[2] * sub), (spacing[0], spacing[1], spacing[2] / sub),
                        tuple(float(o) for o in origin))
    else:
        grid = shp.Grid(shape, spacing, tuple(float(o) for o in origin))
    tissue, label = _paint(grid, p, rng)
    if level.detail:
        label = annotate(label, grid.spacing, p, level.label_sd)
    return grid, p, tissue, label, rng, level, sub


def _out_grid(grid: shp.Grid, sub: int) -> shp.Grid:
    """The written grid: the painted one, or for cine its thick slices (centred on each run's middle slice)."""
    if not sub:
        return grid
    origin = (grid.origin[0], grid.origin[1], grid.origin[2] + (sub // 2) * grid.spacing[2])
    return shp.Grid((grid.shape[0], grid.shape[1], grid.shape[2] // sub),
                    (grid.spacing[0], grid.spacing[1], grid.spacing[2] * sub), origin)


def _affine(grid: shp.Grid, seed: int) -> np.ndarray:
    """RAS voxel -> world affine; the world is shifted by an arbitrary per-case table position."""
    table = np.random.default_rng([_check_seed(seed), 7]).uniform(100.0, 300.0)
    affine = np.diag([*grid.spacing, 1.0])
    affine[:3, 3] = np.asarray(grid.origin) - (0.0, 0.0, table)
    return affine


def generate_case(seed: int, modality: str = "ct", spacing=DEFAULT_SPACING, fov_mm=DEFAULT_FOV_MM,
                  difficulty: int = DEFAULT_LEVEL):
    """Generate one synthetic chest scan with MM-WHS labels.

    Args:
      seed: non-negative int; the case is a pure function of (seed, modality, spacing, fov_mm), and the anatomy
        of (seed, spacing, fov_mm): a CT and an MRI with the same seed show the same patient.
      modality: "ct" (Hounsfield units, contrast-enhanced), "mri" (bSSFP-like, arbitrary scale) or "cine" (the MRI
        in thick slices of spacing[2] mm, each averaged over ~2 mm sub-slices and shifted in-plane).
      difficulty: a key of `heartjax.data.phantom.levels.LEVELS`; 0 is the first generator's phantom, bit for bit.
      spacing: voxel size in mm (x, y, z), RAS axis order.
      fov_mm: field of view in mm (x, y, z); the grid has round(fov_mm / spacing) voxels per axis.

    Returns:
      image: float32 [X, Y, Z] in RAS voxel order (CT values are whole Hounsfield units).
      label: uint16 [X, Y, Z] MM-WHS codes (0, 205, 420, 500, 550, 600, 820, 850).
      affine: float64 [4, 4] voxel -> world (mm, RAS) of these RAS arrays, diag(spacing) plus an origin.
    """
    grid, p, tissue, label, rng, level, sub = _build(seed, modality, spacing, fov_mm, difficulty)
    if modality == "ct":
        image = render.render_ct(tissue, label, grid, p, rng, level)
    else:
        image, label = render.render_mri(tissue, label, grid, p, rng, level, sub)
    return image, np.array([0, *MMWHS.codes], np.uint16)[label], _affine(_out_grid(grid, sub), seed)


def generate_tissues(seed: int, spacing=DEFAULT_SPACING, fov_mm=DEFAULT_FOV_MM, difficulty: int = DEFAULT_LEVEL):
    """The tissue classes behind `generate_case` (same seed, spacing and fov_mm), for analysis and tests.

    Returns:
      tissue: uint8 [X, Y, Z] indices into `TISSUES` (e.g. TISSUES.index("lung")), RAS voxel order.
      label: uint16 [X, Y, Z] MM-WHS codes, equal to generate_case's label.
      affine: float64 [4, 4], equal to generate_case's affine.
    """
    grid, _, tissue, label, *_ = _build(seed, "ct", spacing, fov_mm, difficulty)
    return tissue, np.array([0, *MMWHS.codes], np.uint16)[label], _affine(grid, seed)


def _to_disk(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip x and y to LPS-like voxel order, as DICOM-derived scans are stored, with the matching affine."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = array.shape[0] - 1, array.shape[1] - 1
    return np.ascontiguousarray(array[::-1, ::-1, :]), affine @ flip


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, dtype, description: str) -> None:
    """Write a .nii.gz atomically (heartjax.common.atomic) with a deterministic gzip stream."""
    data, disk_affine = _to_disk(array, affine)
    img = nibabel.Nifti1Image(data.astype(dtype), disk_affine)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description[:79].encode()
    img.set_qform(disk_affine, code=1)
    img.set_sform(disk_affine, code=1)
    atomic.write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=1, mtime=0))


def case_paths(out_dir, cases: int, modality: str = "ct") -> list[tuple[Path, Path]]:
    """(image, label) paths of the MM-WHS layout: DIR/ct_train/ct_train_1001_image.nii.gz, ..."""
    prefix = MODALITIES[modality]
    folder = Path(out_dir) / prefix
    return [(folder / f"{prefix}_{FIRST_CASE + i}_image.nii.gz", folder / f"{prefix}_{FIRST_CASE + i}_label.nii.gz")
            for i in range(cases)]


def case_seed(seed: int, index: int) -> int:
    """The generate_case seed of case `index` (0-based) in a phantom written with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_phantom(out_dir, cases: int = 20, modality: str = "ct", seed: int = 0, spacing=DEFAULT_SPACING,
                  overwrite: bool = False, fov_mm=DEFAULT_FOV_MM, difficulty: int = DEFAULT_LEVEL,
                  workers: int | None = None) -> list[Path]:
    """Write a phantom dataset in the MM-WHS layout and return the written paths (image, label per case).

    CT images are stored as int16 Hounsfield units, MRI images as float32, labels as uint16 MM-WHS codes, all in
    LPS-like on-disk voxel order. Case i (0-based) is generate_case(case_seed(seed, i), ...), so identical calls
    write identical bytes. Existing case files are refused (HeartjaxError naming the path) unless overwrite.
    Cases are written by `workers` processes (default: one per usable core, or 1 below PARALLEL_VOXELS voxels in
    all; 1 writes them in this process), each file atomically; the bytes do not depend on the number of processes.
    """
    if isinstance(cases, bool) or not isinstance(cases, (int, np.integer)) or cases < 1:
        raise HeartjaxError(f"cases={cases!r} must be an integer >= 1")
    spacing, fov_mm = _check_settings(modality, spacing, fov_mm)
    seed = _check_seed(seed)
    _check_difficulty(difficulty)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1):
        raise HeartjaxError(f"workers={workers!r} must be an integer >= 1 (or None: one per usable core)")
    pairs = case_paths(out_dir, int(cases), modality)
    if not overwrite:
        for path in (p for pair in pairs for p in pair):
            if path.exists():
                raise HeartjaxError(f"{path} already exists; pass overwrite=True (--overwrite) or choose another --out")
    pairs[0][0].parent.mkdir(parents=True, exist_ok=True)
    jobs = [(i, image_path, label_path, seed, modality, spacing, fov_mm, difficulty)
            for i, (image_path, label_path) in enumerate(pairs)]
    if workers is None:  # one per core, unless starting the processes costs more than the phantom (tests' grids)
        voxels = len(jobs) * np.prod([round(f / s) for f, s in zip(fov_mm, spacing)])
        workers = default_workers() if voxels >= PARALLEL_VOXELS else 1
    workers = min(len(jobs), int(workers))
    if workers <= 1:
        return [path for job in jobs for path in _write_case(job)]
    if _jax_loaded():
        _write_in_subprocess(out_dir, len(jobs), modality, seed, spacing, fov_mm, difficulty, workers)
        return [path for pair in pairs for path in pair]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_write_case, job) for job in jobs]
        try:
            return [path for future in futures for path in future.result()]
        except BaseException:  # a failed case (or Ctrl-C): do not start the cases still waiting
            for future in futures:
                future.cancel()
            raise


def _write_case(job: tuple) -> list[Path]:
    """Generate case i of a phantom and write its image and label files (atomically); returns their paths."""
    i, image_path, label_path, seed, modality, spacing, fov_mm, difficulty = job
    image, label, affine = generate_case(case_seed(seed, i), modality, spacing, fov_mm, difficulty)
    desc = f"heartjax phantom v{VERSION} difficulty={difficulty} {modality} seed={seed} case={i}"
    _write_nifti(image_path, image, affine, np.int16 if modality == "ct" else np.float32, desc)
    _write_nifti(label_path, label, affine, np.uint16, desc)
    return [image_path, label_path]


def default_workers() -> int:
    """Processes that write a phantom by default: the cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _jax_loaded() -> bool:
    """Whether JAX runs in this process: its runtime's threads and locks make forking it unsafe."""
    return "jax" in sys.modules


def _write_in_subprocess(out_dir, cases, modality, seed, spacing, fov_mm, difficulty, workers) -> None:
    """write_phantom in a fresh interpreter (`python -m heartjax.phantom`), which forks its writer processes.

    For a caller with JAX loaded: a forked child would inherit JAX's threads and locks, and spawned ones would
    re-run the caller's main script (unguarded scripts then fail). The caller has checked settings and paths.
    """
    args = [sys.executable, "-m", "heartjax.phantom", "--out", str(out_dir), "--cases", str(cases),
            "--modality", modality, "--seed", str(seed), "--difficulty", str(difficulty), "--workers", str(workers),
            "--spacing", *map(repr, spacing), "--fov", *map(repr, fov_mm), "--overwrite"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # heartjax as imported here
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise HeartjaxError(f"writing the phantom in {out_dir} failed (python -m heartjax.phantom, exit status "
                            f"{done.returncode}): {done.stderr.strip()[-2000:]}")


def main(argv=None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m heartjax.phantom", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (gets ct_train/ or mr_train/)")
    parser.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    parser.add_argument("--modality", default="ct", help="ct, mri or cine (thick shifted MRI slices; default ct)")
    parser.add_argument("--difficulty", type=int, default=DEFAULT_LEVEL,
                        help=f"0 (easy, the first generator), 1 (realistic) or 2 (harder); default {DEFAULT_LEVEL}")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--spacing", type=float, nargs=3, default=DEFAULT_SPACING, metavar=("X", "Y", "Z"),
                        help="voxel size in mm (default 1.0 1.0 1.6)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing case files")
    parser.add_argument("--fov", type=float, nargs=3, default=DEFAULT_FOV_MM, help=argparse.SUPPRESS)  # fov_mm
    parser.add_argument("--workers", type=int, default=None,
                        help=f"processes writing cases in parallel (default: the usable cores, {default_workers()})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        paths = write_phantom(args.out, args.cases, args.modality, args.seed, tuple(args.spacing), args.overwrite,
                              difficulty=args.difficulty, workers=args.workers, fov_mm=tuple(args.fov))
    except HeartjaxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths) // 2} {args.modality} cases to {paths[0].parent} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
