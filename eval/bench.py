"""Performance benchmarks: ``python -m eval.bench preprocess VIDEO``.

Reports frames per second for each preprocessing stage and overall, and the peak resident memory
of this process and of its children (the ffmpeg decoders). Results are printed as a table and
can be written as JSON (``--json``) with the machine and versions, so figures can be compared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _peak_mib() -> dict:
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"process_mib": round(self_kib / 1024, 1), "children_mib": round(child_kib / 1024, 1)}


def bench_preprocess(video: str, *, atlas_size: int = 256, previews: bool = True, keep: str | None = None) -> dict:
    from lipsync.preprocessing import PreprocessOptions, preprocess
    from lipsync.prepared import open_prepared

    work = Path(tempfile.mkdtemp(prefix="lipsync-bench-"))
    out = Path(keep) if keep else work / "prepared"
    try:
        t0 = time.perf_counter()
        preprocess(video, out, options=PreprocessOptions(atlas_size=atlas_size, previews=previews), overwrite=True)
        wall = time.perf_counter() - t0
        m = open_prepared(out).manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = m["frames"]
    stages = {k: {"seconds": v, "frames_per_s": round(n / v, 1) if v > 0 else None}
              for k, v in m["timings_s"].items() if k != "total"}
    return {
        "benchmark": "preprocess",
        "video": str(video),
        "frames": n,
        "resolution": f"{m['width']}x{m['height']}",
        "fps_source": m["fps"],
        "atlas_size": atlas_size,
        "previews": previews,
        "stages": stages,
        "total_s": round(wall, 3),
        "overall_frames_per_s": round(n / wall, 1),
        "realtime_factor": round((n / m["fps"]) / wall, 2),
        "peak_memory": _peak_mib(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "versions": m["versions"],
    }


def _print_preprocess(r: dict) -> None:
    print(f"preprocess {r['video']}: {r['frames']} frames {r['resolution']} @ {r['fps_source']:g} fps, atlas {r['atlas_size']}")
    print(f"{'stage':<10} {'seconds':>9} {'frames/s':>10}")
    for k, v in r["stages"].items():
        fps = f"{v['frames_per_s']:.1f}" if v["frames_per_s"] else "-"
        print(f"{k:<10} {v['seconds']:>9.3f} {fps:>10}")
    print(f"{'overall':<10} {r['total_s']:>9.3f} {r['overall_frames_per_s']:>10.1f}   ({r['realtime_factor']:.2f}x real time)")
    pm = r["peak_memory"]
    print(f"peak memory: {pm['process_mib']:.0f} MiB (process), {pm['children_mib']:.0f} MiB (largest child)")


def main(argv=None) -> int:
    from lipsync.common import LipsyncError, setup_cache_env

    setup_cache_env()
    ap = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("preprocess", help="time `lipsync preprocess` on a video",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("video")
    p.add_argument("--atlas-size", type=int, default=256)
    p.add_argument("--no-previews", action="store_true", help="leave the preview images out of the timing")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--keep", help="keep the prepared clip in this folder")
    args = ap.parse_args(argv)
    try:
        result = bench_preprocess(args.video, atlas_size=args.atlas_size, previews=not args.no_previews, keep=args.keep)
    except LipsyncError as err:
        print(f"eval.bench: error: {err}", file=sys.stderr)
        return 2
    _print_preprocess(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
