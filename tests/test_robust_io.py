"""Degenerate inputs refused by name, as the header is written: voxel sizes, sform/qform, mislabelled compression,
files that are not NIfTI; the scan plausibility checks against a plan; evaluate's usage errors (exit 2, nothing
written)."""

import gzip
import os
from pathlib import Path

import nibabel
import numpy as np
import pytest

from heartjax.data.io import cli_paths
from heartjax.eval import evaluate
from heartjax.serve import scan_checks
from heartjax.data.io import nifti, nifti_probe
from heartjax.data.plan import KindPlan, Plan
from heartjax.common.errors import HeartjaxError

AFFINE = np.diag([0.8, 0.9, 2.5, 1.0])


def write(path, data=None, affine=AFFINE, sform_code=2, qform_code=1, edit=None) -> Path:
    """Save a small float scan with both sform and qform, after `edit(header)` rewrites header fields as written."""
    data = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4) if data is None else data
    img = nibabel.Nifti1Image(data, affine)
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine if qform_code else None, code=qform_code)
    img.header.set_data_dtype(np.float32)
    img.header["vox_offset"] = 352
    if edit:
        edit(img.header)
    # write the header bytes exactly: nibabel.save would recompute pixdim from the affine for some edits
    raw = img.header.binaryblock + b"\x00" * 4 + np.asarray(data, np.float32).tobytes(order="F")
    Path(path).write_bytes(gzip.compress(raw) if str(path).endswith(".gz") else raw)
    return Path(path)


def set_pixdim(values):
    def edit(header):
        header["pixdim"][1:4] = values
    return edit


# ---- voxel size as written ----

@pytest.mark.parametrize("pixdim, problem", [
    ((0.0, 0.9, 2.5), "0 on axis 0"),
    ((0.8, -0.9, 2.5), "-0.9 on axis 1 is negative"),
    ((0.8, 0.9, np.nan), "nan on axis 2 is not a number"),
    ((np.inf, 0.9, 2.5), "inf on axis 0 is not a number"),
    ((0.8, 250.0, 2.5), "250 on axis 1 is outside 0.001..100 mm"),
    ((1e-5, 0.9, 2.5), "1e-05 on axis 0 is outside 0.001..100 mm"),
])
@pytest.mark.parametrize("codes", [(2, 1), (0, 1), (0, 0)])
def test_bad_voxel_size_is_refused_by_name(tmp_path, pixdim, problem, codes):
    path = write(tmp_path / "scan one.nii.gz", sform_code=codes[0], qform_code=codes[1], edit=set_pixdim(pixdim))
    with pytest.raises(HeartjaxError) as info:
        nifti.load_volume(path)
    message = str(info.value)
    assert str(path) in message and "voxel size (pixdim)" in message and problem in message
    assert "Fix the header" in message and "\n" not in message


def test_zero_voxel_size_nibabel_would_repair_is_still_refused(tmp_path):
    """nibabel turns pixdim 0 into 1 mm on load (and the sform hides it from img.affine): the raw header is checked."""
    path = write(tmp_path / "zero.nii", edit=set_pixdim((0.0, 0.9, 2.5)))
    assert nibabel.load(str(path)).header["pixdim"][1] == 1.0  # what nibabel reports
    with pytest.raises(HeartjaxError, match=r"zero\.nii: its header gives voxel size \(pixdim\) \[0\.0, 0\.9, 2\.5\]"):
        nifti.load_volume(path)


def test_label_file_header_is_checked_too(tmp_path):
    image = write(tmp_path / "img.nii.gz")
    label = write(tmp_path / "lab.nii.gz", np.zeros((6, 5, 4), np.float32), edit=set_pixdim((0.8, 0.0, 2.5)))
    with pytest.raises(HeartjaxError, match=r"label file .*lab\.nii\.gz: .*0 on axis 1"):
        nifti.load_volume(image, label, "generic1")
    with pytest.raises(HeartjaxError, match=r"lab\.nii\.gz"):
        nifti.load_label_file(label, "generic1")


def test_units_other_than_mm_are_named(tmp_path):
    def edit(header):
        header["pixdim"][1:4] = (0.0008, 0.0009, 0.0025)
        header.set_xyzt_units("meter")
    path = write(tmp_path / "metres.nii.gz", edit=edit)
    with pytest.raises(HeartjaxError, match=r"outside 0\.001\.\.100 mm \(the header's spatial unit is meter"):
        nifti.load_volume(path)


def test_valid_headers_still_load(tmp_path):
    vol = nifti.load_volume(write(tmp_path / "ok.nii.gz"))
    assert vol.spacing == pytest.approx((0.8, 0.9, 2.5))


# ---- sform / qform that cannot be inverted ----

def test_singular_sform_is_refused(tmp_path):
    singular = AFFINE.copy()
    singular[:3, 1] = singular[:3, 0]  # two voxel axes parallel
    path = write(tmp_path / "flat.nii.gz", affine=singular, qform_code=0)
    with pytest.raises(HeartjaxError) as info:
        nifti.load_volume(path)
    message = str(info.value)
    assert "flat.nii.gz: its sform (sform_code 2)" in message and "singular" in message
    assert "cannot be inverted" in message and "setting sform_code to 0" in message


def test_zero_column_and_nan_sform_are_refused(tmp_path):
    def zero_column(header):
        for row in ("srow_x", "srow_y", "srow_z"):
            header[row][2] = 0.0  # voxel axis 2 goes nowhere
    with pytest.raises(HeartjaxError, match=r"zcol\.nii\.gz: its sform.*singular"):
        nifti.load_volume(write(tmp_path / "zcol.nii.gz", qform_code=0, edit=zero_column))

    def nan_row(header):
        header["srow_y"] = [0.0, np.nan, 0.0, 1.0]
    with pytest.raises(HeartjaxError, match=r"nanrow\.nii\.gz: its sform.*NaN or Inf"):
        nifti.load_volume(write(tmp_path / "nanrow.nii.gz", edit=nan_row))


def test_broken_qform_is_refused(tmp_path):
    def bad_quaternion(header):
        header["quatern_b"], header["quatern_c"] = 0.9, 0.9
    path = write(tmp_path / "quat.nii.gz", sform_code=0, edit=bad_quaternion)
    with pytest.raises(HeartjaxError, match=r"quat\.nii\.gz: its qform \(qform_code 1\) has quaternion.*no rotation"):
        nifti.load_volume(path)

    def nan_offset(header):
        header["qoffset_x"] = np.nan
    with pytest.raises(HeartjaxError, match=r"qnan\.nii\.gz: its qform \(qform_code 1\) holds NaN"):
        nifti.load_volume(write(tmp_path / "qnan.nii.gz", sform_code=0, edit=nan_offset))


# ---- what the bytes are ----

def test_gzip_named_nii_is_read_as_gzip(tmp_path):
    reference = write(tmp_path / "ref.nii.gz")
    misnamed = tmp_path / "scan.nii"
    misnamed.write_bytes(reference.read_bytes())
    with pytest.warns(UserWarning, match=r"scan\.nii: it is gzip-compressed although its name ends in \.nii.*"
                                         r"rename it scan\.nii\.gz"):
        vol = nifti.load_volume(misnamed)
    expected = nifti.load_volume(reference)
    np.testing.assert_array_equal(vol.image, expected.image)
    assert vol.spacing == expected.spacing and vol.case == "scan"
    out = nifti.save_label(tmp_path / "pred.nii", np.zeros(vol.image.shape, np.uint8), vol.grid, "generic1")
    assert nibabel.load(str(out)).shape == (6, 5, 4)  # written as its name says (plain .nii)


def test_plain_named_nii_gz_is_read_as_plain(tmp_path):
    plain = write(tmp_path / "ref.nii")
    misnamed = tmp_path / "scan.nii.gz"
    misnamed.write_bytes(plain.read_bytes())
    with pytest.warns(UserWarning, match=r"scan\.nii\.gz: it is not gzip-compressed.*rename it scan\.nii\b"):
        vol = nifti.load_volume(misnamed)
    np.testing.assert_array_equal(vol.image, nifti.load_volume(plain).image)


@pytest.mark.parametrize("name, content, kind", [
    ("empty.nii", b"", "it is an empty file"),
    ("dicom.nii", b"\x00" * 128 + b"DICM" + b"\x00" * 300,
     "it is a DICOM file; convert the series to NIfTI first (e.g. dcm2niix)"),
    ("zipped.nii.gz", b"PK\x03\x04" + b"\x00" * 400, "it is a zip archive"),
    ("notes.nii", gzip.compress(b"patient notes\n" * 40, mtime=0), "it is gzip-compressed text ('patient notes"),
    ("broken.nii.gz", b"\x1f\x8b not really a gzip file", "a gzip file whose content could not be decompressed"),
])
def test_non_nifti_bytes_are_named(tmp_path, name, content, kind):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(HeartjaxError) as info:
        nifti.load_volume(tmp_path / name)
    message = str(info.value)
    assert f"{tmp_path / name} could not be read as NIfTI: " in message and kind in message


def test_probe_reads_the_header_as_written(tmp_path):
    path = write(tmp_path / "p.nii.gz", edit=set_pixdim((0.0, -1.0, 2.5)))
    found = nifti_probe.probe(path)
    assert found.gzip and found.kind == "a gzip-compressed NIfTI file"
    assert list(found.header["pixdim"][1:4]) == [0.0, -1.0, 2.5]


# ---- scan plausibility against a plan ----

PLAN = Plan(target_spacing=(8.0, 8.0, 8.0), modality="ct", normalization="ct", ct_clip=(73.0, 407.0), ct_mean=240.0,
            ct_std=80.0, slice_axis=2, depth=3,
            kinds={"3d": KindPlan(3, (8.0,) * 3, (16, 16, 16), 2, ((2, 2, 2),) * 3, ((3, 3, 3),) * 4),
                   "2d": KindPlan(2, (8.0,) * 2, (16, 16), 8, ((2, 2),) * 3, ((3, 3),) * 4)})


def chest(shape=(40, 40, 32)) -> np.ndarray:
    """Air around a soft-tissue body with a bright heart."""
    image = np.full(shape, -1000.0, np.float32)
    c = [s // 2 for s in shape]
    image[c[0] - 12:c[0] + 12, c[1] - 12:c[1] + 12, :] = 40.0
    image[c[0] - 5:c[0] + 5, c[1] - 5:c[1] + 5, c[2] - 5:c[2] + 5] = 300.0
    return image


def test_plausible_scan_has_no_warnings():
    assert scan_checks.scan_warnings(chest(), (4.0, 4.0, 4.0), PLAN, (16, 16, 16), None) == []
    assert scan_checks.scan_warnings(chest(), (4.0, 4.0, 4.0), PLAN, (16, 16), 2) == []


def test_constant_scan_warns():
    got = scan_checks.scan_warnings(np.zeros((40, 40, 32), np.float32), (4.0, 4.0, 4.0), PLAN, (16, 16, 16), None)
    assert got == ["constant intensity 0 in every voxel: the scan is blank (an empty export or a failed conversion?); "
                   "its segmentation is meaningless. Check the file in a viewer."]


def test_scan_smaller_than_field_of_view_warns():
    tiny = np.where(np.indices((3, 3, 3)).sum(0) % 2, -1000.0, 300.0).astype(np.float32)  # air and heart
    got = scan_checks.scan_warnings(tiny, (1.0, 1.0, 1.0), PLAN, (16, 16, 16), None)
    assert len(got) == 1
    assert got[0].startswith("the scan covers [3.0, 3.0, 3.0] mm ([3, 3, 3] voxels); at the model's spacing "
                             "[8.0, 8.0, 8.0] mm that is [1, 1, 1] voxels, less than half the network's field of view "
                             "([16, 16, 16] voxels = [128.0, 128.0, 128.0] mm")
    assert "too small to hold a heart" in got[0]
    # a 2D model only needs the in-plane axes: few slices are fine, a thin in-plane strip is not
    assert scan_checks.scan_warnings(chest((40, 40, 2)), (4.0, 4.0, 4.0), PLAN, (16, 16), 2) == []
    assert "axis 1" in scan_checks.size_warning((40, 3, 30), (4.0, 4.0, 4.0), PLAN, (16, 16), (0, 1))


def test_intensities_unlike_training_data_warn():
    unrescaled = chest() + 1024.0  # a CT stored without its rescale intercept: no air, little in 73..407 HU
    got = scan_checks.intensity_warning(unrescaled, PLAN)
    assert got.startswith("intensities 24..1324: no voxel below -500 HU (no air or lung) and only 0 % of voxels in "
                          "the training data's foreground range 73..407 HU; the model was trained on CT in Hounsfield")
    assert "rescale intercept of -1024" in got
    cropped = chest()[14:26, 14:26, 10:20]  # a crop of the heart only: no air, but HU values
    assert scan_checks.intensity_warning(cropped, PLAN).startswith("intensities 40..300: no voxel below -500 HU (no "
                                                                   "air or lung); the model")
    normalised = (chest() + 1000) / 1300  # 0..1
    assert "only 0 % of voxels in the training data's foreground range" in scan_checks.intensity_warning(
        normalised, PLAN)
    mri_plan = Plan(**{**PLAN.__dict__, "modality": "mri", "normalization": "zscore"})
    assert "model was trained on MRI. Use a model trained on CT" in scan_checks.intensity_warning(chest(), mri_plan)
    assert scan_checks.intensity_warning(chest() + 1000, mri_plan) is None


# ---- command-line path checks and evaluate's usage errors ----

def test_output_folder_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(HeartjaxError, match=r"--out .*file is a file, not a folder"):
        cli_paths.check_output_folder(tmp_path / "file")
    with pytest.raises(HeartjaxError, match=r"--out .*file/sub cannot be created: .*file is a file"):
        cli_paths.check_output_folder(tmp_path / "file" / "sub")
    cli_paths.check_output_folder(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # a check creates nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(HeartjaxError, match="permission denied"):
            cli_paths.check_output_folder(locked / "out")
    finally:
        locked.chmod(0o700)


def _tiny_label(path: Path) -> Path:
    codes = np.zeros((6, 5, 4), np.uint8)
    codes[2:4, 2:4, 1:3] = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(codes, AFFINE), str(path))
    return path


def test_evaluate_usage_errors_exit_2_and_write_nothing(tmp_path, capsys):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    _tiny_label(pred / "a.nii.gz"), _tiny_label(truth / "a.nii.gz")
    (tmp_path / "afile").write_text("x")
    for args, named in [([pred, tmp_path / "nowhere"], "truth folder"),
                        ([tmp_path / "afile", truth], "prediction folder"),
                        ([pred, truth, "--out", tmp_path / "afile" / "scores"], "afile is a file"),
                        ([pred, truth, "--scheme", "nonsense"], "unknown label scheme")]:
        code = evaluate.main([str(a) for a in args] + ([] if "--scheme" in args else ["--scheme", "generic1"]))
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and named in lines[0], err
    (pred / "evaluation.json").mkdir()  # the default output is taken by a folder
    code = evaluate.main([str(pred), str(truth), "--scheme", "generic1"])
    err = capsys.readouterr().err
    assert code == 2 and f"{pred / 'evaluation.json'} is a folder" in err
    assert sorted(p.name for p in pred.iterdir()) == ["a.nii.gz", "evaluation.json"]
    assert not list((pred / "evaluation.json").iterdir())
    out_dir = tmp_path / "scores"
    out_dir.mkdir()
    assert evaluate.main([str(pred), str(truth), "--scheme", "generic1", "--out", str(out_dir)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["evaluation.csv", "evaluation.json"]
