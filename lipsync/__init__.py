"""lipsync: personalized audio-driven 3D talking faces from one video (after LipSync3D, CVPR 2021).

Python API::

    from lipsync import preprocess, open_prepared
    clip_dir = preprocess("talk.mp4", "talk_prepared")
    clip = open_prepared(clip_dir)
    atlas = clip.array("atlas")          # (T, S, S, 3) uint8, memory-mapped
    model = load_model(train(clip_dir, "talk_model"))
    model.synthesize(audio="speech.wav", out="talk.mp4")
"""
__version__ = "0.1.0"


def preprocess(video, out, **kwargs):
    """See ``lipsync.preprocessing.preprocess``."""
    from .preprocessing import preprocess as _preprocess

    return _preprocess(video, out, **kwargs)


def open_prepared(path):
    """See ``lipsync.prepared.open_prepared``."""
    from .prepared import open_prepared as _open

    return _open(path)


def train(prepared, out, **kwargs):
    """See ``lipsync.training.train``."""
    from .training import train as _train

    return _train(prepared, out, **kwargs)


def load_model(folder, **kwargs):
    """See ``lipsync.model_io.load_model``; the result has ``.synthesize(out=..., audio=...)``."""
    from .model_io import load_model as _load

    return _load(folder, **kwargs)


__all__ = ["preprocess", "open_prepared", "train", "load_model", "__version__"]
