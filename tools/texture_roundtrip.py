"""How much mouth detail the texture path keeps, with a perfect model.

Each frame's own lighting-normalized atlas (``--texture own``) or the speaker's reference atlas
(``--texture reference``, what the ``frozen`` method shows) is rendered with the frame's own
vertices back into the frame, through the same relighting, rendering and blending as synthesis;
the mouth box's Laplacian variance is then compared with the real frame's (eval's ``sharpness``
metric: 1 = as sharp as the video).

    python tools/texture_roundtrip.py tests/fixtures/grid_s1_bgaa8p.mpg --texture own
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video")
    ap.add_argument("--atlas-size", type=int, default=256)
    ap.add_argument("--texture", choices=["own", "reference"], default="own")
    ap.add_argument("--upsample", type=int, default=None, help="atlas enlargement before rendering "
                    "(default: lipsync.synthesis.TEXTURE_UPSAMPLE)")
    ap.add_argument("--frames", type=int, default=150, help="at most this many frames from the start")
    ap.add_argument("--keep", type=Path, default=None, help="also save the round-trip video here (.mp4)")
    args = ap.parse_args(argv)

    from lipsync.common import setup_cache_env

    setup_cache_env()
    from eval.metrics.realism import sharpness_ratios
    from eval.samples import sample_boxes
    from lipsync.media import FrameReader, probe, write_wav
    from lipsync.model_io import SpeakerData
    from lipsync.prepared import open_prepared
    from lipsync.preprocessing import PreprocessOptions, preprocess
    from lipsync.synthesis import TEXTURE_UPSAMPLE, blend_mask, composite_video, target_for_speaker

    up = TEXTURE_UPSAMPLE if args.upsample is None else args.upsample
    video = Path(args.video)
    with tempfile.TemporaryDirectory(prefix="roundtrip-") as tmp:
        tmp = Path(tmp)
        prep = preprocess(video, tmp / "prepared",
                          options=PreprocessOptions(atlas_size=args.atlas_size, previews=False, keep_raw_atlas=True))
        clip = open_prepared(prep)
        speaker = SpeakerData.from_prepared(clip)
        n = min(clip.num_frames, args.frames)
        atlases = clip.array("atlas")
        ref_verts = np.nan_to_num(np.array(clip.array("reference_vertices")))
        verts = np.array(clip.array("vertices"))[:n]
        verts = np.where(np.isfinite(verts), verts, ref_verts[None])
        alpha = blend_mask(speaker, args.atlas_size)[..., None] * 255.0

        def texture(i: int) -> np.ndarray:
            rgb = speaker.reference_atlas if args.texture == "reference" else atlases[i]
            return np.concatenate([np.asarray(rgb, np.float32), alpha], -1)

        wav = tmp / "audio.wav"
        write_wav(wav, clip.audio()[0])
        out = tmp / "roundtrip.mp4"
        target = target_for_speaker(speaker, prep, tmp)
        composite_video(speaker, target, verts, texture, out, wav, schedule="aligned", workdir=tmp, crf=12,
                        texture_upsample=up)
        if args.keep:
            import shutil

            shutil.copyfile(out, args.keep)
        real = np.stack(list(FrameReader(probe(video), max_frames=n)))
        made = np.stack(list(FrameReader(probe(out), max_frames=n)))
        m = min(len(real), len(made))
        _, mouth = sample_boxes(np.array(clip.array("landmarks"))[:m], real.shape[2], real.shape[1])
        ratios = sharpness_ratios(made[:m], real[:m], mouth, np.array(clip.array("valid"))[:m])
    print(json.dumps({"video": video.name, "atlas_size": args.atlas_size, "texture": args.texture, "upsample": up,
                      "frames": int(m), "mouth_sharpness": round(float(np.nanmean(ratios)), 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
