"""heartjax: whole-heart segmentation from CT and MRI with JAX and Flax."""

__version__ = "0.5.0"
