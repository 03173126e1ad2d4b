"""The audio-to-face network: audio encoder, PCA geometry decoder, auto-regressive texture decoder.

``TalkingFaceModel`` (talking_face.py) puts the parts together; ``ModelConfig`` holds every size
needed to rebuild it. Importing this package imports torch.
"""
from .talking_face import ModelConfig, TalkingFaceModel

__all__ = ["ModelConfig", "TalkingFaceModel"]
