"""NIfTI loading and saving: RAS order, exact round trips on oblique/flipped grids, header quirks, refusals."""

import gzip
import os
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pytest

from heartjax.data.io import nifti
from heartjax.common.errors import HeartjaxError
from heartjax.data.labels import ACDC, MMWHS

CT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct-chest-sample"


def rotation(ax, ay, az):
    """Rotation matrix from three angles in degrees."""
    ax, ay, az = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(rot, perm, flips, zooms, origin):
    """Affine with direction columns rot[:, perm] * flips * zooms."""
    out = np.eye(4)
    out[:3, :3] = rot[:, list(perm)] * np.asarray(flips) * np.asarray(zooms)
    out[:3, 3] = origin
    return out


AFFINES = {
    "lps": make_affine(np.eye(3), (0, 1, 2), (-1, -1, 1), (0.7, 0.9, 2.5), (10.0, -20.0, 5.0)),
    "oblique_flipped": make_affine(rotation(17, -9, 24), (0, 1, 2), (1, -1, -1), (0.8, 1.1, 3.0), (-30.5, 12.25, 7.0)),
    "oblique_permuted": make_affine(rotation(-12, 20, 8), (2, 0, 1), (-1, 1, -1), (1.25, 0.6, 2.0), (4.0, 55.0, -80.0)),
}


def write(path, data, affine, sform_code=2, qform_code=0, dtype=None):
    """Write a NIfTI file with explicit sform/qform codes; returns the path."""
    img = nibabel.Nifti1Image(np.asarray(data), affine)
    if dtype is not None:
        img.set_data_dtype(dtype)
    img.set_sform(affine, code=sform_code)
    img.set_qform(affine if qform_code else None, code=qform_code)
    nibabel.save(img, str(path))
    return Path(path)


def tiny_pair(tmp_path, affine, shape=(5, 6, 7), codes=(0, 205, 500, 820), seed=0):
    """A random float image and MM-WHS-coded label on the same grid."""
    rng = np.random.default_rng(seed)
    image = rng.normal(size=shape).astype(np.float32) * 100
    label = rng.choice(np.array(codes, np.uint16), size=shape)
    image_path = write(tmp_path / "img.nii.gz", image, affine)
    return image_path, write(tmp_path / "lab.nii.gz", label, affine, dtype=np.uint16), image, label


def leftovers(folder, keep=()):
    """Files in a folder other than `keep` (e.g. stray temporary files)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in keep)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_ras_order_matches_world_coordinates(tmp_path, name):
    affine = AFFINES[name]
    image_path, label_path, image, label = tiny_pair(tmp_path, affine)
    vol = nifti.load_volume(image_path, label_path, MMWHS)
    assert vol.image.dtype == np.float32 and vol.label.dtype == np.uint8
    assert nibabel.aff2axcodes(vol.affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, :3], axis=0), vol.spacing, rtol=1e-12)
    assert sorted(vol.spacing) == pytest.approx(sorted(np.linalg.norm(affine[:3, :3], axis=0)))
    inv = np.linalg.inv(affine)
    for ras_index in np.ndindex(vol.image.shape):  # every RAS voxel sits where the file says that value sits
        disk_index = np.rint(inv @ vol.affine @ (*ras_index, 1))[:3].astype(int)
        assert vol.image[ras_index] == image[tuple(disk_index)]
        assert MMWHS.decode(vol.label[ras_index]) == label[tuple(disk_index)]


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_save_label_round_trip_is_exact(tmp_path, name):
    affine = AFFINES[name]
    image_path, label_path, _, label = tiny_pair(tmp_path, affine)
    vol = nifti.load_volume(image_path, label_path, MMWHS)
    out = nifti.save_label(tmp_path / "pred" / "p.nii.gz", vol.label, vol.grid, MMWHS)
    written = nibabel.load(str(out))
    np.testing.assert_array_equal(np.asarray(written.dataobj), label)
    np.testing.assert_array_equal(written.affine, nibabel.load(str(image_path)).affine)
    assert written.shape == label.shape
    assert int(written.header["sform_code"]) == 2 and int(written.header["qform_code"]) == 0
    again = nifti.load_volume(image_path, out, MMWHS)
    np.testing.assert_array_equal(again.label, vol.label)
    assert leftovers(out.parent) == ["p.nii.gz"]


def test_qform_only_file_with_negative_qfac_round_trips(tmp_path):
    affine = make_affine(rotation(5, 0, -30), (1, 0, 2), (1, 1, 1), (1.5, 1.5, 4.0), (1.0, 2.0, 3.0))
    label = np.random.default_rng(1).integers(0, 4, size=(4, 5, 3)).astype(np.uint8)
    path = write(tmp_path / "lab.nii", label, affine, sform_code=0, qform_code=1)
    assert nibabel.load(str(path)).header["pixdim"][0] == -1  # left-handed: stored with qfac -1
    indices, grid = nifti.load_label_file(path, ACDC)
    out = nifti.save_label(tmp_path / "out.nii", indices, grid, ACDC)
    written = nibabel.load(str(out))
    np.testing.assert_array_equal(np.asarray(written.dataobj), label)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    assert int(written.header["qform_code"]) == 1 and int(written.header["sform_code"]) == 0


def test_save_array_probabilities_round_trip(tmp_path):
    affine = AFFINES["oblique_permuted"]
    image_path, _, image, _ = tiny_pair(tmp_path, affine)
    vol = nifti.load_volume(image_path)
    probs = np.random.default_rng(2).random((*vol.image.shape, 3)).astype(np.float32)
    out = nifti.save_array(tmp_path / "probs.nii.gz", probs, vol.grid)
    written = nibabel.load(str(out))
    assert written.shape == (*image.shape, 3)
    np.testing.assert_array_equal(written.affine, nibabel.load(str(image_path)).affine)
    np.testing.assert_array_equal(nifti.to_ras(np.asarray(written.dataobj), vol.grid), probs)
    np.testing.assert_array_equal(nifti.from_ras(vol.image, vol.grid), image)


def acdc_like(path, data, pixdim=(1.5625, 1.5625, 10.0)):
    """A file with ACDC's header: unit-scale sform diag(-1, -1, 1) (code 2), qform code 0, true sizes in pixdim."""
    unit = np.diag([-1.0, -1.0, 1.0, 1.0])
    img = nibabel.Nifti1Image(np.asarray(data), unit)
    img.set_sform(unit, code=2)
    img.set_qform(None, code=0)
    img.header.set_zooms(pixdim)
    nibabel.save(img, str(path))
    return Path(path)


def test_unit_scale_sform_uses_pixdim_and_warns(tmp_path):
    shape = (6, 5, 3)
    image = acdc_like(tmp_path / "scan.nii.gz", np.arange(np.prod(shape), dtype=np.int16).reshape(shape))
    label = acdc_like(tmp_path / "scan_gt.nii.gz", (np.arange(np.prod(shape)) % 4).astype(np.uint8).reshape(shape))
    raw = nibabel.load(str(image))
    assert np.allclose(raw.affine, np.diag([-1, -1, 1, 1])) and raw.header.get_zooms() == (1.5625, 1.5625, 10.0)
    with pytest.warns(UserWarning, match=r"scan\.nii\.gz.*\[1\.0, 1\.0, 1\.0\].*\[1\.5625, 1\.5625, 10\.0\].*pixdim"):
        vol = nifti.load_volume(image, label, ACDC)
    assert vol.spacing == (1.5625, 1.5625, 10.0)
    expected = np.diag([1.5625, 1.5625, 10.0, 1.0])
    expected[:2, 3] = [-1.5625 * 5, -1.5625 * 4]  # flipped x/y: RAS voxel 0 is the last on-disk voxel
    np.testing.assert_allclose(vol.affine, expected)
    out = nifti.save_label(tmp_path / "pred.nii.gz", vol.label, vol.grid, ACDC)
    written = nibabel.load(str(out))
    assert written.header.get_zooms() == (1.5625, 1.5625, 10.0)
    np.testing.assert_array_equal(written.affine, raw.affine)
    assert (int(written.header["sform_code"]), int(written.header["qform_code"])) == (2, 0)
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(nibabel.load(str(label)).dataobj))


def test_consistent_header_does_not_warn(tmp_path):
    image_path, label_path, _, _ = tiny_pair(tmp_path, AFFINES["oblique_flipped"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = nifti.load_volume(image_path, label_path, MMWHS)
    assert vol.spacing == pytest.approx((0.8, 1.1, 3.0))


@pytest.mark.parametrize("case, pixdim", [("patient001", (1.5625, 1.5625, 10.0)), ("patient002", None),
                                          ("patient005", None)])
def test_real_acdc_spacing_is_pixdim(acdc_dir, tmp_path, case, pixdim):
    image, mask = acdc_dir / "images" / f"{case}.nii.gz", acdc_dir / "masks" / f"{case}_mask.nii.gz"
    header_pixdim = tuple(float(p) for p in nibabel.load(str(image)).header["pixdim"][1:4])
    with pytest.warns(UserWarning, match=case):
        vol = nifti.load_volume(image, mask, ACDC)
    assert vol.spacing == (pixdim or header_pixdim) == header_pixdim
    assert set(np.unique(vol.label)) == {0, 1, 2, 3}
    out = nifti.save_label(tmp_path / f"{case}.nii.gz", vol.label, vol.grid, ACDC)
    written, original = nibabel.load(str(out)), nibabel.load(str(mask))
    np.testing.assert_array_equal(np.asarray(written.dataobj), np.asarray(original.dataobj))
    assert written.header.binaryblock == original.header.binaryblock  # the very same header, byte for byte


def test_real_ct_mask_on_another_grid_is_refused():
    if not CT_DIR.is_dir():
        pytest.skip("shared CT folder ../shared/data/ct-chest-sample is absent (only on the project's machines)")
    with pytest.raises(HeartjaxError, match="heart_mask_model_output.nii.gz.*shape"):
        nifti.load_volume(CT_DIR / "ct.nii.gz", CT_DIR / "heart_mask_model_output.nii.gz", "generic1")
    vol = nifti.load_volume(CT_DIR / "ct.nii.gz", CT_DIR / "pulmonary_artery_mask_model_output.nii.gz", "generic1")
    assert vol.spacing == (1.5, 1.5, 1.5) and vol.image.min() < -900  # Hounsfield units, air near -1000


# ---- refusals: each names the file and leaves nothing behind ----

def test_missing_file(tmp_path):
    with pytest.raises(HeartjaxError, match=r"nope\.nii\.gz does not exist"):
        nifti.load_volume(tmp_path / "nope.nii.gz")


def test_truncated_gzip_is_refused_when_reading_data(tmp_path):
    path = write(tmp_path / "t.nii.gz", np.random.default_rng(0).normal(size=(20, 20, 20)), np.eye(4))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    nibabel.load(str(path))  # the header alone still opens: the check must read the voxels
    with pytest.raises(HeartjaxError, match=r"t\.nii\.gz could not be read.*truncated"):
        nifti.load_volume(path)


def test_truncated_plain_nii_is_refused(tmp_path):
    path = write(tmp_path / "t.nii", np.ones((8, 8, 8), np.float32), np.eye(4))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(HeartjaxError, match=r"t\.nii could not be read"):
        nifti.load_volume(path)


@pytest.mark.parametrize("name, content", [("notes.nii.gz", b"not a nifti"), ("notes.nii", b"x" * 400),
                                           ("gz_text.nii.gz", gzip.compress(b"y" * 400, mtime=0))])
def test_non_nifti_file_is_refused(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(HeartjaxError, match=name.replace(".", r"\.")):
        nifti.load_volume(tmp_path / name)


def test_wrong_extension_is_refused(tmp_path):
    (tmp_path / "scan.mha").write_bytes(b"ObjectType = Image\n")
    with pytest.raises(HeartjaxError, match=r"scan\.mha is not a NIfTI file.*\.nii or \.nii\.gz"):
        nifti.load_volume(tmp_path / "scan.mha")


def test_4d_with_frames_refused_but_singleton_squeezed(tmp_path):
    path = write(tmp_path / "cine.nii.gz", np.zeros((4, 4, 3, 5), np.float32), np.eye(4))
    with pytest.raises(HeartjaxError, match=r"cine\.nii\.gz holds a 4D array.*single 3D frame"):
        nifti.load_volume(path)
    path = write(tmp_path / "one.nii.gz", np.arange(48, dtype=np.float32).reshape(4, 4, 3, 1), np.eye(4))
    vol = nifti.load_volume(path)
    assert vol.image.shape == (4, 4, 3) and vol.grid.shape == (4, 4, 3)
    out = nifti.save_array(tmp_path / "back.nii.gz", vol.image, vol.grid)
    assert nibabel.load(str(out)).shape == (4, 4, 3)


def test_2d_is_refused(tmp_path):
    path = write(tmp_path / "slice.nii.gz", np.zeros((8, 8), np.float32), np.eye(4))
    with pytest.raises(HeartjaxError, match=r"slice\.nii\.gz holds a 2D array"):
        nifti.load_volume(path)


def test_label_with_other_shape_is_refused(tmp_path):
    image = write(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.float32), AFFINES["lps"])
    label = write(tmp_path / "lab.nii.gz", np.zeros((4, 5, 7), np.uint8), AFFINES["lps"])
    with pytest.raises(HeartjaxError, match=r"lab\.nii\.gz has shape \(4, 5, 7\).*img\.nii\.gz"):
        nifti.load_volume(image, label, ACDC)


def test_label_with_shifted_affine_is_refused_within_tolerance_accepted(tmp_path):
    image = write(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.float32), AFFINES["oblique_flipped"])
    for shift, ok in ((0.01, False), (2e-4, True)):
        moved = AFFINES["oblique_flipped"].copy()
        moved[0, 3] += shift
        label = write(tmp_path / "lab.nii.gz", np.zeros((4, 5, 6), np.uint8), moved)
        if ok:
            assert nifti.load_volume(image, label, ACDC).label.shape == (4, 5, 6)
        else:
            with pytest.raises(HeartjaxError, match=r"lab\.nii\.gz is on a different grid.*0\.01"):
                nifti.load_volume(image, label, ACDC)


def test_nan_image_is_refused(tmp_path):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    path = write(tmp_path / "nan.nii.gz", data, np.eye(4))
    with pytest.raises(HeartjaxError, match=r"nan\.nii\.gz has 2 NaN or Inf voxels"):
        nifti.load_volume(path)


def test_unknown_label_codes_name_the_file(tmp_path):
    image_path, label_path, _, _ = tiny_pair(tmp_path, np.eye(4))
    with pytest.raises(HeartjaxError, match=r"lab\.nii\.gz.*unknown label codes \[205, 500, 820\]"):
        nifti.load_volume(image_path, label_path, ACDC)


def test_refused_overwrite_keeps_old_file(tmp_path):
    image_path, label_path, _, _ = tiny_pair(tmp_path, AFFINES["lps"])
    vol = nifti.load_volume(image_path, label_path, MMWHS)
    target = tmp_path / "out" / "pred.nii.gz"
    nifti.save_label(target, vol.label, vol.grid, MMWHS)
    before = target.read_bytes()
    with pytest.raises(HeartjaxError, match=r"pred\.nii\.gz already exists.*--overwrite"):
        nifti.save_label(target, np.zeros_like(vol.label), vol.grid, MMWHS)
    assert target.read_bytes() == before and leftovers(target.parent) == ["pred.nii.gz"]
    nifti.save_label(target, np.zeros_like(vol.label), vol.grid, MMWHS, overwrite=True)
    assert not np.asarray(nibabel.load(str(target)).dataobj).any()
    assert leftovers(target.parent) == ["pred.nii.gz"]
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o666 & ~current_umask())


def current_umask():
    """The process umask (read without changing it for longer than a moment)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("bad", ["shape", "range", "dtype", "extension"])
def test_refused_save_leaves_nothing(tmp_path, bad):
    image_path, label_path, _, _ = tiny_pair(tmp_path, AFFINES["oblique_permuted"])
    vol = nifti.load_volume(image_path, label_path, MMWHS)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    indices, name = vol.label, "pred.nii.gz"
    if bad == "shape":
        indices = vol.label[:-1]
    elif bad == "range":
        indices = vol.label + 8
    elif bad == "dtype":
        indices = vol.label.astype(np.float32)
    else:
        name = "pred.png"
    with pytest.raises(HeartjaxError, match=name.replace(".", r"\.")):
        nifti.save_label(out_dir / name, indices, vol.grid, MMWHS)
    assert leftovers(out_dir) == []


def test_failed_write_removes_temp_file(tmp_path, monkeypatch):
    image_path, _, _, _ = tiny_pair(tmp_path, np.eye(4))
    vol = nifti.load_volume(image_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def broken_save(img, filename):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nibabel, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        nifti.save_array(out_dir / "probs.nii.gz", vol.image, vol.grid)
    assert leftovers(out_dir) == []


def test_a_quirk_shared_by_a_dataset_is_reported_once_with_its_count(tmp_path):
    from heartjax.data import cases, datasets

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        acdc_like(tmp_path / "images" / f"p{i}.nii.gz", np.zeros((6, 5, 4), np.float32) + i)
        acdc_like(tmp_path / "labels" / f"p{i}.nii.gz", np.zeros((6, 5, 4), np.uint8))
    ds = datasets.discover(tmp_path, "generic1")
    store = cases.CaseStore(ds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes as a Python warning per file
        for c in ds.cases:
            store.volume(c.case_id)
    lines = []
    store.report_quirks(lines.append)
    assert len(lines) == 1 and "3 of 3 file(s)" in lines[0] and "pixdim" in lines[0]
    store.report_quirks(lines.append)
    assert len(lines) == 1  # reported once
