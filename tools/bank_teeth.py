"""How much of the real teeth the mouth bank's chosen mouths show, in atlas space.

For each prepared clip (held-out footage of the model's speaker, e.g. eval.run's cached test
clips), the model is driven by the clip's own audio; each frame's chosen bank mouth is compared
with the clip's real atlas on the texels inside the inner lips: the teeth area (tooth-coloured
texels, ``lipsync.model.mouth_bank.teeth_fraction``, with thresholds from the bank's own mouths).
Reported: the chosen mouths' mean teeth area over the real one on the frames where the real mouth
shows teeth, and their per-frame correlation, for the choice by lip shape alone and, when the bank
has a teeth read-out, for the model's choice (lip shape and the teeth the audio predicts). No
rendering, so it isolates the bank's choice from the codec and the renderer.

    python tools/bank_teeth.py --model MODEL PREPARED [PREPARED ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHOWS_TEETH = 0.02  # share of the inner-lip texels from which a real frame counts as showing teeth


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("prepared", nargs="+")
    args = ap.parse_args(argv)

    from lipsync.common import LipsyncError
    from lipsync.model.mouth_bank import teeth_fraction, tooth_colours
    from lipsync.model_io import load_model
    from lipsync.prepared import open_prepared
    from lipsync.synthesis.pipeline import predict_shapes
    from lipsync.training import inner_lip_texels

    try:
        model = load_model(args.model)
        bank = model.mouth_bank
        if bank is None:
            raise LipsyncError(f"{args.model} has no mouth bank.")
        t, b, l, r = (int(v) for v in bank.box)
        inner = inner_lip_texels(model.speaker.uv, model.speaker.reference_atlas.shape[0])[t:b, l:r]
        mouth = model.speaker.region("mouth")[t:b, l:r]
        colours = tooth_colours(bank.patches, mouth & ~inner, ~mouth & (bank.mask == 0))
        if colours is None:
            raise LipsyncError("the bank's mouths show no lips or skin to take the speaker's colours from.")
        bank_teeth = np.array([teeth_fraction(p, inner, colours) for p in bank.patches])
        chosen = {"lip shape": [], "lip shape and teeth read-out": []} if bank.follows_teeth else {"lip shape": []}
        real_all = []
        for folder in args.prepared:
            clip = open_prepared(folder)
            verts, codes = predict_shapes(model, clip.audio()[0], clip.fps)
            atlas, seen, valid = clip.array("atlas"), clip.array("atlas_mask"), np.asarray(clip.array("valid"), bool)
            n = min(len(verts), clip.num_frames)
            use = np.flatnonzero(valid[:n])
            real_all.append([teeth_fraction(np.asarray(atlas[f, t:b, l:r]), inner, colours, np.asarray(seen[f, t:b, l:r])) for f in use])
            for name in chosen:
                pick = bank.frame_choice(verts[:n], codes[:n] if "read-out" in name else None)
                chosen[name].append(bank_teeth[pick[use]])
    except LipsyncError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    real = np.concatenate(real_all)
    ok = np.isfinite(real)
    shows = ok & (real >= SHOWS_TEETH)
    report = {"frames": int(ok.sum()), "frames_with_teeth": int(shows.sum()),
              "colours": {k: round(v, 2) for k, v in colours.__dict__.items()}}
    for name, parts in chosen.items():
        c = np.concatenate(parts)
        report[name] = {"teeth_ratio": round(float(c[shows].mean() / real[shows].mean()), 3),
                        "teeth_corr": round(float(np.corrcoef(c[ok], real[ok])[0, 1]), 3)}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
