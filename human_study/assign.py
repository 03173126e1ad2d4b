"""Which trials a new rater gets, in which order, with which video on which side.

Balancing, given what earlier raters were assigned (``Tally``):

- **across raters**: a new rater gets the ``trials_per_rater`` items shown least often so far
  (ties broken at random), so every clip x pair x question is covered evenly as raters arrive;
- **left/right per method pair**: for each pair, the side of the first method is the one it has
  had less often so far (within a question and across questions), so side bias cancels out;
- **order**: shuffled per rater; attention checks go at random positions after the first
  scored trial; practice trials come first and are not scored.

The function is pure (the caller holds a lock and passes the tally read from the database), so
the balance can be tested without a server.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field, replace

from .study import ATTENTION_REFERENCE, ATTENTION_SHIFTED, Study


@dataclass(frozen=True)
class TrialSpec:
    """One trial to store for a rater.

    Members:
        position: 0-based order of presentation.
        kind: ``paired`` or ``mos``.
        question_id, axis, clip_id: what is asked about which clip.
        method_left, method_right: paired trials (``method_right`` is ``None`` for MOS).
        media_left, media_right: study-relative file paths (never shown to the rater).
        is_practice, is_attention: practice trials are not analysed; attention trials check the rater.
        expected: attention trials: the side a careful rater picks (``left``/``right``).
    """

    position: int
    kind: str
    question_id: str
    axis: str
    clip_id: str
    method_left: str
    method_right: str | None
    media_left: str
    media_right: str | None
    is_practice: bool = False
    is_attention: bool = False
    expected: str | None = None


@dataclass
class Tally:
    """Counts over all raters so far: ``items[item]`` and ``first_left[(a, b)]`` with ``a < b``.

    ``first_left[(a, b)]`` is ``[times a was left, times b was left]``.
    """

    items: Counter = field(default_factory=Counter)
    first_left: dict = field(default_factory=dict)

    def add(self, spec: TrialSpec) -> None:
        if spec.is_practice or spec.is_attention:
            return
        if spec.kind == "paired":
            a, b = sorted((spec.method_left, spec.method_right))
            self.items[(spec.question_id, spec.clip_id, a, b)] += 1
            self.first_left.setdefault((a, b), [0, 0])[0 if spec.method_left == a else 1] += 1
        else:
            self.items[(spec.question_id, spec.clip_id, spec.method_left, "")] += 1


def _spec(study: Study, position: int, item, left_first: bool, **kw) -> TrialSpec:
    qid, cid, a, b = item
    q = study.question(qid)
    videos = study.clip(cid).videos
    if q.type == "mos":
        return TrialSpec(position, "mos", qid, q.axis, cid, a, None, videos[a], None, **kw)
    left, right = (a, b) if left_first else (b, a)
    return TrialSpec(position, "paired", qid, q.axis, cid, left, right, videos[left], videos[right], **kw)


def assign_trials(study: Study, tally: Tally, rng: random.Random) -> list[TrialSpec]:
    """The trials for one new rater, given the tally of all earlier raters (updated in place)."""
    universe = study.item_universe()
    # least shown first; random among equals
    order = sorted(universe, key=lambda it: (tally.items[it], rng.random()))
    chosen = order[: study.trials_per_rater]
    rng.shuffle(chosen)

    specs: list[TrialSpec] = []
    pos = 0
    # practice: random items, random sides, not counted
    for item in rng.sample(universe, min(study.practice_trials, len(universe))):
        specs.append(_spec(study, pos, item, rng.random() < 0.5, is_practice=True))
        pos += 1

    scored: list[TrialSpec] = []
    for item in chosen:
        if item[3]:  # paired: balance the side of the pair's first method
            counts = tally.first_left.setdefault((item[2], item[3]), [0, 0])
            left_first = counts[0] < counts[1] or (counts[0] == counts[1] and rng.random() < 0.5)
        else:
            left_first = True
        spec = _spec(study, 0, item, left_first)
        tally.add(spec)
        scored.append(spec)

    attention: list[TrialSpec] = []
    att_clips = sorted(study.attention.clips)
    for k in range(study.attention.count if att_clips else 0):
        cid = att_clips[rng.randrange(len(att_clips))]
        files = study.attention.clips[cid]
        ref_left = rng.random() < 0.5
        lm, rm = (ATTENTION_REFERENCE, ATTENTION_SHIFTED) if ref_left else (ATTENTION_SHIFTED, ATTENTION_REFERENCE)
        lf, rf = (files["reference"], files["shifted"]) if ref_left else (files["shifted"], files["reference"])
        attention.append(TrialSpec(0, "paired", "attention", "lip_sync", cid, lm, rm, lf, rf,
                                   is_attention=True, expected="left" if ref_left else "right"))
    # attention checks at random places after the first scored trial
    for spec in attention:
        scored.insert(rng.randint(1, len(scored)), spec)
    for spec in scored:
        specs.append(replace(spec, position=pos))
        pos += 1
    return specs


def question_text(study: Study, spec_question_id: str) -> str:
    """The wording shown for a trial (attention checks borrow a scored question's, see ``Study.attention_question``)."""
    return study.question(spec_question_id).text
