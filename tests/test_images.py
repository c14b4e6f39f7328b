"""The image reader/writer registry: NIfTI through it, and a new format added from one place (here, this file)."""

import dataclasses

import numpy as np
import pytest

from heartjax.data.io import images, nifti
from heartjax.data.io.formats import ImageFormat, Volume
from heartjax.data.labels import MMWHS
from heartjax.common.errors import HeartjaxError


@dataclasses.dataclass(frozen=True)
class ToyGrid:
    shape: tuple


def toy_format(tmp_log):
    """A format storing RAS arrays in .toy.npz files; every call is logged."""
    def load_volume(image_path, label_path=None, scheme=None, case=None):
        tmp_log.append(("load_volume", str(image_path)))
        image = np.load(image_path)["a"].astype(np.float32)
        label = None if label_path is None else np.load(label_path)["a"].astype(np.uint8)
        return Volume(image, label, (1.0, 1.0, 1.0), np.eye(4), ToyGrid(image.shape), str(image_path),
                      None if label_path is None else str(label_path), case or "toy")

    def save_label(path, indices_ras, grid, scheme, overwrite=False):
        tmp_log.append(("save_label", str(path)))
        np.savez(path, a=np.asarray(indices_ras))
        return path

    def unsupported(*args, **kwargs):
        raise NotImplementedError

    return ImageFormat("toy", (".toy.npz",), ToyGrid, load_volume, unsupported, unsupported, save_label, unsupported,
                       lambda a, g: a, lambda a, g: a[::-1])


def test_nifti_is_registered_by_its_endings():
    assert images.format_of("scan.nii.gz") is nifti.FORMAT and images.format_of("a/b.nii") is nifti.FORMAT
    assert images.is_image_path("x.nii.gz") and not images.is_image_path("x.png")
    with pytest.raises(HeartjaxError, match=r"scan\.png .*\.nii\.gz, \.nii"):
        images.format_of("scan.png")


def test_a_new_format_is_one_registration(tmp_path):
    log = []
    fmt = images.register(toy_format(log))
    try:
        image = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
        np.savez(tmp_path / "case.toy.npz", a=image)
        vol = images.load_volume(tmp_path / "case.toy.npz")
        assert np.array_equal(vol.image, image) and isinstance(vol.grid, ToyGrid)
        images.save_label(tmp_path / "pred.toy.npz", np.ones((2, 3, 4), np.uint8), vol.grid, MMWHS)
        assert log == [("load_volume", str(tmp_path / "case.toy.npz")), ("save_label", str(tmp_path / "pred.toy.npz"))]
        assert np.array_equal(images.from_ras(image, vol.grid), image[::-1])  # dispatched by the grid's type
        with pytest.raises(HeartjaxError, match="clashes"):
            images.register(dataclasses.replace(fmt, name="toy2"))
    finally:
        images.FORMATS.remove(fmt)
    with pytest.raises(HeartjaxError, match="not an image"):
        images.load_volume(tmp_path / "case.toy.npz")
