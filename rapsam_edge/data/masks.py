"""Compact storage of an image's binary masks: bit planes that crop/flip/resize in one gather.

Why not an (N, H0, W0) bool array: a COCO image has up to ~50 annotations of 640x480, i.e. 14 MB of bools
that must be resized and cropped for every training sample. Packing 8 masks per byte shrinks both the
LRU cache and the per-sample work eightfold: the augmentation maps every output pixel to a source pixel
(nearest neighbour) and gathers the packed bytes once, then unpacks only the output window. Layout is
(ceil(N/8), H, W) uint8 with mask k in bit (k % 8) of plane k // 8 (little-endian bit order), so each
plane is a contiguous image and unpacking writes mask-major (N, h, w) output without a transpose.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class MaskStack:
    """N binary (H, W) masks packed as bit planes.

    Attributes:
        bits: (ceil(N / 8), H, W) uint8 planes (at least one plane, so the size survives N = 0).
        count: N, the number of masks.
    """

    __slots__ = ("bits", "count")

    def __init__(self, bits: np.ndarray, count: int) -> None:
        if bits.dtype != np.uint8 or bits.ndim != 3 or bits.shape[0] < max(1, (count + 7) // 8):
            raise ValueError(f"MaskStack bits must be (>= ceil({count}/8), H, W) uint8, got {bits.dtype} "
                             f"{bits.shape}.")
        self.bits = bits
        self.count = int(count)

    @classmethod
    def from_masks(cls, masks: Iterable[np.ndarray] | np.ndarray, hw: Sequence[int]) -> MaskStack:
        """Pack (H, W) masks (any dtype, non-zero = inside; an (N, H, W) array or an iterable of masks).

        Masks are OR-ed into the planes one at a time, so an iterable of freshly decoded annotations is
        packed without ever materialising the (N, H, W) stack.
        """
        h, w = int(hw[0]), int(hw[1])
        planes: list[np.ndarray] = []
        k = 0
        for m in masks:
            m = np.asarray(m)
            if m.shape != (h, w):
                raise ValueError(f"mask {k} has shape {m.shape}, expected ({h}, {w}).")
            if k % 8 == 0:
                planes.append(np.zeros((h, w), np.uint8))
            bit = (m != 0) if m.dtype != np.bool_ else m
            np.bitwise_or(planes[-1], np.left_shift(bit.view(np.uint8), k % 8, dtype=np.uint8), out=planes[-1])
            k += 1
        bits = np.stack(planes) if planes else np.zeros((1, h, w), np.uint8)
        return cls(bits, k)

    @classmethod
    def from_label_map(cls, label_map: np.ndarray, values: Sequence[int] | np.ndarray) -> MaskStack:
        """Masks ``label_map == v`` for each v of `values` (e.g. panoptic segment ids)."""
        return cls.from_masks((label_map == v for v in values), label_map.shape)

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.bits.shape[1]), int(self.bits.shape[2])

    def __len__(self) -> int:
        return self.count

    def _unpack(self, planes: np.ndarray, index: np.ndarray) -> np.ndarray:
        ks = np.asarray(index, dtype=np.int64)
        if ks.size and (ks.min() < 0 or ks.max() >= self.count):
            raise IndexError(f"mask index out of range for a stack of {self.count} masks.")
        shifts = (ks % 8).astype(np.uint8)[:, None, None]
        return np.bitwise_and(np.right_shift(planes[ks // 8], shifts), 1).view(np.bool_)

    def unpack(self, index: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(K, H, W) bool masks (all N, or the rows in `index`)."""
        index = np.arange(self.count) if index is None else index
        return self._unpack(self.bits, np.asarray(index, dtype=np.int64))

    def gather(self, rows: np.ndarray, cols: np.ndarray,
               index: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """(K, len(rows), len(cols)) bool: output pixel (i, j) = source pixel (rows[i], cols[j]).

        A nearest-neighbour resize, crop and flip are all one such gather (see transforms.py).
        """
        planes = np.take(np.take(self.bits, rows, axis=1), cols, axis=2)
        index = np.arange(self.count) if index is None else index
        return self._unpack(planes, np.asarray(index, dtype=np.int64))

    def areas(self) -> np.ndarray:
        """(N,) int64 pixel count of each mask."""
        out = np.zeros(self.count, np.int64)
        for k in range(self.count):
            out[k] = int(np.count_nonzero(np.bitwise_and(self.bits[k // 8], np.uint8(1 << (k % 8)))))
        return out

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)
