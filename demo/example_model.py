"""The model shipped with the demo: GRID speaker s1 (CC BY 4.0) trained on a 3-minute clip.

"Start here" drives it at once, over the bundled 3-second clip of the same speaker (a sentence
the model never saw), so a first visitor sees a well-trained result instead of waiting minutes
for a model trained on 3 seconds. This module re-makes it and records what it outputs:

    python -m demo.example_model --video ../shared/data/grid_s1/s1_train_180s.mp4

preprocesses the video (or takes ``--prepared``), trains the quick preset with a smaller mouth
bank (``BANK_FRAMES`` mouths) and stores the network's weights as float16, which keeps the folder
under 5 MB, and replaces ``MODEL_DIR`` with the model and ``RECORDED``: the model's outputs for
the bundled clip's audio, which a test checks the shipped model still reproduces.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .config import EXAMPLE_VIDEO, PROJECT_ROOT

MODEL_DIR = PROJECT_ROOT / "demo" / "assets" / "grid_s1_model"
RECORDED = "recorded_outputs.npz"
SHIPPED_FILES = ("config.json", "model.safetensors", "training.json", "train_log.csv", "loss.png")
# mouths kept in the shipped bank (~2.7 MB, against 250 by default). On the GRID evaluation
# clips, with one mouth kept per k-means cluster of all frames, 120 mouths were as sharp as 250
# and sharper than 1000 (each kept mouth is the sharpest of more frames), with slightly fewer
# teeth (0.51 against 0.54 of the real ones for 1000).
BANK_FRAMES = 120
CROP_EVERY = 15        # frames of the predicted texture kept in the record (every 15th)


def shipped_model() -> Path | None:
    """The shipped model's folder, or None when it is absent or incomplete."""
    return MODEL_DIR if all((MODEL_DIR / f).is_file() for f in ("config.json", "model.safetensors", "training.json")) else None


def model_key(folder: Path) -> str:
    """A short key of a model folder's content (its summary and config: both change with any retraining)."""
    from lipsync.files import content_key

    return content_key(folder / "config.json", folder / "training.json")[:12]


def record_outputs(folder: Path, audio_source: Path = EXAMPLE_VIDEO) -> dict[str, np.ndarray]:
    """What the model at ``folder`` makes of ``audio_source``'s sound at 25 fps: the predicted
    vertices (T, V, 3), every ``CROP_EVERY``-th predicted texture crop (n, H, W, 3), the per-frame
    mean of all crops (T,), and the mouth bank's choice of mouth per frame (T,)."""
    from lipsync.media import load_audio
    from lipsync.model_io import load_model
    from lipsync.synthesis.pipeline import predict_with_codes

    model = load_model(folder)
    verts, crops, codes = predict_with_codes(model, load_audio(audio_source), 25.0)
    out = {"vertices": verts.astype(np.float32), "crops": crops[::CROP_EVERY].astype(np.float32),
           "crop_means": crops.mean((1, 2, 3)).astype(np.float32)}
    if model.mouth_bank is not None:
        out.update(bank_index=model.mouth_bank.frame_choice(verts, codes))
    return out


def make(video: Path | None, *, out: Path = MODEL_DIR, prepared: Path | None = None, options=None,
         workdir: Path | None = None, progress=None) -> Path:
    """Preprocess ``video`` (unless ``prepared`` is given), train, and replace ``out`` with the
    model's shipped files and its recorded outputs. ``options``: ``TrainOptions`` (default: the
    quick preset with a ``BANK_FRAMES``-mouth bank). Nothing at ``out`` changes on failure."""
    from lipsync.files import atomic_output
    from lipsync.model_io import store_half
    from lipsync.preprocessing import preprocess
    from lipsync.training import PRESETS, train

    options = options or replace(PRESETS["quick"], mouth_bank_frames=BANK_FRAMES)
    with tempfile.TemporaryDirectory(prefix="lipsync-example-", dir=workdir) as tmp:
        tmp = Path(tmp)
        if prepared is None:
            prepared = preprocess(video, tmp / "prepared", progress=progress)
        model = train(prepared, tmp / "model", preset="quick", options=options)
        with atomic_output(out, overwrite=True, marker="model.safetensors", what="shipped model") as dest:
            for name in SHIPPED_FILES:
                if (Path(model) / name).is_file():
                    shutil.copy2(Path(model) / name, dest / name)
            for name, inner in (("training.json", ()), ("config.json", ("training",))):
                doc = json.loads((dest / name).read_text())
                at = doc
                for key in inner:
                    at = at[key]
                at["prepared"] = Path(at["prepared"]).name  # no path of the machine that made it
                (dest / name).write_text(json.dumps(doc, indent=2))
            store_half(dest)
            np.savez_compressed(dest / RECORDED, **record_outputs(dest))
            (dest / "options.json").write_text(json.dumps(asdict(options), indent=2))
    return out


def main(argv=None) -> int:
    from lipsync.common import LipsyncError, setup_cache_env

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", type=Path, help="the training video (GRID s1's 3-minute clip)")
    ap.add_argument("--prepared", type=Path, help="its prepared clip, instead of preprocessing --video")
    ap.add_argument("--out", type=Path, default=MODEL_DIR)
    args = ap.parse_args(argv)
    if (args.video is None) == (args.prepared is None):
        ap.error("give --video or --prepared")
    setup_cache_env()
    try:
        out = make(args.video, out=args.out, prepared=args.prepared,
                   progress=lambda stage, done, total: None)
    except LipsyncError as err:
        print(f"demo.example_model: error: {err}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"shipped model {out} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
