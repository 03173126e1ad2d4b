"""The ``lipsync`` command line (also ``python -m lipsync``)."""
from __future__ import annotations

import argparse
import sys

from . import __version__
from .common import LipsyncError, setup_cache_env


def _cmd_preprocess(args) -> int:
    from .preprocessing import PreprocessOptions, _tqdm_progress, preprocess

    options = PreprocessOptions(atlas_size=args.atlas_size, max_gap_s=args.max_gap, keep_raw_atlas=args.keep_raw_atlas,
                                previews=not args.no_previews)
    out = preprocess(args.video, args.out, options=options, overwrite=args.overwrite,
                     progress=_tqdm_progress(not args.quiet and sys.stderr.isatty() or args.progress))
    from .inspect_clip import summarize
    from .prepared import open_prepared

    print(summarize(open_prepared(out)))
    return 0


def _cmd_inspect(args) -> int:
    from .inspect_clip import summarize
    from .prepared import open_prepared

    print(summarize(open_prepared(args.dir)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    ap = argparse.ArgumentParser(prog="lipsync", description="Personalized audio-driven 3D talking faces from one video.",
                                 formatter_class=fmt)
    ap.add_argument("--version", action="version", version=f"lipsync {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("preprocess", formatter_class=fmt,
                       help="track, pose- and lighting-normalize a talking-head video into a prepared clip",
                       description="Track the face in VIDEO, normalize pose and lighting, unwrap it into a texture atlas "
                                   "and write a prepared clip folder for training.")
    p.add_argument("video", help="a video of one person talking (1-5 minutes works best), with its sound")
    p.add_argument("--out", required=True, help="output folder (written atomically: it appears only when complete)")
    p.add_argument("--atlas-size", type=int, default=256, help="texture atlas side in texels")
    p.add_argument("--max-gap", type=float, default=0.5, help="interpolate tracking gaps up to this many seconds")
    p.add_argument("--keep-raw-atlas", action="store_true", help="also store the atlas before lighting normalization")
    p.add_argument("--no-previews", action="store_true", help="skip the preview images")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared clip at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("inspect", formatter_class=fmt, help="summarize a prepared clip",
                       description="Print a short summary of a prepared clip: frames, valid %, pose range, lighting.")
    p.add_argument("dir", help="a prepared clip folder")
    p.set_defaults(func=_cmd_inspect)
    return ap


def main(argv=None) -> int:
    setup_cache_env()
    args = build_parser().parse_args(argv)
    if getattr(args, "atlas_size", 256) not in range(32, 2049):
        print("lipsync: error: --atlas-size must be between 32 and 2048.", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except LipsyncError as err:
        print(f"lipsync: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lipsync: interrupted; nothing was written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
