"""Tiny synthetic TrainSample streams (coloured rectangles) for trainer mechanics tests.

Real-data training behaviour is tested on coco_mini; these only exercise determinism and plumbing fast.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from rapsam_edge.data.sample import TrainSample


class RectStream:
    def __init__(self, task: str, n: int = 8, size: int = 64, frames: int = 1, prompts: int = 4):
        self.task, self.n, self.size, self.frames, self.prompts = task, n, size, frames, prompts

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> TrainSample:
        rng = np.random.default_rng(i)
        s, t = self.size, self.frames
        img = np.full((t, 3, s, s), 120, np.float32)
        masks = np.zeros((3, t, s, s), bool)
        for k in range(3):
            y0, x0 = rng.integers(0, s // 2, 2)
            h, w = rng.integers(s // 6, s // 2, 2)
            masks[k, :, y0:y0 + h, x0:x0 + w] = True
            img[:, k % 3][masks[k]] = 250
        labels, ids, vhw = np.array([0, 1, 2]), np.arange(1, 4), np.tile([s, s], (t, 1))
        if self.task == "objects":
            return TrainSample("objects", img, masks, labels, ids, vhw)
        targets = np.arange(self.prompts) % 3
        pts = []
        for k in targets.tolist():
            ys, xs = np.nonzero(masks[k, 0])
            q = rng.integers(len(ys))
            pts.append((xs[q], ys[q]))
        p = np.array(pts, float)
        boxes = np.stack([p[:, 0] / s, p[:, 1] / s, np.full(len(p), 6 / s), np.full(len(p), 6 / s)], 1)
        return TrainSample("prompts", img, masks, labels, ids, vhw, boxes.astype(np.float32), targets)


def synthetic_coco(root, split: str = "val2017", images: int = 2, size: tuple[int, int] = (48, 64),
                   extra_annotations: list[dict] | None = None):
    """A tiny official-layout COCO instances folder: ``root/<split>/<id>.png`` (grey, a bright rectangle per
    object) + ``root/annotations/instances_<split>.json`` with one valid polygon annotation (category 1, person)
    per image; ``extra_annotations`` are appended as given (e.g. invalid ones). Returns ``root``."""
    import json
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    h, w = size
    imgs, anns = [], []
    for i in range(1, images + 1):
        img = np.full((h, w, 3), 90, np.uint8)
        x0, y0, x1, y1 = 8 + i, 6, w // 2 + i, h // 2 + 4
        img[y0:y1, x0:x1] = 230
        name = f"{i:012d}.png"
        Image.fromarray(img).save(root / split / name)
        imgs.append({"id": i, "file_name": name, "height": h, "width": w})
        anns.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "area": float((x1 - x0) * (y1 - y0)),
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    doc = {"images": imgs, "annotations": anns + list(extra_annotations or []),
           "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    return root


def bomb_png(path: Path, side: int = 30000, colour_type: int = 0) -> Path:
    """A ~100-byte PNG whose header declares side x side pixels (900 MP at 30000): a decompression bomb
    (colour_type 0 grey, 2 RGB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path
