"""Dataset discovery in each layout, refusals that name the file or setting, and patient-level folds."""

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest

from heartjax.common import atomic
from heartjax.data import datasets
from heartjax.data.datasets import Case
from heartjax.common.errors import HeartjaxError
from heartjax.data.labels import ACDC, MMWHS


def put(path, codes=(0, 1), shape=(3, 3, 2)):
    """Write a tiny NIfTI (values cycling through `codes`) at path, creating folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.resize(np.array(codes, np.uint16), int(np.prod(shape))).reshape(shape)
    nibabel.save(nibabel.Nifti1Image(data, np.eye(4), dtype=np.uint16), str(path))
    return path


def snapshot(root):
    """Every file under root with its bytes, to show that a call wrote nothing."""
    return {p: p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_mmwhs_layout_subfolders_mixed_modalities(tmp_path):
    for n in (1010, 1002):
        put(tmp_path / "ct_train" / f"ct_train_{n}_image.nii.gz")
        put(tmp_path / "ct_train" / f"ct_train_{n}_label.nii.gz", (0, 205, 500))
    put(tmp_path / "mr_train" / "mr_train_1001_image.nii")
    put(tmp_path / "mr_train" / "mr_train_1001_label.nii", (0, 820))
    (tmp_path / "README.txt").write_text("notes")
    ds = datasets.discover(tmp_path)
    assert ds.layout == "mmwhs" and ds.scheme is MMWHS and ds.modality is None
    assert [c.case_id for c in ds.cases] == ["ct_train_1002", "ct_train_1010", "mr_train_1001"]
    assert [c.meta["modality"] for c in ds.cases] == ["ct", "ct", "mri"]
    assert ds.cases[2].label.name == "mr_train_1001_label.nii"


def test_mmwhs_layout_files_in_root(tmp_path):
    put(tmp_path / "ct_train_1001_image.nii.gz")
    put(tmp_path / "ct_train_1001_label.nii.gz", (0, 205))
    ds = datasets.discover(tmp_path, scheme="generic2")
    assert ds.modality == "ct" and ds.scheme.name == "generic" and len(ds.cases) == 1


def nnunet(root, labels, channels):
    """An nnU-Net v2 raw folder with two cases."""
    for name in ("heart_002", "heart_010"):
        put(root / "imagesTr" / f"{name}_0000.nii.gz")
        put(root / "labelsTr" / f"{name}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "channel_names": channels,
                                                   "file_ending": ".nii.gz"}))
    return root


def test_nnunet_layout_custom_labels_ct(tmp_path):
    ds = datasets.discover(nnunet(tmp_path, {"background": 0, "LV": 1, "MYO": 2}, {"0": "CT"}))
    assert ds.layout == "nnunet" and ds.modality == "ct"
    assert ds.scheme.codes == (1, 2) and ds.scheme.names == ("LV", "MYO")
    assert [c.case_id for c in ds.cases] == ["heart_002", "heart_010"]
    assert ds.cases[0].image.name == "heart_002_0000.nii.gz" and ds.cases[0].label.name == "heart_002.nii.gz"


def test_nnunet_layout_known_names_and_msd_style(tmp_path):
    ds = datasets.discover(nnunet(tmp_path / "a", {"background": 0, "RV": 1, "MYO": 2, "LV": 3}, {"0": "cine"}))
    assert ds.scheme is ACDC and ds.modality == "mri"
    msd = {str(c): n for c, n in zip(MMWHS.codes, MMWHS.names)} | {"0": "background"}
    ds = datasets.discover(nnunet(tmp_path / "b", msd, {"0": "MRI"}))
    assert ds.scheme is MMWHS and ds.modality == "mri"


def acdc(root, patients=(1, 2, 10)):
    """ACDC training layout: two labelled frames per patient plus the 4D cine and Info.cfg."""
    for n in patients:
        folder = root / f"patient{n:03d}"
        for frame in (1, 12):
            put(folder / f"patient{n:03d}_frame{frame:02d}.nii.gz")
            put(folder / f"patient{n:03d}_frame{frame:02d}_gt.nii.gz", (0, 1, 2, 3))
        put(folder / f"patient{n:03d}_4d.nii.gz")
        (folder / "Info.cfg").write_text("ED: 1\nES: 12\nGroup: NOR\nHeight: 184.0\nNbFrame: 30\n")
    return root


def test_acdc_layout(tmp_path):
    ds = datasets.discover(acdc(tmp_path))
    assert ds.layout == "acdc" and ds.scheme is ACDC and ds.modality == "mri"
    assert [c.case_id for c in ds.cases][:3] == ["patient001_frame01", "patient001_frame12", "patient002_frame01"]
    assert len(ds.cases) == 6 and ds.cases[-1].patient == "patient010"
    assert [c.meta["frame"] for c in ds.cases[:2]] == ["ED", "ES"]
    assert ds.cases[0].patient == ds.cases[1].patient == "patient001"


def test_plain_layout_suffixes_and_extensions(tmp_path):
    suffixes = {"case1": "", "case2": "_label", "case3": "_mask", "case10": "_seg", "case4": "_gt"}
    for name, suffix in suffixes.items():
        ext = ".nii" if name == "case3" else ".nii.gz"
        put(tmp_path / "images" / f"{name}{ext}")
        put(tmp_path / "masks" / f"{name}{suffix}.nii.gz", (0, 1, 2, 5))
    ds = datasets.discover(tmp_path)
    assert ds.layout == "plain" and ds.modality is None
    assert [c.case_id for c in ds.cases] == ["case1", "case2", "case3", "case4", "case10"]
    assert ds.cases[4].label.name == "case10_seg.nii.gz"
    assert ds.scheme.name == "generic" and ds.scheme.codes == (1, 2, 3, 4, 5)  # largest code in the first label


@pytest.mark.parametrize("names, codes, expected", [
    (("patient001", "patient002"), (0, 1), "acdc"),
    (("scan_a", "scan_b"), (0, 205, 421, 850), "mmwhs"),
    (("scan_a", "scan_b"), (0, 1, 3), "generic"),
])
def test_plain_layout_scheme_inference(tmp_path, names, codes, expected):
    for name in names:
        put(tmp_path / "images" / f"{name}.nii.gz")
        put(tmp_path / "labels" / f"{name}.nii.gz", codes)
    assert datasets.discover(tmp_path).scheme.name == expected
    assert datasets.discover(tmp_path, scheme=ACDC).scheme is ACDC  # the argument wins


def test_plain_layout_reads_dataset_json(tmp_path):
    put(tmp_path / "images" / "x.nii.gz")
    put(tmp_path / "labels" / "x.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "heart": 1},
                                                       "channel_names": {"0": "CT"}}))
    ds = datasets.discover(tmp_path)
    assert ds.scheme.names == ("heart",) and ds.modality == "ct"


def test_real_acdc_folder(acdc_dir):
    ds = datasets.discover(acdc_dir)
    assert (ds.layout, ds.scheme, len(ds.cases)) == ("plain", ACDC, 99)
    ids = [c.case_id for c in ds.cases]
    # the README says 076 and 090 are left out, but only 090 is (99 cases)
    assert ids[0] == "patient001" and ids[-1] == "patient100" and "patient090" not in ids
    assert ds.cases[0].label == acdc_dir / "masks" / "patient001_mask.nii.gz"
    folds = datasets.make_folds(ds, 5, seed=0)
    assert sorted(len(f["val"]) for f in folds) == [19, 20, 20, 20, 20]


# ---- refusals ----

@pytest.mark.parametrize("kind", ["missing", "empty", "unrecognised", "file"])
def test_unusable_folder_lists_layouts(tmp_path, kind):
    root = tmp_path / "data"
    if kind != "missing":
        root.mkdir()
    if kind == "unrecognised":
        put(root / "scans" / "a.nii.gz")
        (root / "notes.txt").write_text("x")
    if kind == "file":
        root = tmp_path / "data" / "a.nii.gz"
        put(root)
    before = snapshot(tmp_path)
    with pytest.raises(HeartjaxError) as err:
        datasets.discover(root)
    message = str(err.value)
    assert str(root) in message
    for layout in ("mmwhs", "nnunet", "acdc", "plain"):
        assert f"  {layout}: " in message
    assert "ct_train/ct_train_1001_image.nii.gz" in message and "imagesTr/" in message
    assert snapshot(tmp_path) == before


def test_image_without_label_names_it_and_patterns(tmp_path):
    put(tmp_path / "images" / "a.nii.gz")
    put(tmp_path / "images" / "b.nii.gz")
    put(tmp_path / "labels" / "a_mask.nii.gz")
    with pytest.raises(HeartjaxError, match=r"b\.nii\.gz.*NAME_label.*NAME_gt"):
        datasets.discover(tmp_path)


def test_label_without_image_names_it(tmp_path):
    put(tmp_path / "images" / "a.nii.gz")
    put(tmp_path / "labels" / "a.nii.gz")
    put(tmp_path / "labels" / "ghost_seg.nii.gz")
    with pytest.raises(HeartjaxError, match=r"labels without an image.*ghost_seg"):
        datasets.discover(tmp_path)


def test_nnunet_without_labelstr(tmp_path):
    put(tmp_path / "imagesTr" / "x_0000.nii.gz")
    with pytest.raises(HeartjaxError, match=r"imagesTr/ but no labelsTr/"):
        datasets.discover(tmp_path)


def test_nnunet_region_labels_refused(tmp_path):
    nnunet(tmp_path, {"background": 0, "heart": [1, 2]}, {"0": "CT"})
    with pytest.raises(HeartjaxError, match=r"dataset\.json.*region"):
        datasets.discover(tmp_path)


def test_acdc_frame_without_gt(tmp_path):
    acdc(tmp_path, patients=(1,))
    (tmp_path / "patient001" / "patient001_frame12_gt.nii.gz").unlink()
    with pytest.raises(HeartjaxError, match=r"patient001.*patient001_frame12_gt.*patient001_frame12\.nii\.gz"):
        datasets.discover(tmp_path)


def test_mmwhs_image_without_label(tmp_path):
    put(tmp_path / "ct_train" / "ct_train_1001_image.nii.gz")
    with pytest.raises(HeartjaxError, match=r"ct_train_1001_image\.nii\.gz"):
        datasets.discover(tmp_path)


def fake_cases(patients=5, frames=2):
    """Cases of several frames per patient (no files needed for folds)."""
    return [Case(f"p{p}_frame{f}", f"p{p}", Path(f"p{p}_{f}.nii.gz"), None, {}) for p in range(patients)
            for f in range(frames)]


@pytest.mark.parametrize("k", [1, 0, 6, True, 2.5])
def test_bad_k_names_the_setting(k):
    with pytest.raises(HeartjaxError, match=r"setting k = .*number of patients \(5\)"):
        datasets.make_folds(fake_cases(), k, seed=0)


def test_folds_patient_level_disjoint_deterministic():
    cases = fake_cases(patients=7, frames=3)
    folds = datasets.make_folds(cases, 3, seed=4)
    assert folds == datasets.make_folds(cases, 3, seed=4)
    assert folds != datasets.make_folds(cases, 3, seed=5)
    patient = {c.case_id: c.patient for c in cases}
    every = sorted(c.case_id for c in cases)
    assert sorted(i for f in folds for i in f["val"]) == every  # each case in exactly one val fold
    for fold in folds:
        assert sorted(fold["train"] + fold["val"]) == every
        assert not {patient[i] for i in fold["train"]} & {patient[i] for i in fold["val"]}
    assert sorted(len({patient[i] for i in f["val"]}) for f in folds) == [2, 2, 3]


def test_splits_round_trip_and_refusals(tmp_path):
    ds = datasets.discover(acdc(tmp_path / "data"))
    folds = datasets.make_folds(ds, 3, seed=0)
    assert all(ds.case(i).patient not in {ds.case(j).patient for j in f["train"]} for f in folds for i in f["val"])
    path = tmp_path / "runs" / "splits.json"
    datasets.write_splits(path, folds)
    assert datasets.read_splits(path, ds) == folds
    assert sorted(p.name for p in path.parent.iterdir()) == ["splits.json"]
    bad = {
        "unknown.json": ([{"train": ["patient001_frame01"], "val": ["patient999_frame01"]}], r"patient999_frame01"),
        "leak.json": ([{"train": ["patient001_frame01"], "val": ["patient001_frame12"]}], r"patients \['patient001'\]"),
        "broken.json": ("[{", r"not a list"),
    }
    for name, (content, pattern) in bad.items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(HeartjaxError, match=rf"splits file .*{name}.*{pattern}"):
            datasets.read_splits(tmp_path / name, ds)


def test_write_splits_failure_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "splits.json"
    datasets.write_splits(path, [{"train": ["a"], "val": ["b"]}])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        datasets.write_splits(path, [{"train": [object()], "val": []}])  # not JSON-serialisable
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["splits.json"]

    def failing_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):  # the temporary file was written, then must go
        datasets.write_splits(path, [{"train": ["b"], "val": ["a"]}])
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["splits.json"]


def test_natural_sort_and_patient_ids():
    assert sorted(["case10", "case2", "case1"], key=datasets.natural_key) == ["case1", "case2", "case10"]
    assert datasets._patient_of("patient007_frame01") == "patient007"
    assert datasets._patient_of("mouse3_slice12") == "mouse3"
    assert datasets._patient_of("ct_train_1001") == "ct_train_1001"
    assert datasets._patient_of("Heart3-ES") == "Heart3"  # ED/ES frames of one heart are one patient
    assert datasets._patient_of("case_edge") == "case_edge"  # "ed" counts only as the whole last word
