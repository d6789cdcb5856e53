"""Tile annotated frames into one contact sheet (the video app's output, issue 17's committed picture).

    PYTHONPATH=. .venv/bin/python scripts/contact_sheet.py runs/track/frames --every 2 --count 8 --cols 4 \\
        --width 320 --title "reference model trained on composites ..." --out benchmarks/results/video/sheet.png

Frames are taken in name order (``--every`` apart, ``--count`` of them), scaled to ``--width`` pixels, captioned
with their file name, laid out ``--cols`` per row under an optional title line. Writes a PNG.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

from PIL import Image, ImageDraw

from rapsam_edge.data.coco import list_images
from rapsam_edge.fsutil import write_atomic

CAPTION = 14  # pixels of caption under each frame


def sheet(frames: list[Path], cols: int, width: int, title: str = "") -> Image.Image:
    """One image holding ``frames`` in a grid of ``cols`` columns, each ``width`` wide, captioned by name."""
    if not frames:
        raise SystemExit("error: no frames to tile.")
    tiles = []
    for path in frames:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        tiles.append(rgb.resize((width, round(rgb.height * width / rgb.width)), Image.Resampling.BILINEAR))
    cell_h = max(t.height for t in tiles) + CAPTION
    rows = math.ceil(len(tiles) / cols)
    top = CAPTION + 4 if title else 0
    out = Image.new("RGB", (cols * width, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(out)
    if title:
        draw.text((4, 2), title, fill="black")
    for i, (tile, path) in enumerate(zip(tiles, frames, strict=True)):
        x, y = (i % cols) * width, top + (i // cols) * cell_h
        out.paste(tile, (x, y))
        draw.text((x + 4, y + tile.height + 1), path.stem, fill="black")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("frames", type=Path, help="folder of annotated frames (any image format)")
    ap.add_argument("--every", type=int, default=1, help="take every Nth frame (default: %(default)s)")
    ap.add_argument("--count", type=int, default=8, help="frames on the sheet (default: %(default)s)")
    ap.add_argument("--cols", type=int, default=4, help="frames per row (default: %(default)s)")
    ap.add_argument("--width", type=int, default=320, help="width of each frame in pixels (default: %(default)s)")
    ap.add_argument("--title", default="", help="a line above the grid (what model, what data)")
    ap.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = ap.parse_args(argv)
    picked = list_images(args.frames)[:: max(1, args.every)][: args.count]
    img = sheet(picked, args.cols, args.width, args.title)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    img.save(png, format="PNG")
    write_atomic(args.out, png.getvalue())
    print(f"{args.out}: {len(picked)} frames, {img.width}x{img.height}")


if __name__ == "__main__":
    main()
