"""Lip sync on held-out sentences: does the predicted mouth open when the real one did?

    python -m eval.heldout --model MODEL_DIR CLIP [CLIP ...] [--json FILE]

Each clip (a video of the model's speaker that was not in its training video, e.g.
``../shared/data/grid_s1/eval_clips/*.mpg``) is preprocessed; the model is driven by the clip's
own audio, and its predicted mouth opening (inner-lip gap over mouth width, from the predicted
vertices) is compared with the tracked one, frame by frame: Pearson correlation, mean absolute
error, and the error of a constant prediction at the clip's own mean opening (an optimistic
baseline: it knows the answer's mean).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def evaluate_clip(model, clip_path: str | Path, workdir: Path) -> dict:
    from lipsync.face_measures import mouth_opening
    from lipsync.preprocessing import PreprocessOptions, preprocess
    from lipsync.prepared import open_prepared
    from lipsync.synthesis import predict

    clip = open_prepared(preprocess(clip_path, workdir / Path(clip_path).stem,
                                    options=PreprocessOptions(previews=False)))
    audio, _ = clip.audio()
    verts, _ = predict(model, audio, clip.fps)
    truth = np.array(clip.array("mouth_opening"))
    n = min(len(truth), len(verts))
    pred, truth = mouth_opening(verts[:n]), truth[:n]
    ok = np.isfinite(truth) & np.array(clip.array("valid"))[:n]
    p, t = pred[ok], truth[ok]
    return {"clip": str(clip_path), "frames": int(ok.sum()),
            "correlation": float(np.corrcoef(p, t)[0, 1]) if p.std() > 0 and t.std() > 0 else 0.0,
            "mae": float(np.abs(p - t).mean()), "baseline_mae": float(np.abs(t - t.mean()).mean()),
            "pred_std": float(p.std()), "true_std": float(t.std())}


def main(argv=None) -> int:
    from lipsync.common import LipsyncError, setup_cache_env
    from lipsync.model_io import load_model

    setup_cache_env()
    ap = argparse.ArgumentParser(prog="python -m eval.heldout", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("clips", nargs="+")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    try:
        model = load_model(args.model)
        with tempfile.TemporaryDirectory(prefix="lipsync-heldout-") as tmp:
            rows = [evaluate_clip(model, c, Path(tmp)) for c in args.clips]
    except LipsyncError as err:
        print(f"eval.heldout: error: {err}", file=sys.stderr)
        return 2
    mean_open = float(np.mean([r["true_std"] for r in rows]))
    print(f"{'clip':<24} {'frames':>6} {'corr':>6} {'MAE':>7} {'baseline':>8}")
    for r in rows:
        print(f"{Path(r['clip']).name:<24} {r['frames']:>6} {r['correlation']:>6.3f} {r['mae']:>7.4f} {r['baseline_mae']:>8.4f}")
    summary = {"clips": len(rows), "mean_correlation": float(np.mean([r["correlation"] for r in rows])),
               "mean_mae": float(np.mean([r["mae"] for r in rows])),
               "mean_baseline_mae": float(np.mean([r["baseline_mae"] for r in rows])), "mean_true_std": mean_open,
               "mean_pred_std": float(np.mean([r["pred_std"] for r in rows]))}
    print(f"mean over {len(rows)} clips: correlation {summary['mean_correlation']:.3f}, MAE {summary['mean_mae']:.4f} "
          f"(constant baseline {summary['mean_baseline_mae']:.4f}) "
          f"(mouth opening std: predicted {summary['mean_pred_std']:.4f}, tracked {summary['mean_true_std']:.4f})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"summary": summary, "clips": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
