"""`from heartjax.segment import Segmenter, segment`: numpy arrays in, labels out (see heartjax.serve.segment)."""

from heartjax.serve.segment import Segmenter, segment

__all__ = ["Segmenter", "segment"]
