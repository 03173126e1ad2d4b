"""A trained model's folder: saving, loading, and what state it is in.

A model folder holds ``model.safetensors`` + ``config.json`` (the model), ``training.json`` (the
training summary, written last: its presence means training finished), ``checkpoint.pt`` (while
training runs or after it stopped early; it lets training resume), ``train_log.csv`` and
``loss.png``. ``ModelFolder`` answers what state a folder is in and reads its summary, so no
caller needs these file names.

``config.json`` holds the format version, the network's ``ModelConfig``, the per-speaker audio
normalization, the frame rate and the training summary; the speaker's reference data (reference
mesh, triangles, UV layout, reference atlas, region masks) is stored beside the network's weights
in ``model.safetensors`` under ``speaker.*`` keys (the PCA basis is the geometry decoder's initial
output layer, kept in the weights), and the mouth bank (``lipsync.model.mouth_bank``) under
``mouth_bank.*`` keys when training made one (models without it synthesize the network's mouth).
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np

from . import __version__
from .audio_features import AudioNorm
from .common import LipsyncError
from .files import atomic_write_bytes
from .prepared import REGION_NAMES

MODEL_FORMAT = 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"
SUMMARY, CHECKPOINT, LOG, PLOT = "training.json", "checkpoint.pt", "train_log.csv", "loss.png"
SPEAKER_KEYS = ("reference_vertices", "faces", "uv", "reference_atlas", "region_masks")


@dataclass
class SpeakerData:
    """Members: reference_vertices float32 (V,3); faces int32 (F,3); uv float32 (V,2);
    reference_atlas uint8 (S,S,3); region_masks bool (4,S,S) (skin, mouth, lower_face, eyes)."""
    reference_vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    reference_atlas: np.ndarray
    region_masks: np.ndarray

    @classmethod
    def from_prepared(cls, clip) -> "SpeakerData":
        return cls(**{k: np.array(clip.array(k)) for k in SPEAKER_KEYS})

    def region(self, name: str) -> np.ndarray:
        """bool (S, S): the atlas region ``name`` (one of ``lipsync.prepared.REGION_NAMES``)."""
        return self.region_masks[REGION_NAMES.index(name)]


def save_model(folder: Path, net, speaker: SpeakerData, audio_norm: AudioNorm, *, fps: float, training: dict,
               mouth_bank=None) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``folder`` (each written atomically);
    ``mouth_bank``: a ``MouthBank`` or None."""
    import torch
    from safetensors.torch import save

    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    for k in SPEAKER_KEYS:
        arr = np.asarray(getattr(speaker, k))
        tensors[f"speaker.{k}"] = torch.from_numpy(arr.astype(np.uint8) if arr.dtype == bool else arr.copy())
    if mouth_bank is not None:
        tensors.update({f"mouth_bank.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in mouth_bank.to_arrays().items()})
    config = {"format": "lipsync-model", "format_version": MODEL_FORMAT, "lipsync_version": __version__,
              "model": net.config.to_dict(), "audio_norm": audio_norm.to_dict(), "fps": float(fps),
              "speaker_keys": [f"speaker.{k}" for k in SPEAKER_KEYS], "training": training}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS, save(tensors), what="model weights file")
    atomic_write_bytes(folder / CONFIG, json.dumps(config, indent=2).encode(), what="model config file")


def store_half(folder: Path) -> None:
    """Rewrite ``folder``'s weights file with the network's float32 tensors stored as float16,
    which halves its share of the file (for a model shipped in a repository). The speaker data
    and the mouth bank are kept as they are; loading casts the weights back to float32, so a
    model stored this way runs like any other, with weights rounded to float16 precision."""
    import torch
    from safetensors.torch import load_file, save

    tensors = load_file(str(folder / WEIGHTS))
    half = {k: (v.half() if k.startswith("net.") and v.dtype == torch.float32 else v) for k, v in tensors.items()}
    atomic_write_bytes(folder / WEIGHTS, save(half), what="model weights file")


@dataclass(frozen=True)
class TrainSummary:
    """What ``training.json`` records about a finished training run.

    Members:
        preset: the preset's name; options: every ``TrainOptions`` field as a dict.
        steps: optimizer steps run; seconds: training time (resumed runs included).
        stopped_early: stopped by ``max_minutes``; stop_reason: why training ended before ``steps``
        ("" when it ran them all); best_step: the step whose weights were kept (the lowest
        validation loss); device: "cpu" or "cuda".
        prepared: the prepared clip trained on (absolute path).
        frames_train, frames_val: frames in the training and the held-out validation part.
        val_geometry, val_texture, val_loss: the validation losses of the kept weights (None if never validated).
    """
    preset: str
    options: dict
    steps: int
    seconds: float
    stopped_early: bool = False
    stop_reason: str = ""
    best_step: int = 0
    device: str = "cpu"
    prepared: str = ""
    frames_train: int = 0
    frames_val: int = 0
    val_geometry: float | None = None
    val_texture: float | None = None
    val_loss: float | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSummary":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelFolder(os.PathLike):
    """A model folder (see the module docstring); usable wherever a path is (``os.fspath``)."""
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def plot(self) -> Path:
        return self.path / PLOT

    def state(self) -> Literal["finished", "stopped", "none"]:
        """"finished" (a model to load), "stopped" (a checkpoint to resume from) or "none"."""
        if (self.path / WEIGHTS).is_file() and (self.path / SUMMARY).is_file():
            return "finished"
        if self.checkpoint.is_file():
            return "stopped"
        return "none"

    def summary(self) -> TrainSummary:
        """The finished run's summary; ``LipsyncError`` when training has not finished."""
        if self.state() != "finished":
            raise LipsyncError(f"{self.path} holds no finished model; train it (or resume with 'lipsync train --resume').")
        return TrainSummary.from_dict(json.loads((self.path / SUMMARY).read_text()))

    def write_summary(self, summary: TrainSummary) -> None:
        """Record that training finished (written last, atomically)."""
        from .files import atomic_write_text

        atomic_write_text(self.path / SUMMARY, json.dumps(summary.to_dict(), indent=2), what="training summary")

    def stopped_at(self) -> tuple[int, int]:
        """(step, total steps) of the run saved in the checkpoint (a stopped run)."""
        import torch

        ckpt = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        return int(ckpt["step"]), int(ckpt["options"]["steps"])

    def log_rows(self) -> list[dict]:
        """The training log: one dict of floats per validation (``train_log.csv``); [] if none yet."""
        if not self.log.is_file():
            return []
        with open(self.log, newline="") as f:
            return [{k: float(v) if v not in ("", None) else float("nan") for k, v in row.items()}
                    for row in csv.DictReader(f)]


@dataclass
class LoadedModel:
    """A trained model ready for synthesis (see ``lipsync.synthesis``)."""
    folder: Path
    net: object
    speaker: SpeakerData
    audio_norm: AudioNorm
    fps: float
    config: dict
    mouth_bank: object = None  # lipsync.model.mouth_bank.MouthBank, or None

    def synthesize(self, **kwargs):
        """See ``lipsync.synthesis.synthesize``."""
        from .synthesis import synthesize

        return synthesize(self, **kwargs)

    def live(self, target=None, **kwargs):
        """A streaming session into ``target``; see ``lipsync.synthesis.LiveSession``."""
        from .synthesis import LiveSession

        return LiveSession(self, target, **kwargs)


def load_model(folder: str | Path, *, device: str = "cpu") -> LoadedModel:
    """Rebuild a trained model from its folder; one-sentence ``LipsyncError`` if it is unusable."""
    from safetensors.torch import load_file

    from .model import ModelConfig, TalkingFaceModel

    folder = Path(folder)
    if not folder.is_dir():
        raise LipsyncError(f"{folder} is not a model folder; give the --out folder of 'lipsync train'.")
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise LipsyncError(f"{folder} has no {name}; it is not a finished model (train it, or resume with 'lipsync train --resume').")
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, ValueError) as err:
        raise LipsyncError(f"{folder / CONFIG} is not readable JSON ({err}).") from None
    if config.get("format") != "lipsync-model" or config.get("format_version") != MODEL_FORMAT:
        raise LipsyncError(f"{folder} holds a model of format {config.get('format_version')!r} (lipsync "
                           f"{config.get('lipsync_version', '?')}), which this lipsync {__version__} cannot read; retrain it.")
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise LipsyncError(f"{folder / WEIGHTS} is damaged or incomplete ({err}).") from None
    try:
        net = TalkingFaceModel(ModelConfig.from_dict(config["model"]))
        audio_norm = AudioNorm.from_dict(config["audio_norm"])
        fps = float(config["fps"])
    except (KeyError, TypeError, ValueError) as err:
        raise LipsyncError(f"{folder / CONFIG} is incomplete or from another version ({type(err).__name__}: {err}); retrain the model.") from None
    state = {k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LipsyncError(f"{folder / WEIGHTS} does not match its config.json (missing {len(missing)}, unexpected {len(unexpected)} tensors); retrain the model.")
    net.to(device).eval()
    speaker = {}
    for k in SPEAKER_KEYS:
        if f"speaker.{k}" not in tensors:
            raise LipsyncError(f"{folder / WEIGHTS} lacks the speaker's {k}; retrain the model.")
        speaker[k] = tensors[f"speaker.{k}"].numpy()
    speaker["region_masks"] = speaker["region_masks"].astype(bool)
    bank = None
    if "mouth_bank.patches" in tensors:
        from .model.mouth_bank import KEYS, TEETH_KEYS, MouthBank

        try:
            bank = MouthBank.from_arrays({k: tensors[f"mouth_bank.{k}"].numpy() for k in KEYS + TEETH_KEYS
                                          if k in KEYS or f"mouth_bank.{k}" in tensors})
        except (KeyError, ValueError) as err:
            raise LipsyncError(f"{folder / WEIGHTS} holds a damaged mouth bank ({err}); retrain the model.") from None
    return LoadedModel(folder=folder, net=net, speaker=SpeakerData(**speaker), audio_norm=audio_norm, fps=fps,
                       config=config, mouth_bank=bank)
