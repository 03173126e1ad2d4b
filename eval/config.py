"""The settings of one evaluation run (``eval.run.run``); the command line builds them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# methods that run unless ``methods`` says otherwise: everything that needs nothing from the user
DEFAULT_METHODS = ("ground_truth", "lipsync3d", "no_lighting_norm", "no_pose_norm", "no_autoregression", "no_mouth_bank",
                   "frozen", "personalized_2d")


@dataclass(frozen=True)
class EvalConfig:
    """Settings of ``run`` (the command line's options, see ``python -m eval.run --help``).

    Members:
        video: the speaker's video (training footage; also the test set without ``test_clips``).
        out: the results folder (created; a re-run reuses its ``cache``).
        test_clips: a folder of separate clips of the same speaker to test on.
        methods, metrics: names to run (None: ``DEFAULT_METHODS``, every metric).
        preset: training preset of the trainable methods ("tiny", "quick", "full").
        test_fraction, clip_seconds, max_test_clips: the held-out end of ``video`` and its test clips.
        cross_audio: audio files of other speakers (None: five espeak-ng sentences); cross_audio_test:
            whether to run the cross-audio test at all.
        side_by_side: write the side-by-side video.
        seed, device, renderer: as in training and synthesis.
        wav2lip_checkpoint, external, external_name: inputs of the methods that need them.
        lpips_weights, syncnet_weights, s3fd_weights, inception_weights: weights of the metrics that need them.
        cache: the cache folder (None: ``out/cache``); runs that share one reuse each other's work.
        train_seconds: train the methods on the first N seconds of the training footage only
            (None: all of it); the test clips and the sync expert stay the same.
        quiet: no progress output.
    """
    video: Path
    out: Path
    test_clips: Path | None = None
    methods: tuple | None = None
    metrics: tuple | None = None
    preset: str = "quick"
    test_fraction: float = 0.2
    clip_seconds: float = 5.0
    max_test_clips: int | None = None
    cross_audio: tuple | None = None
    cross_audio_test: bool = True
    side_by_side: bool = True
    seed: int = 0
    device: str = "auto"
    renderer: str = "auto"
    mouth_motion: float = 1.0
    wav2lip_checkpoint: str | None = None
    external: str | None = None
    external_name: str = "external"
    lpips_weights: str | None = None
    syncnet_weights: str | None = None
    s3fd_weights: str | None = None
    inception_weights: str | None = None
    cache: Path | None = None
    train_seconds: float | None = None
    quiet: bool = False

    @classmethod
    def from_args(cls, args) -> "EvalConfig":
        """From the parsed command line (``eval.run.build_parser``)."""
        from lipsync.synthesis.pipeline import check_mouth_motion

        tup = lambda v: tuple(v) if v else None  # noqa: E731
        return cls(video=Path(args.video) if args.video else None, out=Path(args.out), test_clips=Path(args.test_clips) if args.test_clips else None,
                   methods=tup(args.methods), metrics=tup(args.metrics), preset=args.preset or "quick",
                   test_fraction=args.test_fraction, clip_seconds=args.clip_seconds,
                   max_test_clips=args.max_test_clips, cross_audio=tup(args.cross_audio),
                   cross_audio_test=not args.no_cross_audio, side_by_side=not args.no_video, seed=args.seed,
                   device=args.device, renderer=args.renderer, mouth_motion=check_mouth_motion(args.mouth_motion),
                   wav2lip_checkpoint=args.wav2lip_checkpoint,
                   external=args.external, external_name=args.external_name, lpips_weights=args.lpips_weights,
                   syncnet_weights=args.syncnet_weights, s3fd_weights=args.s3fd_weights,
                   inception_weights=args.inception_weights, quiet=args.quiet)
