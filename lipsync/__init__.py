"""lipsync: personalized audio-driven 3D talking faces from one video (after LipSync3D, CVPR 2021).

Python API::

    from lipsync import preprocess, open_prepared
    clip_dir = preprocess("talk.mp4", "talk_prepared")
    clip = open_prepared(clip_dir)
    atlas = clip.array("atlas")          # (T, S, S, 3) uint8, memory-mapped
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


__all__ = ["preprocess", "open_prepared", "__version__"]
