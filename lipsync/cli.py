"""The ``lipsync`` command line (also ``python -m lipsync``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .common import LipsyncError, Progress, setup_cache_env


def _tqdm_progress(enabled: bool) -> Progress:
    """A ``Progress`` that draws one tqdm bar per stage on stderr (nothing when not ``enabled``)."""
    bars = {}

    def update(stage: str, done: int, total: int) -> None:
        if not enabled:
            return
        from tqdm import tqdm

        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"{stage:>8}", unit="frame", leave=True,
                                     dynamic_ncols=True, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _workers(text: str) -> int:
    """argparse type of ``--workers``: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of threads (0 for one per CPU core)")
    return value


def _cmd_preprocess(args) -> int:
    from .preprocessing import PreprocessOptions, preprocess

    options = PreprocessOptions(atlas_size=args.atlas_size, max_gap_s=args.max_gap, keep_raw_atlas=args.keep_raw_atlas,
                                previews=not args.no_previews, sync_audio=not args.no_sync, workers=args.workers)
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


def _cmd_train(args) -> int:
    from .training import train

    bar = {}

    def progress(step: int, total: int, losses: dict) -> None:
        if args.quiet:
            return
        from tqdm import tqdm

        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, initial=step - 1, desc="   train", unit="step", dynamic_ncols=True, file=sys.stderr)
        b = bar["bar"]
        b.update(step - b.n)
        if step % 10 == 0:
            b.set_postfix(geometry=f"{losses['geo']:.4f}", texture=f"{losses['tex']:.4f}")
        if step >= total:
            b.close()

    options = None
    if args.lookahead_ms is not None:
        from dataclasses import replace

        from .training import PRESETS

        options = replace(PRESETS[args.preset], lookahead_ms=args.lookahead_ms)
    try:
        folder = train(args.prepared, args.out, preset=args.preset, options=options, max_minutes=args.max_minutes,
                       device=args.device, resume=args.resume, progress=progress)
    finally:
        if "bar" in bar:
            bar["bar"].close()
    summary = folder.summary()
    print(f"model           {folder.path}")
    print(f"steps           {summary.steps} in {summary.seconds:.0f} s on {summary.device}"
          + (" (stopped at --max-minutes)" if summary.stopped_early else "")
          + (f" (stopped early: {summary.stop_reason})" if summary.stop_reason and not summary.stopped_early else ""))
    print(f"validation      geometry {summary.val_geometry:.4f}, texture {summary.val_texture:.4f}"
          f" (weights of step {summary.best_step}, the best validation)")
    print(f"log             {folder.log}, {folder.plot}")
    return 0


def _cmd_synthesize(args) -> int:
    import warnings

    from .model_io import load_model

    model = load_model(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = model.synthesize(out=args.out, audio=args.audio, text=args.text, target=args.target, mesh=args.mesh,
                                   blendshapes=args.blendshapes, renderer=args.renderer, mouth_bank=not args.no_mouth_bank,
                                   mouth_motion=args.mouth_motion,
                                   progress=_tqdm_progress(not args.quiet and sys.stderr.isatty() or args.progress))
    for w in caught:
        if issubclass(w.category, UserWarning):
            print(f"lipsync: warning: {w.message}", file=sys.stderr)
    print(f"video           {summary.out} ({summary.frames} frames, {summary.seconds:.2f} s at {summary.fps:g} fps)")
    print(f"audio           {summary.audio}")
    print(f"target          {summary.target}")
    if summary.mesh is not None:
        print(f"mesh            {args.mesh}")
    if summary.blendshapes is not None:
        print(f"blendshapes     {args.blendshapes} ({len(summary.blendshapes['names'])} shapes)")
    t = summary.timings_s
    print("time            {:.1f} s ({:.1f} frames/s): ".format(t["total"], summary.frames_per_second)
          + ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total"))
    for note in summary.notes:
        print(f"note            {note}")
    return 0


def _cmd_batch(args) -> int:
    from .batch import exit_code, format_summary, run_batch

    if args.num_cpus is not None and args.ray_address:
        raise LipsyncError("--num-cpus sizes a local Ray; a cluster at --ray-address brings its own CPUs, so give one of them.")
    try:
        rows = run_batch(args.jobs, args.out, address=args.ray_address, num_cpus=args.num_cpus, preset=args.preset,
                         device=args.device, renderer=args.renderer, show=not args.quiet)
    except KeyboardInterrupt:
        print("lipsync: interrupted; run the same command again to resume (finished videos are kept and not redone).",
              file=sys.stderr)
        return 130
    print(format_summary(rows, args.out))
    return exit_code(rows)


def _cmd_serve(args) -> int:
    from .live_server import LiveOptions, LiveService, WS_PATH, create_app, single_target
    from .model_io import load_model

    if not 1 <= args.max_sessions <= 64:
        raise LipsyncError("--max-sessions must be from 1 to 64.")
    if not 1 <= args.port <= 65535:
        raise LipsyncError("--port must be from 1 to 65535.")
    import importlib.util

    for name in ("uvicorn", "websockets"):  # websockets: uvicorn's WebSocket protocol
        if importlib.util.find_spec(name) is None:
            raise LipsyncError(f"serving needs the {name} package; reinstall lipsync (pip install -e .).")
    import socket

    import uvicorn

    with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as probe_socket:
        try:  # before the slow target preparation: is the address free?
            probe_socket.bind((args.host, args.port))
        except OSError as err:
            raise LipsyncError(f"cannot listen on {args.host}:{args.port} ({err.strerror or err}); choose another --port "
                               "or --host.") from None
    model = load_model(args.model)
    print(f"preparing the target {args.target or 'the training video'} ...", file=sys.stderr)
    resolve = single_target(model, args.target, progress=_tqdm_progress(sys.stderr.isatty()))
    live = resolve.live_target
    service = LiveService(resolve, LiveOptions(max_sessions=args.max_sessions, renderer=args.renderer))
    app = create_app(service, note=f"Model {Path(args.model).name}, into {args.target or 'its training video'}.")
    print(f"live            http://{args.host}:{args.port}/live (browser page), ws://{args.host}:{args.port}{WS_PATH} "
          f"(protocol in the README), {live.size[0]}x{live.size[1]} at {live.fps:g} fps, "
          f"up to {args.max_sessions} sessions", file=sys.stderr)
    try:
        uvicorn.run(app, host=args.host, port=args.port, ws="auto", log_level="warning")
    finally:
        live.close()
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
    p.add_argument("--no-sync", action="store_true", help="keep the audio as it is, even if it is out of sync with the lips")
    p.add_argument("--workers", type=_workers, default=0,
                   help="threads for the per-frame stages (0: one per CPU core; 1: one thread); results are the same")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared clip at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.set_defaults(func=_cmd_preprocess)

    p = sub.add_parser("train", formatter_class=fmt, help="train a personalized audio-to-face model on a prepared clip",
                       description="Train the audio-to-face model on a prepared clip (the last 10% is held out for "
                                   "validation); writes model.safetensors, config.json, a training log and a loss plot.")
    p.add_argument("prepared", help="a prepared clip folder (from 'lipsync preprocess')")
    p.add_argument("--out", required=True, help="model folder")
    p.add_argument("--preset", choices=["quick", "full"], default="quick",
                   help="quick: minutes on a CPU; full: longer, for a GPU")
    p.add_argument("--lookahead-ms", type=int, default=None,
                   help="how far past each video frame the model hears the audio, in ms (a multiple of 10, 0-230; "
                        "default: a centred 240 ms window, 110 ms ahead). Less lookahead = lower live latency")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes (a checkpoint is kept)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="where to train")
    p.add_argument("--resume", action="store_true", help="continue the training saved in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("synthesize", help="make a talking-head video from new audio or text",
                       description="Drive a trained model with audio (or text, spoken by espeak-ng) and insert the face "
                                   "into a target video or image (the training video by default).")
    p.add_argument("--model", required=True, help="a model folder (from 'lipsync train')")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="speech: wav, mp3, m4a, or a video with sound")
    src.add_argument("--text", help="text to speak with espeak-ng (offline)")
    p.add_argument("--target", default=None, help="video or still image of the same person (default: the training video)")
    p.add_argument("--out", required=True, help="output video (.mp4, H.264 + AAC)")
    p.add_argument("--mesh", default=None, help="also write the animated 3D face as glTF (.glb)")
    p.add_argument("--blendshapes", default=None, help="also write per-frame blendshape weights (.csv)")
    p.add_argument("--renderer", choices=["auto", "gl", "nvdiffrast", "reference"], default="auto",
                   help="rasterizer: OpenGL over EGL, nvdiffrast on CUDA, or the slow reference (default: auto: "
                        "nvdiffrast when CUDA is there, else OpenGL)")
    p.add_argument("--no-mouth-bank", action="store_true",
                   help="draw the network's own mouth instead of the real mouths kept in the model's mouth bank")
    p.add_argument("--mouth-motion", type=float, default=1.0, metavar="M",
                   help="how much the mouth moves, relative to the speaker's own amount measured in training "
                        "(default 1; 0.8 subtler, 1.2 more pronounced; 0.25-2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    p.set_defaults(func=_cmd_synthesize)

    p = sub.add_parser("batch", help="make many videos from a CSV of jobs, on Ray",
                       description="Make one talking-head video per row of JOBS.csv (columns: output, model or "
                                   "train_video, audio or text, and optional voice, target, mesh, blendshapes; see "
                                   "lipsync/batch.py), in parallel on an embedded local Ray or a cluster. Rows with the "
                                   "same training video share one training; a bad row fails alone; DIR/summary.csv "
                                   "lists every job; running the same command again makes only what is missing.")
    p.add_argument("jobs", metavar="JOBS.csv", help="the jobs: a CSV file with a header row")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the videos and summary.csv, or an object-store URI such as s3://bucket/prefix "
                        "(the inputs are copied there and every node works in a local mirror; see docs/cluster.md)")
    p.add_argument("--ray-address", metavar="ADDRESS", default=None,
                   help="join the Ray cluster at ADDRESS (default: $RAY_ADDRESS, else an embedded local Ray); every "
                        "node must see the CSV's files and DIR at the same paths, unless DIR is an object-store URI")
    p.add_argument("--num-cpus", type=int, metavar="N", default=None, help="CPUs of the embedded local Ray (default: all)")
    p.add_argument("--preset", choices=["quick", "full", "tiny"], default="quick", metavar="{quick,full}",
                   help="training preset of the train_video rows (default: quick, minutes on a CPU; full: longer, for a GPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where training runs (default: auto, a GPU when the Ray cluster has one)")
    p.add_argument("--renderer", choices=["auto", "gl", "nvdiffrast", "reference"], default="auto",
                   help="how the face mesh is rasterized (default: auto: nvdiffrast on CUDA, else OpenGL)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_cmd_batch)

    p = sub.add_parser("serve", formatter_class=fmt, help="serve live synthesis over a WebSocket (and a browser page)",
                       description="Stream audio in, get the talking face back live: a WebSocket endpoint at /live/ws "
                                   "(protocol lipsync-live/1, see the README) and a page at /live that uses the microphone.")
    p.add_argument("--model", required=True, help="a model folder (from 'lipsync train')")
    p.add_argument("--target", default=None, help="video or still image of the same person (default: the training video)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--max-sessions", type=int, default=2, help="live sessions at once (more clients are told it is busy)")
    p.add_argument("--renderer", choices=["auto", "gl", "nvdiffrast", "reference"], default="auto",
                   help="how the face mesh is rasterized")
    p.set_defaults(func=_cmd_serve)

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
