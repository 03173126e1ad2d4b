"""Synthesis: new speech -> the speaker's talking face in a target video (``pipeline.synthesize``).

One module per concern: ``speech`` (audio files and offline TTS), ``targets`` (the frames, poses
and lighting to insert the face into), ``schedule`` (which target frame each output frame uses),
``composite`` (atlas assembly, rendering and blending), ``identity`` (is the target the model's
speaker?), ``pipeline`` (the whole run) and ``stream`` (the same, live: audio chunks in, frames
out). Video encoding is ``lipsync.media.VideoWriter``.
"""
from .composite import RENDER_VERSION, TEXTURE_UPSAMPLE, assemble_atlas, blend_mask, composite_video, feather_mask
from .pipeline import SynthesisResult, predict, synthesize
from .schedule import frame_schedule, ping_pong, ping_pong_at
from .stream import LiveFrame, LiveSession, LiveTarget
from .speech import load_speech, text_to_speech
from .identity import SAME_PERSON, IdentityMatch, identity_similarity
from .targets import Target, prepare_target, target_for_speaker

__all__ = ["RENDER_VERSION", "SAME_PERSON", "IdentityMatch", "SynthesisResult", "TEXTURE_UPSAMPLE", "Target", "assemble_atlas",
           "blend_mask", "composite_video", "feather_mask", "frame_schedule", "identity_similarity", "load_speech",
           "ping_pong", "ping_pong_at", "LiveFrame", "LiveSession", "LiveTarget", "predict", "prepare_target", "synthesize", "target_for_speaker", "text_to_speech"]
