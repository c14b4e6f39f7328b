"""DICOM series in, NIfTI out (`heartjax.data.io.dicom`): series written here with pydicom from a phantom case read
back to the NIfTI's affine and voxels, an oblique series to its affine, each refusal by name, a dataset whose images
are series folders, and `heartjax.predict` / `segment()` on a series giving the same label map (and Dice) as on the
case's NIfTI file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel
import numpy as np
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000, JPEGLSLossless, generate_uid

from heartjax.data import datasets, phantom
from heartjax.data.io import cli_paths, dicom, images, nifti
from heartjax.data.labels import MMWHS
from heartjax.common.errors import HeartjaxError

ROOT = Path(__file__).resolve().parents[1]
SLOPE, INTERCEPT = 0.5, -1024.0  # stored = (HU + 1024) * 2: every phantom HU is exact in int16
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A small phantom CT case (NIfTI image and label, LPS-like on disk as the phantom writes them)."""
    folder = tmp_path_factory.mktemp("phantom")
    image, label = phantom.write_phantom(folder, cases=1, spacing=(6.0, 6.0, 6.0), workers=1)
    return image, label


def write_series(folder: Path, data: np.ndarray, affine: np.ndarray, *, uid=None, description="phantom CT",
                 syntax=ExplicitVRLittleEndian, positions=None, skip=(), repeat=()) -> Path:
    """One file per slice k of an on-disk [column, row, slice] array with its RAS affine: the geometry DICOM's way
    (LPS, ImageOrientationPatient, ImagePositionPatient, PixelSpacing), int16 pixels with slope and intercept.
    Files are named against the slice order (and instance numbers shuffled) so the reader must sort by position;
    `positions` overrides slice k's ImagePositionPatient, `skip` leaves slices out, `repeat` writes them twice."""
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS @ np.asarray(affine, np.float64)
    cols, rows = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    uid, study = uid or generate_uid(), generate_uid()
    order = np.random.default_rng(0).permutation(data.shape[2])
    for k in [k for k in range(data.shape[2]) if k not in skip] + list(repeat):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = syntax
        name = f"IM{int(order[k]):04d}"
        name += "_again" if (folder / name).exists() else ""
        ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study, uid, 3
        ds.SeriesDescription, ds.InstanceNumber = description, int(order[k]) + 1
        ds.ImageOrientationPatient = [float(v) for v in (*(lps[:3, 0] / cols), *(lps[:3, 1] / rows))]
        position = lps @ np.array([0.0, 0.0, k, 1.0]) if positions is None or k not in positions else positions[k]
        ds.ImagePositionPatient = [float(v) for v in position[:3]]
        ds.PixelSpacing = [float(rows), float(cols)]
        ds.Rows, ds.Columns, ds.SamplesPerPixel = data.shape[1], data.shape[0], 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = SLOPE, INTERCEPT
        stored = np.round((data[:, :, k].T.astype(np.float64) - INTERCEPT) / SLOPE).astype(np.int16)
        if syntax.is_compressed:
            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])  # a codestream's start, then nothing
        else:
            ds.PixelData = stored.tobytes()
        ds.save_as(folder / name, enforce_file_format=True)
    return folder


def series_of(nifti_path: Path, folder: Path, affine=None, **kwargs) -> Path:
    img = nibabel.load(nifti_path)
    return write_series(folder, np.asarray(img.dataobj), img.affine if affine is None else affine, **kwargs)


def test_series_reads_to_the_nifti_affine_and_voxels(case, tmp_path):
    image, label = case
    folder = series_of(image, tmp_path / "series")
    (folder / "notes.txt").write_text("not a DICOM file")
    with pytest.warns(UserWarning, match=r"ignored 1 file\(s\) that are not DICOM images: notes.txt"):
        got = images.load_volume(folder, label, MMWHS)
    want = nifti.load_volume(image, label, MMWHS)
    assert np.allclose(got.affine, want.affine, atol=1e-4) and got.spacing == pytest.approx(want.spacing)
    assert np.array_equal(got.image, want.image) and np.array_equal(got.label, want.label)
    assert np.allclose(got.grid.affine, nibabel.load(image).affine, atol=1e-4)  # same on-disk order (LPS-like)
    assert got.case == "series" and images.format_of(folder) is dicom.FORMAT
    assert cli_paths.collect_inputs([tmp_path]) == [folder]  # a folder of series folders


def test_oblique_series_round_trips_its_affine(case, tmp_path):
    image, _ = case
    a, b = np.deg2rad(20.0), np.deg2rad(-35.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    oblique = np.eye(4)
    oblique[:3, :3] = rz @ rx @ np.diag([-6.0, -6.0, 6.0])
    oblique[:3, 3] = [12.5, -40.0, 300.0]
    folder = series_of(image, tmp_path / "oblique", affine=oblique)
    data = np.asarray(nibabel.load(image).dataobj)
    nibabel.save(nibabel.Nifti1Image(data, oblique), str(tmp_path / "oblique.nii.gz"))
    got, want = images.load_volume(folder), nifti.load_volume(tmp_path / "oblique.nii.gz")
    assert np.allclose(got.grid.affine, oblique, atol=1e-4)
    assert np.allclose(got.affine, want.affine, atol=1e-4) and np.array_equal(got.image, want.image)


def test_several_series_are_listed_and_one_file_picks_its_series(case, tmp_path):
    image, _ = case
    folder = tmp_path / "study"
    series_of(image, folder, uid="1.2.826.0.1.1", description="arterial")
    for path in series_of(image, tmp_path / "b", uid="1.2.826.0.1.2", description="venous").iterdir():
        path.rename(folder / f"B{path.name}")
    with pytest.raises(HeartjaxError, match=r"holds 2 series: SeriesInstanceUID 1\.2\.826\.0\.1\.1 .*\"arterial\""
                                            r".*1\.2\.826\.0\.1\.2 .*\"venous\".*Which one\? Point at a folder holding "
                                            r"one series, or at one file"):
        images.load_volume(folder)
    one = sorted(folder.glob("B*"))[0]
    vol = images.load_volume(one)
    assert vol.image.shape == nibabel.load(image).shape and vol.case == "study_s3"


@pytest.mark.parametrize("problem, expected", [
    ("missing", r"1 slice\(s\) missing between IM\d+ \(.* mm\) and IM\d+ .*a gap of 12 mm where the slices are 6 mm"),
    ("duplicate", r"duplicate slices: IM\d+ and IM\d+_again lie at the same position"),
    ("uneven", r"non-uniform slice spacing: gaps from 5\.4 to 6\.6 mm .* by more than 1 %"),
    ("jpeg2000", r"JPEG 2000 Image Compression.*pip install pylibjpeg pylibjpeg-libjpeg "
                 r"pylibjpeg-openjpeg \(or pip install python-gdcm\)"),
    ("jpegls", r"JPEG-LS Lossless Image Compression .*pip install pylibjpeg pylibjpeg-libjpeg"),
])
def test_broken_series_are_refused_by_name(case, tmp_path, problem, expected):
    image, _ = case
    img = nibabel.load(image)
    lps = LPS @ img.affine
    kwargs = {"missing": {"skip": (5,)}, "duplicate": {"repeat": (5,)},
              "uneven": {"positions": {5: lps @ np.array([0.0, 0.0, 4.9, 1.0])}},
              "jpeg2000": {"syntax": JPEG2000}, "jpegls": {"syntax": JPEGLSLossless}}[problem]
    folder = series_of(image, tmp_path / problem, **kwargs)
    with pytest.raises(HeartjaxError, match=expected):
        images.load_volume(folder)


def test_a_series_is_not_a_label_and_is_never_written(case, tmp_path):
    image, _ = case
    folder = series_of(image, tmp_path / "s")
    with pytest.raises(HeartjaxError, match="reads DICOM scans, not label maps"):
        images.load_label_file(folder, MMWHS)
    with pytest.raises(HeartjaxError, match="not an image heartjax reads"):
        images.format_of(tmp_path / "empty")


def test_dataset_images_may_be_series_folders(case, tmp_path):
    image, label = case
    root = tmp_path / "ds"
    series_of(image, root / "images" / "heart01")
    (root / "labels").mkdir()
    (root / "labels" / "heart01.nii.gz").write_bytes(label.read_bytes())
    found = datasets.discover(root, MMWHS)
    assert [(c.case_id, c.image.name) for c in found.cases] == [("heart01", "heart01")]
    vol = images.load_volume(found.cases[0].image, found.cases[0].label, MMWHS)
    assert np.array_equal(vol.label, nifti.load_volume(image, label, MMWHS).label)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3D smoke model trained for two steps (a phantom of its own, under the module's folder)."""
    work = tmp_path_factory.mktemp("run")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "experiments.volumetric", "--preset", "smoke", "--models", "3d",
                        "--workdir", "run", "train.steps=2", "train.eval_every=2", "train.log_every=1"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    config = json.loads((work / "run" / "config.json").read_text())
    test_case = json.loads((work / "run" / "splits.json").read_text())["test"][0]
    scans = next((work / config["data"]["phantom_dir"]).iterdir()) / "ct_train"
    return work / "run", scans / f"{test_case}_image.nii.gz", scans / f"{test_case}_label.nii.gz"


def dice(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    return [2 * np.sum((pred == c) & (truth == c)) / max(1, np.sum(pred == c) + np.sum(truth == c))
            for c in MMWHS.codes]


def test_predict_on_a_series_equals_predict_on_its_nifti(tiny_run, tmp_path, capsys):
    from heartjax.serve import predict
    from heartjax.serve.segment import Segmenter

    run, image, label = tiny_run
    series = series_of(image, tmp_path / "scans" / "heart")
    assert predict.main([str(run), str(image), str(series), "--out", str(tmp_path / "out")]) == 0, capsys.readouterr()
    from_nifti = nibabel.load(tmp_path / "out" / image.name)
    from_dicom = nibabel.load(tmp_path / "out" / "heart.nii.gz")  # named after the series folder
    assert np.allclose(from_dicom.affine, from_nifti.affine, atol=1e-4)
    assert np.array_equal(np.asarray(from_dicom.dataobj), np.asarray(from_nifti.dataobj))
    assert len(np.unique(np.asarray(from_dicom.dataobj))) > 2  # the tiny model labels something: not a trivial match
    truth = np.asarray(nibabel.load(label).dataobj)
    assert dice(np.asarray(from_dicom.dataobj), truth) == dice(np.asarray(from_nifti.dataobj), truth)
    record = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert [c["case"] for c in record["cases"]] == [image.name[:-len(".nii.gz")], "heart"]
    seg = Segmenter(run)  # the Python API: a series folder's path, or the NIfTI's array with its affine
    assert np.array_equal(seg(series, codes=True), np.asarray(from_dicom.dataobj))
    scan = nibabel.load(image)
    assert np.array_equal(seg(np.asarray(scan.dataobj), affine=scan.affine, codes=True), np.asarray(from_nifti.dataobj))
