"""Tiny synthetic TrainSample streams (coloured rectangles) for trainer mechanics tests.

Real-data training behaviour is tested on coco_mini; these only exercise determinism and plumbing fast.
"""

from __future__ import annotations

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
        for k in targets:
            ys, xs = np.nonzero(masks[k, 0])
            q = rng.integers(len(ys))
            pts.append((xs[q], ys[q]))
        p = np.array(pts, float)
        boxes = np.stack([p[:, 0] / s, p[:, 1] / s, np.full(len(p), 6 / s), np.full(len(p), 6 / s)], 1)
        return TrainSample("prompts", img, masks, labels, ids, vhw, boxes.astype(np.float32), targets)
