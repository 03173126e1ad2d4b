"""The checks that need an NVIDIA GPU, in one run: the nvdiffrast renderer against the reference
rasterizer (tests/test_render.py), its speed at 512x512, and the quick and full training presets
on CUDA (time, steps, validation losses, peak GPU memory).

    python tools/gpu_check.py --prepared PREPARED_DIR --out RESULTS_DIR [--full-minutes 6] [--deadline SECONDS]

Writes RESULTS_DIR/gpu_check.json (updated after every step, so a run cut short keeps what it
measured) and the two trained models under RESULTS_DIR/models/. Each step runs even if an
earlier one failed; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _environment() -> dict:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import nvdiffrast

        info["nvdiffrast"] = nvdiffrast.__version__
    except ImportError:
        info["nvdiffrast"] = None
    return info


def _render_tests() -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "tests/test_render.py", "-k", "nvdiffrast or reference"],
                          cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR"))]
    return {"returncode": proc.returncode, "results": lines, "seconds": round(time.perf_counter() - t0, 1),
            "ok": proc.returncode == 0 and any("test_nvdiffrast_matches_reference" in ln and ln.startswith("PASSED") for ln in lines)}


def _render_speed(prepared: Path, frames: int = 500) -> dict:
    """nvdiffrast and the reference renderer drawing the speaker's mesh (its tracked vertices,
    posed as in the video) into 512x512 frames with a 512x512 RGBA atlas, as synthesis does."""
    from lipsync.pose import apply_similarity
    from lipsync.prepared import open_prepared
    from lipsync.render import make_renderer
    from lipsync.synthesis import TEXTURE_UPSAMPLE

    clip = open_prepared(prepared)
    verts = np.nan_to_num(np.array(clip.array("vertices")[:frames], np.float32))
    s, r, t = (np.array(clip.array(k)[:frames]) for k in ("pose_scale", "pose_rotation", "pose_translation"))
    ok = np.isfinite(s)
    size = clip.atlas_size * TEXTURE_UPSAMPLE
    scale = 512 / max(clip.info.width, clip.info.height)
    pts = apply_similarity(verts[ok], s[ok] * scale, r[ok], t[ok] * scale).astype(np.float32)
    import cv2

    ref = np.array(clip.array("reference_atlas"))
    tex = np.concatenate([cv2.resize(ref, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32),
                          np.full((size, size, 1), 255, np.float32)], -1)
    faces, uv = np.array(clip.array("faces")), np.array(clip.array("uv"))
    out = {}
    for kind, n in (("nvdiffrast", len(pts)), ("reference", 10)):
        rend = make_renderer(kind, 512, 512, faces, uv, size, channels=4)
        rend.render(pts[0], tex)  # warm-up (CUDA context, first kernel launches)
        t0 = time.perf_counter()
        for i in range(n):
            img, cover = rend.render(pts[i], tex)
        dt = time.perf_counter() - t0
        out[kind] = {"frames": n, "fps": round(n / dt, 1)}
        if kind == "nvdiffrast":
            first = rend.render(pts[0], tex)
        else:
            second = rend.render(pts[0], tex)
    inside = first[1] & second[1]
    out["mean_abs_difference_inside"] = float(np.abs(first[0][inside].astype(float) - second[0][inside]).mean())
    out["coverage_agreement"] = float((first[1] == second[1]).mean())
    return out


def _train(prepared: Path, out: Path, preset: str, minutes: float | None) -> dict:
    import torch

    from lipsync.training import PRESETS, train

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    folder = train(prepared, out, preset=preset, device="cuda", max_minutes=minutes)
    wall = time.perf_counter() - t0
    rows = folder.log_rows()
    last = rows[-1] if rows else {}
    return {"preset": preset, "steps": int(last.get("step", 0)), "steps_planned": PRESETS[preset].steps,
            "train_seconds": float(last.get("seconds", 0)), "wall_seconds": round(wall, 1),
            "val_geometry": float(last.get("val_geometry", float("nan"))), "val_texture": float(last.get("val_texture", float("nan"))),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20), "state": folder.state()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepared", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--full-minutes", type=float, default=6.0, help="cap on the full preset's training time")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds this script may run in all: the full preset's cap shrinks to fit (90 s kept for loading and saving)")
    p.add_argument("--skip", nargs="*", default=[], choices=["render", "speed", "quick", "full"])
    args = p.parse_args(argv)
    start = time.perf_counter()

    def full_minutes() -> float:
        if args.deadline is None:
            return args.full_minutes
        return max(0.5, min(args.full_minutes, (args.deadline - (time.perf_counter() - start) - 90) / 60))

    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"environment": _environment()}
    path = args.out / "gpu_check.json"
    failed = False
    steps = [("render", _render_tests), ("speed", lambda: _render_speed(args.prepared)),
             ("quick", lambda: _train(args.prepared, args.out / "models" / "quick", "quick", None)),
             ("full", lambda: _train(args.prepared, args.out / "models" / "full", "full", full_minutes()))]
    for name, step in steps:
        if name in args.skip:
            continue
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            report[name] = step()
        except Exception as err:  # keep going: every step is worth its own answer
            traceback.print_exc()
            report[name] = {"error": f"{type(err).__name__}: {err}"}
            failed = True
        report[name]["step_seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(report[name]), flush=True)
        path.write_text(json.dumps(report, indent=2))
    return 1 if failed or not report.get("render", {}).get("ok", True) else 0


if __name__ == "__main__":
    raise SystemExit(main())
