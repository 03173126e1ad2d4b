"""The study definition: a YAML (or JSON) file, validated with one-sentence errors.

A study lives in one folder: ``study.yaml`` beside a ``media/`` folder holding every video a
rater can be shown. Paths in the file are relative to the file's folder and must stay inside it
(absolute paths, ``..`` escapes and symlinks out of the folder are refused), so the rater app
can only ever serve the study's own files.

Example (what ``python -m human_study create`` writes)::

    version: 1
    title: LipSync3D against baselines
    instructions: |
      You will see short videos of a person talking ...
    methods: [lipsync3d, personalized_2d, frozen]
    pairs: [[lipsync3d, personalized_2d], [lipsync3d, frozen]]   # or "all"
    clips:
      - id: bgaa8p
        videos: {lipsync3d: media/3f2a...mp4, personalized_2d: media/91bc...mp4, frozen: ...}
    questions:
      - {id: ab_lipsync, type: paired, axis: lip_sync, text: Which video is better lip-synced?}
      - {id: mos_quality, type: mos, axis: visual_quality, text: Rate the visual quality.}
    trials_per_rater: 20
    practice_trials: 2
    attention_checks:
      count: 2
      shift_s: 0.5
      clips: {bgaa8p: {reference: media/aa01...mp4, shifted: media/77e0...mp4}}
    open_enrollment: true
    max_raters: 500
    min_watch_fraction: 0.9   # answers only after this share of the video has had time to play
    seed: 0
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from lipsync.common import LipsyncError

STUDY_FORMAT_VERSION = 1
AXES = ("realism", "lip_sync", "visual_quality")
QUESTION_TYPES = ("paired", "mos")
MOS_SCALE = (1, 2, 3, 4, 5)
MOS_LABELS = ("Bad", "Poor", "Fair", "Good", "Excellent")
# The method name of an attention check's shifted copy, as it appears in ratings and exports.
ATTENTION_SHIFTED = "attention:shifted"
ATTENTION_REFERENCE = "ground_truth"
ATTENTION_TEXT = "Which video is better lip-synced?"
DEFAULT_TEXT = {
    ("paired", "realism"): "Which video looks more like a real recording?",
    ("paired", "lip_sync"): "In which video do the lips match the speech better?",
    ("paired", "visual_quality"): "Which video has the higher visual quality (sharpness, no artefacts)?",
    ("mos", "realism"): "How realistic does this video look?",
    ("mos", "lip_sync"): "How well do the lips match the speech?",
    ("mos", "visual_quality"): "How good is the visual quality (sharpness, no artefacts)?",
}
DEFAULT_INSTRUCTIONS = (
    "You will watch short videos of a person talking and answer one question about each. "
    "Some trials show two videos side by side that play together with one sound track; others "
    "show one video. Watch each video to the end (you may replay it), then answer. There are no "
    "right or wrong answers except for a few obvious checks of attention. Please use headphones "
    "or speakers, and a quiet place. You can stop at any time and come back later with your "
    "personal link: you will continue where you left off."
)
MEDIA_SUFFIXES = (".mp4", ".webm", ".m4v", ".mov")
# The server accepts an answer only once this share of the trial's (longest) video has had time to
# play since it first showed the trial; the rater page enables its answers only after the video ended.
DEFAULT_MIN_WATCH = 0.9


class StudyError(LipsyncError):
    """A study file that cannot be used, with one sentence saying what to fix."""


@dataclass(frozen=True)
class Question:
    """One question asked of raters.

    Members:
        id: unique name, e.g. ``ab_lipsync``.
        type: ``paired`` (two videos, pick one) or ``mos`` (one video, score 1-5).
        axis: what is judged: ``realism``, ``lip_sync`` or ``visual_quality``.
        text: the question as shown.
        no_preference: paired only: whether "no preference" is offered.
    """

    id: str
    type: str
    axis: str
    text: str
    no_preference: bool = True


@dataclass(frozen=True)
class Clip:
    """One test clip: ``videos`` maps method name -> path relative to the study folder."""

    id: str
    videos: dict[str, str]


@dataclass(frozen=True)
class AttentionChecks:
    """Ground truth against a copy whose picture lags its sound by ``shift_s`` seconds.

    Members:
        count: attention trials per rater (0 disables them).
        shift_s: the shift, seconds.
        clips: clip id -> ``{"reference": path, "shifted": path}`` (relative to the study folder).
    """

    count: int = 0
    shift_s: float = 0.5
    clips: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Study:
    """A validated study definition; ``root`` is the folder of the study file (absolute)."""

    root: Path
    title: str
    instructions: str
    methods: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    clips: tuple[Clip, ...]
    questions: tuple[Question, ...]
    trials_per_rater: int
    practice_trials: int
    attention: AttentionChecks
    open_enrollment: bool = True
    max_raters: int = 1000
    seed: int = 0
    min_watch_fraction: float = DEFAULT_MIN_WATCH

    # ----- derived -------------------------------------------------------------------------
    def media_path(self, rel: str) -> Path:
        """The absolute path of a study file, refusing anything outside the study folder."""
        return _inside(self.root, rel, "media path")

    def item_universe(self) -> list[tuple[str, str, str, str]]:
        """Every distinct scored trial: ``(question_id, clip_id, method_a, method_b)``.

        Paired questions give one item per clip and unordered pair (``method_a < method_b``);
        MOS questions one per clip and method (``method_b == ""``).
        """
        items = []
        for q in self.questions:
            for clip in self.clips:
                if q.type == "paired":
                    for a, b in self.pairs:
                        if a in clip.videos and b in clip.videos:
                            items.append((q.id, clip.id, *sorted((a, b))))
                else:
                    for m in self.methods:
                        if m in clip.videos:
                            items.append((q.id, clip.id, m, ""))
        return items

    def attention_question(self) -> Question:
        """What an attention check looks like: the wording and answers of the study's lip-sync
        paired question (else of its first paired question), so that checks cannot be told apart
        from scored trials; a forced choice with a plain lip-sync question in a study without
        paired questions."""
        paired = [q for q in self.questions if q.type == "paired"]
        model = next((q for q in paired if q.axis == "lip_sync"), paired[0] if paired else None)
        if model is None:
            return Question("attention", "paired", "lip_sync", ATTENTION_TEXT, no_preference=False)
        return Question("attention", "paired", "lip_sync", model.text, model.no_preference)

    def question(self, qid: str) -> Question:
        if qid == "attention":
            return self.attention_question()
        for q in self.questions:
            if q.id == qid:
                return q
        raise KeyError(qid)

    def clip(self, cid: str) -> Clip:
        for c in self.clips:
            if c.id == cid:
                return c
        raise KeyError(cid)

    def design_hash(self) -> str:
        """A hash of what defines the trials (not the wording), to tie a database to its study."""
        design = {
            "methods": list(self.methods), "pairs": [list(p) for p in self.pairs],
            "clips": [[c.id, sorted(c.videos.items())] for c in self.clips],
            "questions": [[q.id, q.type, q.axis, q.no_preference] for q in self.questions],
            "trials_per_rater": self.trials_per_rater, "practice_trials": self.practice_trials,
            "attention": [self.attention.count, self.attention.shift_s, sorted(self.attention.clips)],
        }
        return hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()[:16]


def _inside(root: Path, rel: str, what: str) -> Path:
    if not isinstance(rel, str) or not rel.strip():
        raise StudyError(f"A {what} must be a non-empty relative path, got {rel!r}.")
    p = Path(rel)
    if p.is_absolute() or "\\" in rel or any(part == ".." for part in p.parts):
        raise StudyError(f"The {what} {rel!r} must be relative to the study folder, without '..'.")
    full = (root / p).resolve()
    if not full.is_relative_to(root.resolve()):
        raise StudyError(f"The {what} {rel!r} leads outside the study folder (a symlink?); copy the file in.")
    return full


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise StudyError(msg)


def _name_ok(s) -> bool:
    return isinstance(s, str) and 0 < len(s) <= 64 and all(ch.isalnum() or ch in "_-." for ch in s)


def load_study(path: str | Path, *, check_files: bool = True) -> Study:
    """Read and validate a study file (YAML or JSON); every problem is one sentence."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"The study file {path} does not exist; create one with `python -m human_study create`.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise StudyError(f"The study file {path} cannot be read as UTF-8 text ({err}).") from None
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            import yaml

            raw = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - any parse error is the user's file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StudyError(f"The study file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}.") from None
    return parse_study(raw, root=path.resolve().parent, check_files=check_files, where=str(path))


def parse_study(raw, *, root: Path, check_files: bool = True, where: str = "the study") -> Study:
    """Validate a study given as a dict; see the module docstring for the format."""
    _need(isinstance(raw, dict), f"{where} must be a mapping of settings at the top level.")
    known = {"version", "title", "instructions", "methods", "pairs", "clips", "questions", "trials_per_rater",
             "practice_trials", "attention_checks", "open_enrollment", "max_raters", "seed", "min_watch_fraction"}
    unknown = sorted(set(raw) - known)
    _need(not unknown, f"{where} has unknown setting(s) {', '.join(map(str, unknown))}; known are {', '.join(sorted(known))}.")
    _need(raw.get("version", STUDY_FORMAT_VERSION) == STUDY_FORMAT_VERSION,
          f"{where} has format version {raw.get('version')!r}; this program reads version {STUDY_FORMAT_VERSION}.")

    methods = raw.get("methods")
    _need(isinstance(methods, list) and len(methods) >= 1 and all(_name_ok(m) for m in methods),
          f"{where}: 'methods' must be a list of method names (letters, digits, '_', '-', '.').")
    _need(len(set(methods)) == len(methods), f"{where}: 'methods' lists a method twice.")
    _need(not any(m.startswith("attention") for m in methods), f"{where}: method names starting with 'attention' are reserved.")

    clips_raw = raw.get("clips")
    _need(isinstance(clips_raw, list) and clips_raw, f"{where}: 'clips' must be a non-empty list.")
    clips = []
    for i, c in enumerate(clips_raw):
        _need(isinstance(c, dict) and _name_ok(c.get("id")) and isinstance(c.get("videos"), dict),
              f"{where}: clip #{i + 1} needs an 'id' (a short name) and a 'videos' mapping of method -> file.")
        vids = c["videos"]
        extra = sorted(set(vids) - set(methods))
        _need(not extra, f"{where}: clip {c['id']!r} has videos for {', '.join(map(str, extra))}, which are not in 'methods'.")
        for m, rel in vids.items():
            _check_media(root, rel, f"video of {m!r} for clip {c['id']!r}", check_files)
        clips.append(Clip(c["id"], {m: vids[m] for m in methods if m in vids}))
    ids = [c.id for c in clips]
    _need(len(set(ids)) == len(ids), f"{where}: two clips have the same id.")

    pairs_raw = raw.get("pairs", "all")
    if pairs_raw == "all":
        pairs = tuple(itertools.combinations(methods, 2))
    else:
        _need(isinstance(pairs_raw, list) and all(isinstance(p, list) and len(p) == 2 for p in pairs_raw),
              f"{where}: 'pairs' must be \"all\" or a list of [method, method] pairs.")
        pairs = []
        for a, b in pairs_raw:
            _need(a in methods and b in methods and a != b, f"{where}: the pair [{a}, {b}] must name two different methods from 'methods'.")
            pairs.append((a, b))
        _need(len({frozenset(p) for p in pairs}) == len(pairs), f"{where}: 'pairs' lists a pair twice.")
        pairs = tuple(pairs)

    q_raw = raw.get("questions")
    _need(isinstance(q_raw, list) and q_raw, f"{where}: 'questions' must be a non-empty list.")
    questions = []
    for i, q in enumerate(q_raw):
        _need(isinstance(q, dict), f"{where}: question #{i + 1} must be a mapping.")
        qtype, axis = q.get("type"), q.get("axis")
        _need(_name_ok(q.get("id")), f"{where}: question #{i + 1} needs an 'id' (a short name).")
        _need(q["id"] != "attention", f"{where}: the question id 'attention' is reserved for attention checks.")
        _need(qtype in QUESTION_TYPES, f"{where}: question {q['id']!r} has type {qtype!r}; use one of {', '.join(QUESTION_TYPES)}.")
        _need(axis in AXES, f"{where}: question {q['id']!r} has axis {axis!r}; use one of {', '.join(AXES)}.")
        text = q.get("text") or DEFAULT_TEXT[(qtype, axis)]
        _need(isinstance(text, str) and len(text) <= 300, f"{where}: question {q['id']!r} needs a text of at most 300 characters.")
        nopref = q.get("no_preference", True)
        _need(isinstance(nopref, bool), f"{where}: 'no_preference' of question {q['id']!r} must be true or false.")
        questions.append(Question(q["id"], qtype, axis, text, nopref))
    _need(len({q.id for q in questions}) == len(questions), f"{where}: two questions have the same id.")
    if any(q.type == "paired" for q in questions):
        _need(len(pairs) > 0, f"{where}: paired questions need at least two methods to compare.")

    def _int(key, default, lo, hi):
        v = raw.get(key, default)
        _need(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi,
              f"{where}: '{key}' must be a whole number from {lo} to {hi}, got {v!r}.")
        return v

    trials = _int("trials_per_rater", 20, 1, 500)
    practice = _int("practice_trials", 2, 0, 10)
    max_raters = _int("max_raters", 1000, 1, 100000)
    seed = _int("seed", 0, 0, 2**31 - 1)

    att_raw = raw.get("attention_checks") or {}
    _need(isinstance(att_raw, dict), f"{where}: 'attention_checks' must be a mapping.")
    att_count = att_raw.get("count", 0)
    _need(isinstance(att_count, int) and 0 <= att_count <= 20, f"{where}: attention_checks.count must be 0-20.")
    shift = att_raw.get("shift_s", 0.5)
    _need(isinstance(shift, (int, float)) and 0.1 <= shift <= 5, f"{where}: attention_checks.shift_s must be 0.1-5 seconds.")
    att_clips = att_raw.get("clips", {}) or {}
    _need(isinstance(att_clips, dict), f"{where}: attention_checks.clips must map clip id -> {{reference, shifted}}.")
    for cid, pair in att_clips.items():
        _need(isinstance(pair, dict) and set(pair) == {"reference", "shifted"},
              f"{where}: attention clip {cid!r} needs exactly 'reference' and 'shifted' files.")
        for k, rel in pair.items():
            _check_media(root, rel, f"attention {k} video of {cid!r}", check_files)
    _need(att_count == 0 or att_clips, f"{where}: attention_checks.count is {att_count} but no attention clips are given.")

    title = raw.get("title", "Video rating study")
    instructions = raw.get("instructions", DEFAULT_INSTRUCTIONS)
    _need(isinstance(title, str) and 0 < len(title) <= 200, f"{where}: 'title' must be text of at most 200 characters.")
    _need(isinstance(instructions, str) and len(instructions) <= 5000, f"{where}: 'instructions' must be text of at most 5000 characters.")
    open_enrollment = raw.get("open_enrollment", True)
    _need(isinstance(open_enrollment, bool), f"{where}: 'open_enrollment' must be true or false.")
    min_watch = raw.get("min_watch_fraction", DEFAULT_MIN_WATCH)
    _need(isinstance(min_watch, (int, float)) and not isinstance(min_watch, bool) and 0 <= min_watch <= 1,
          f"{where}: 'min_watch_fraction' must be a number from 0 (no check) to 1, got {min_watch!r}.")

    study = Study(root=root.resolve(), title=title, instructions=instructions, methods=tuple(methods), pairs=pairs,
                  clips=tuple(clips), questions=tuple(questions), trials_per_rater=trials, practice_trials=practice,
                  attention=AttentionChecks(att_count, float(shift), dict(att_clips)),
                  open_enrollment=open_enrollment, max_raters=max_raters, seed=seed,
                  min_watch_fraction=float(min_watch))
    n_items = len(study.item_universe())
    _need(n_items > 0, f"{where}: no trial can be made: no clip has videos for a compared pair (or for a rated method).")
    _need(trials <= n_items, f"{where}: trials_per_rater is {trials} but the study has only {n_items} distinct trials; lower it or add clips.")
    return study


def _check_media(root: Path, rel, what: str, check_files: bool) -> None:
    full = _inside(root, rel, what)
    _need(full.suffix.lower() in MEDIA_SUFFIXES, f"The {what} ({rel}) must be a video file ({', '.join(MEDIA_SUFFIXES)}).")
    if check_files:
        _need(full.is_file(), f"The {what} ({rel}) does not exist in the study folder.")


def study_to_dict(study: Study) -> dict:
    """The study as the plain mapping that ``parse_study`` reads (for writing YAML)."""
    return {
        "version": STUDY_FORMAT_VERSION, "title": study.title, "instructions": study.instructions,
        "methods": list(study.methods), "pairs": [list(p) for p in study.pairs],
        "clips": [{"id": c.id, "videos": dict(c.videos)} for c in study.clips],
        "questions": [{"id": q.id, "type": q.type, "axis": q.axis, "text": q.text, "no_preference": q.no_preference}
                      for q in study.questions],
        "trials_per_rater": study.trials_per_rater, "practice_trials": study.practice_trials,
        "attention_checks": {"count": study.attention.count, "shift_s": study.attention.shift_s,
                             "clips": {k: dict(v) for k, v in study.attention.clips.items()}},
        "open_enrollment": study.open_enrollment, "max_raters": study.max_raters, "seed": study.seed,
        "min_watch_fraction": study.min_watch_fraction,
    }
