"""Calibration of synthesis's same-person check (``lipsync.synthesis.identity``) on real footage.

    .venv/bin/python tools/same_person.py [--data ../shared/data] [--work .cache/same_person] [--quick] [--pairs]

Every speaker of DATA (each clip in DATA/clips, and GRID s1) becomes a "model": its reference data
as training would make it, from the first 60% of its clip (GRID: grid_s1/s1_train_180s.mp4 whole).
Its same-person targets are stills (PNG frames at 25% and 80% of the clip, i.e. one frame inside
the training part and one after it) and the held-out last 40% as a video (GRID: the held-out
sentences grid_s1/eval_clips/*.mpg and stills at 5 s and 120 s). Every model is scored against
every target of every speaker: its own are same-person pairs, all others different-person pairs
(both directions, videos and stills). Targets are prepared exactly as ``lipsync synthesize
--target`` prepares them. Prints the matrix (rows: model, columns: target speaker; each cell the
range over that speaker's targets) and the margins of ``SAME_PERSON``; exits 1 if any pair falls
on the wrong side. Prepared clips are cached in WORK (about 5 minutes on 2 cores the first time).

``--quick`` (used by tests/test_same_person.py) takes GRID from the repository's fixtures instead:
tests/fixtures/grid_s1_19clips.mp4 as the model and grid_s1_bgaa8p.mpg (a sentence it lacks) as
the held-out clip, stills at 5 s and 40 s.

The speakers of DATA/clips are taken to be seven different people (checked by eye: the two
VoxCeleb2 crops show two different men); files named NAME.mp4 are the speaker NAME.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL_PART = 0.6          # share of each clip the model is made from
STILLS = (0.25, 0.8)      # where the still frames are taken, as shares of the clip
GRID_STILLS_S = (5.0, 120.0)
QUICK_GRID_STILLS_S = (5.0, 40.0)


@dataclass(frozen=True)
class Source:
    """A piece of footage: ``path`` cut to [start, start + duration) seconds (None: to the end), or
    the frame at ``start`` as a PNG when ``still``."""
    path: Path
    start: float = 0.0
    duration: float | None = None
    still: bool = False


@dataclass(frozen=True)
class Speaker:
    name: str
    model: Source
    targets: dict  # target name -> Source


@dataclass(frozen=True)
class PairScore:
    model: str
    target: str          # "speaker/target"
    same: bool
    similarity: float
    colour: float
    shape: float


def default_data() -> Path:
    return Path(os.environ.get("LIPSYNC_SHARED_DATA", ROOT.parent / "shared" / "data"))


def speakers(data: Path, *, quick: bool = False) -> list[Speaker]:
    """The calibration plan: every speaker of ``data`` with its model footage and targets."""
    from lipsync.media import probe

    out = []
    for clip in sorted((data / "clips").glob("*.mp4")):
        info = probe(clip)
        length = info.frames / info.fps
        split = round(MODEL_PART * length, 2)
        targets = {f"still{int(100 * f)}": Source(clip, round(f * length, 2), still=True) for f in STILLS}
        targets["held"] = Source(clip, split)
        out.append(Speaker(clip.stem, Source(clip, 0.0, split), targets))
    grid = data / "grid_s1"
    if quick:
        train = ROOT / "tests" / "fixtures" / "grid_s1_19clips.mp4"
        held = [ROOT / "tests" / "fixtures" / "grid_s1_bgaa8p.mpg"]
        stills = QUICK_GRID_STILLS_S
    else:
        train = grid / "s1_train_180s.mp4"
        held = sorted((grid / "eval_clips").glob("*.mpg"))
        stills = GRID_STILLS_S
    if train.is_file():
        targets = {f"still{int(t)}s": Source(train, t, still=True) for t in stills}
        targets.update({p.stem.replace("grid_s1_", ""): Source(p) for p in held})
        out.append(Speaker("grid_s1", Source(train), targets))
    return out


def _ffmpeg(*args) -> None:
    from lipsync.media import _tool

    proc = subprocess.run([_tool("ffmpeg"), "-nostdin", "-v", "error", "-y", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(map(str, args))}: {proc.stderr.strip()}")


def _cut(src: Source, stem: Path, *, audio: bool) -> Path:
    """``src`` as a file of its own, ``stem`` + .png or .mp4 (the original when it is a whole video)."""
    if src.still:
        out = stem.parent / f"{stem.name}.png"
        if not out.is_file():
            _ffmpeg("-ss", src.start, "-i", src.path, "-frames:v", "1", out)
        return out
    if src.start == 0 and src.duration is None:
        return src.path
    out = stem.parent / f"{stem.name}.mp4"
    if not out.is_file():
        span = ["-t", src.duration] if src.duration is not None else []
        sound = ["-c:a", "aac"] if audio else ["-an"]
        _ffmpeg("-ss", src.start, "-i", src.path, *span, "-c:v", "libx264", "-crf", "18", *sound, out)
    return out


def prepare(plan: list[Speaker], work: Path, *, log=print) -> dict:
    """``{(speaker, "model" | target name): SpeakerData}``, each prepared once into ``work``: a model
    as ``lipsync preprocess`` prepares its training clip, a target as synthesis prepares ``--target``."""
    from lipsync.model_io import SpeakerData
    from lipsync.preprocessing import PreprocessOptions, preprocess
    from lipsync.prepared import MANIFEST, open_prepared
    from lipsync.synthesis.targets import open_target

    (work / "cuts").mkdir(parents=True, exist_ok=True)
    out = {}
    for sp in plan:
        folder = work / f"{sp.name}.model"
        if not (folder / MANIFEST).is_file():
            log(f"preparing {sp.name} (model)")
            preprocess(_cut(sp.model, work / "cuts" / f"{sp.name}.model", audio=True), folder,
                       options=PreprocessOptions(previews=False), overwrite=True)
        model = SpeakerData.from_prepared(open_prepared(folder))
        out[sp.name, "model"] = model
        size = int(model.reference_atlas.shape[0])
        for name, src in sp.targets.items():
            folder = work / f"{sp.name}.{name}"
            if (folder / "target" / MANIFEST).is_file():
                clip = open_prepared(folder / "target")
            else:
                log(f"preparing {sp.name} {name} (target)")
                folder.mkdir(parents=True, exist_ok=True)
                clip, _, _ = open_target(_cut(src, work / "cuts" / f"{sp.name}.{name}", audio=False), folder, size, [])
            out[sp.name, name] = SpeakerData.from_prepared(clip)
    return out


def score(plan: list[Speaker], prepared: dict) -> list[PairScore]:
    """Every model against every target of every speaker."""
    from lipsync.synthesis.identity import identity_similarity

    rows = []
    for m in plan:
        for t in plan:
            for name in t.targets:
                r = identity_similarity(prepared[m.name, "model"], prepared[t.name, name])
                rows.append(PairScore(m.name, f"{t.name}/{name}", m.name == t.name, r.similarity, r.colour, r.shape))
    return rows


def margins(rows: list[PairScore]) -> dict:
    """The lowest same-person and highest different-person similarity, the pairs that give them,
    and how far each is from ``SAME_PERSON`` (positive: on the right side)."""
    from lipsync.synthesis.identity import SAME_PERSON

    same = min((r for r in rows if r.same), key=lambda r: r.similarity)
    diff = max((r for r in rows if not r.same), key=lambda r: r.similarity)
    wrong = [r for r in rows if (r.similarity >= SAME_PERSON) != r.same]
    return {"threshold": SAME_PERSON, "same_min": same.similarity, "same_min_pair": f"{same.model} vs {same.target}",
            "different_max": diff.similarity, "different_max_pair": f"{diff.model} vs {diff.target}",
            "same_margin": same.similarity - SAME_PERSON, "different_margin": SAME_PERSON - diff.similarity,
            "pairs_same": sum(r.same for r in rows), "pairs_different": sum(not r.same for r in rows),
            "wrong": [f"{r.model} vs {r.target} ({r.similarity:.3f})" for r in wrong]}


def matrix(plan: list[Speaker], rows: list[PairScore]) -> str:
    """Rows: model speaker; columns: target speaker; cells: min-max similarity over the targets."""
    names = [sp.name for sp in plan]
    width = max(len(n) for n in names) + 2
    lines = [" " * width + "".join(f"{n[:11]:>13s}" for n in names)]
    for m in names:
        cells = []
        for t in names:
            v = [r.similarity for r in rows if r.model == m and r.target.split("/")[0] == t]
            cells.append(f"{min(v):.2f}-{max(v):.2f}" + ("*" if m == t else " "))
        lines.append(f"{m:<{width}s}" + "".join(f"{c:>13s}" for c in cells))
    return "\n".join(lines) + "\n(* same person; each cell: lowest-highest over that speaker's targets)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data(), help="the shared data folder (env LIPSYNC_SHARED_DATA)")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "same_person", help="prepared clips are cached here")
    ap.add_argument("--quick", action="store_true", help="GRID from the repository's fixtures (shorter)")
    ap.add_argument("--pairs", action="store_true", help="also list every pair")
    ap.add_argument("--json", type=Path, default=None, help="write every pair's scores and the margins here")
    args = ap.parse_args(argv)
    if not (args.data / "clips").is_dir():
        print(f"no shared data at {args.data} (give --data or set LIPSYNC_SHARED_DATA)", file=sys.stderr)
        return 2
    from lipsync.common import setup_cache_env

    setup_cache_env()
    plan = speakers(args.data, quick=args.quick)
    rows = score(plan, prepare(plan, args.work))
    if args.pairs:
        for r in sorted(rows, key=lambda r: (not r.same, r.model, r.target)):
            print(f"{'same' if r.same else 'diff'}  {r.model:20s} {r.target:30s} similarity {r.similarity:6.3f}  "
                  f"colour {r.colour:6.3f}  shape {r.shape:.4f}")
    print(matrix(plan, rows))
    m = margins(rows)
    print(f"same person ({m['pairs_same']} pairs): lowest {m['same_min']:.3f} ({m['same_min_pair']})")
    print(f"different people ({m['pairs_different']} pairs): highest {m['different_max']:.3f} ({m['different_max_pair']})")
    print(f"SAME_PERSON = {m['threshold']}: margins {m['same_margin']:+.3f} (same) and {m['different_margin']:+.3f} (different)")
    if m["wrong"]:
        print("on the wrong side: " + "; ".join(m["wrong"]))
    if args.json:
        args.json.write_text(json.dumps({"margins": m, "pairs": [asdict(r) for r in rows]}, indent=2))
    return 1 if m["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
