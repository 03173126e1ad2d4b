"""Frame strip: the same frames of two or more videos, one row each, cropped and enlarged.

    .venv/bin/python tools/frame_strip.py GROUND_TRUTH.mp4 OURS.mp4 --out strip.png \
        --frames 20,25,30,35,40 --crop 110,100,125,150 --scale 2

Rows are labelled with the file names; used for the README's result strips.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    import cv2

    from lipsync.media import FrameReader, probe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--frames", default="10,20,30,40,50", help="frame numbers, comma-separated")
    ap.add_argument("--crop", default=None, help="w,h,x,y of the crop in pixels (default: whole frame)")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--labels", default=None, help="row labels separated by | (default: file names)")
    args = ap.parse_args(argv)
    wanted = [int(f) for f in args.frames.split(",")]
    labels = args.labels.split("|") if args.labels else [Path(v).name for v in args.videos]
    rows = []
    for video, label in zip(args.videos, labels):
        frames = {i: f.copy() for i, f in enumerate(FrameReader(probe(video), max_frames=max(wanted) + 1)) if i in wanted}
        tiles = []
        for i in wanted:
            img = frames[i]
            if args.crop:
                w, h, x, y = (int(v) for v in args.crop.split(","))
                img = img[y:y + h, x:x + w]
            if args.scale != 1:
                img = cv2.resize(img, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_CUBIC)
            tiles.append(img)
        row = np.concatenate(tiles, 1)
        band = np.full((22, row.shape[1], 3), 255, np.uint8)
        cv2.putText(band, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([band, row], 0))
    out = np.concatenate(rows, 0)
    cv2.imwrite(args.out, cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    print(f"wrote {args.out} ({out.shape[1]}x{out.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
