"""The `wav2lip_checkpoint` and `external` evaluation methods.

Wav2Lip: the architecture must match the public release parameter for parameter (the table
below is written from github Rudrabha/Wav2Lip models/wav2lip.py + models/conv.py), and its audio
features must equal the release's (audio.py, librosa 0.7 defaults). The render test runs a
RANDOMLY INITIALIZED network saved in the official checkpoint layout: it tests the plumbing
(loading, boxes, batching, pasting, encoding), not lip-sync quality -- no official weights can be
downloaded here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ffmpeg
from eval.core import RunContext, TestClip, Unavailable, read_video
from lipsync.common import LipsyncError
from lipsync.media import extract_aligned_audio, load_audio, probe, write_wav

TOTAL_PARAMETERS = 36_298_035  # sum over the table below (weights + biases, BN affine included)
STATE_TENSORS = 352            # 50 conv+BN units x 7 tensors + the final 1x1 conv's 2
PARAMETER_TENSORS = 202        # 50 x 4 + 2
PASTE_MARGIN = 3               # pixels around a face box that resizing/encoding may touch
ENCODE_TOLERANCE = 6.0         # mean |difference| (0-255) H.264 leaves on an unchanged area

# (prefix, conv weight shape); every prefix is a conv+BN unit except the last (a bare conv).
# Conv2d weights are (out, in, kh, kw); ConvTranspose2d weights are (in, out, kh, kw).
WAV2LIP_CONVS = [
    ("face_encoder_blocks.0.0", (16, 6, 7, 7)),
    ("face_encoder_blocks.1.0", (32, 16, 3, 3)), ("face_encoder_blocks.1.1", (32, 32, 3, 3)),
    ("face_encoder_blocks.1.2", (32, 32, 3, 3)),
    ("face_encoder_blocks.2.0", (64, 32, 3, 3)), ("face_encoder_blocks.2.1", (64, 64, 3, 3)),
    ("face_encoder_blocks.2.2", (64, 64, 3, 3)), ("face_encoder_blocks.2.3", (64, 64, 3, 3)),
    ("face_encoder_blocks.3.0", (128, 64, 3, 3)), ("face_encoder_blocks.3.1", (128, 128, 3, 3)),
    ("face_encoder_blocks.3.2", (128, 128, 3, 3)),
    ("face_encoder_blocks.4.0", (256, 128, 3, 3)), ("face_encoder_blocks.4.1", (256, 256, 3, 3)),
    ("face_encoder_blocks.4.2", (256, 256, 3, 3)),
    ("face_encoder_blocks.5.0", (512, 256, 3, 3)), ("face_encoder_blocks.5.1", (512, 512, 3, 3)),
    ("face_encoder_blocks.6.0", (512, 512, 3, 3)), ("face_encoder_blocks.6.1", (512, 512, 1, 1)),
    ("audio_encoder.0", (32, 1, 3, 3)), ("audio_encoder.1", (32, 32, 3, 3)), ("audio_encoder.2", (32, 32, 3, 3)),
    ("audio_encoder.3", (64, 32, 3, 3)), ("audio_encoder.4", (64, 64, 3, 3)), ("audio_encoder.5", (64, 64, 3, 3)),
    ("audio_encoder.6", (128, 64, 3, 3)), ("audio_encoder.7", (128, 128, 3, 3)),
    ("audio_encoder.8", (128, 128, 3, 3)),
    ("audio_encoder.9", (256, 128, 3, 3)), ("audio_encoder.10", (256, 256, 3, 3)),
    ("audio_encoder.11", (512, 256, 3, 3)), ("audio_encoder.12", (512, 512, 1, 1)),
    ("face_decoder_blocks.0.0", (512, 512, 1, 1)),
    ("face_decoder_blocks.1.0", (1024, 512, 3, 3)), ("face_decoder_blocks.1.1", (512, 512, 3, 3)),
    ("face_decoder_blocks.2.0", (1024, 512, 3, 3)), ("face_decoder_blocks.2.1", (512, 512, 3, 3)),
    ("face_decoder_blocks.2.2", (512, 512, 3, 3)),
    ("face_decoder_blocks.3.0", (768, 384, 3, 3)), ("face_decoder_blocks.3.1", (384, 384, 3, 3)),
    ("face_decoder_blocks.3.2", (384, 384, 3, 3)),
    ("face_decoder_blocks.4.0", (512, 256, 3, 3)), ("face_decoder_blocks.4.1", (256, 256, 3, 3)),
    ("face_decoder_blocks.4.2", (256, 256, 3, 3)),
    ("face_decoder_blocks.5.0", (320, 128, 3, 3)), ("face_decoder_blocks.5.1", (128, 128, 3, 3)),
    ("face_decoder_blocks.5.2", (128, 128, 3, 3)),
    ("face_decoder_blocks.6.0", (160, 64, 3, 3)), ("face_decoder_blocks.6.1", (64, 64, 3, 3)),
    ("face_decoder_blocks.6.2", (64, 64, 3, 3)),
    ("output_block.0", (32, 80, 3, 3)),
    ("output_block.1", (3, 32, 1, 1)),
]
TRANSPOSED = {f"face_decoder_blocks.{i}.0" for i in range(1, 7)}


def expected_state_shapes() -> dict[str, tuple]:
    shapes: dict[str, tuple] = {}
    for prefix, w in WAV2LIP_CONVS:
        out_ch = w[1] if prefix in TRANSPOSED else w[0]
        if prefix == "output_block.1":
            shapes[f"{prefix}.weight"], shapes[f"{prefix}.bias"] = w, (out_ch,)
            continue
        shapes[f"{prefix}.conv_block.0.weight"], shapes[f"{prefix}.conv_block.0.bias"] = w, (out_ch,)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.conv_block.1.{name}"] = (out_ch,)
        shapes[f"{prefix}.conv_block.1.num_batches_tracked"] = ()
    return shapes


def save_official(net, path: Path, *, legacy: bool = True) -> Path:
    """Save like the release: a wrapper dict, DataParallel's 'module.' prefix, torch<1.6 format."""
    import torch

    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "optimizer": {}, "global_step": 0, "global_epoch": 0}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


def make_ctx(tmp_path: Path, **options) -> RunContext:
    return RunContext(out=tmp_path / "out", cache=tmp_path / "cache", train_video=tmp_path / "none.mp4",
                      train_prepared=tmp_path / "none", options=options)


@pytest.fixture(scope="module")
def grid_wav(tmp_path_factory, grid_clip) -> Path:
    """The clip's sound as a test clip holds it: 16 kHz mono, exactly the clip's 3 s."""
    path = tmp_path_factory.mktemp("audio") / "grid.wav"
    write_wav(path, extract_aligned_audio(probe(grid_clip), 75))
    return path


def grid_test_clip(grid_clip, grid_wav, prepared: Path, name: str = "grid") -> TestClip:
    info = probe(grid_clip)
    return TestClip(name=name, video=grid_clip, audio=grid_wav, prepared=prepared, fps=info.fps,
                    frames=75, width=info.width, height=info.height)


# ---------------------------------------------------------------------------------------------
# Wav2Lip: architecture and features

def test_wav2lip_state_dict_matches_the_public_model():
    from eval.methods.wav2lip_net import Wav2LipNet

    net = Wav2LipNet()
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    want = expected_state_shapes()
    assert sorted(set(got) ^ set(want)) == []
    assert {k: v for k, v in got.items() if want[k] != v} == {}
    assert len(got) == STATE_TENSORS
    params = list(net.parameters())
    assert len(params) == PARAMETER_TENSORS
    assert sum(p.numel() for p in params) == TOTAL_PARAMETERS
    assert sum(int(np.prod(s)) for k, s in want.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == TOTAL_PARAMETERS


def test_wav2lip_forward_shapes_and_range():
    import torch

    from eval.methods.wav2lip_net import Wav2LipNet

    torch.manual_seed(0)
    with torch.no_grad():
        y = Wav2LipNet().eval()(torch.rand(2, 1, 80, 16) * 8 - 4, torch.rand(2, 6, 96, 96))
    assert y.shape == (2, 3, 96, 96)
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_melspectrogram_matches_wav2lip_audio_py():
    """Reference: the release's audio.py pipeline with librosa (reflect padding = librosa 0.7)."""
    import librosa
    from scipy import signal

    from eval.methods.wav2lip_net import melspectrogram

    rng = np.random.default_rng(0)
    t = np.arange(16000 * 1.3) / 16000
    wav = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    d = librosa.stft(y=signal.lfilter([1, -0.97], [1], wav), n_fft=800, hop_length=200, win_length=800, pad_mode="reflect")
    mel = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600) @ np.abs(d)
    s = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    ref = np.clip(8 * ((s + 100) / 100) - 4, -4, 4)
    got = melspectrogram(wav)
    assert got.shape == ref.shape == (80, 1 + len(wav) // 200)
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_mel_windows_follow_inference_py():
    from eval.methods.wav2lip_net import mel_windows

    mel = np.arange(80 * 241, dtype=np.float32).reshape(80, 241)  # 3 s of 25 fps video
    # inference.py's loop, verbatim in behaviour
    chunks, i = [], 0
    while True:
        start = int(i * 80.0 / 25)
        if start + 16 > mel.shape[1]:
            chunks.append(mel[:, mel.shape[1] - 16:])
            break
        chunks.append(mel[:, start:start + 16])
        i += 1
    assert len(chunks) == 72  # inference.py makes 3 frames fewer than the audio spans
    got = mel_windows(mel, 75, 25.0)
    assert got.shape == (75, 80, 16)
    np.testing.assert_array_equal(got[:72], np.stack(chunks))
    np.testing.assert_array_equal(got[72:], np.repeat(mel[None, :, -16:], 3, 0))
    assert mel_windows(mel, 10, 30.0)[3][0, 0] == int(3 * 80 / 30)  # fps-aware index


def test_face_boxes_pad_clip_and_smooth():
    from eval.methods.wav2lip_checkpoint import face_boxes, smooth_boxes

    t = 9
    lm = np.zeros((t, 468, 3), np.float32)
    for i in range(t):
        lm[i, :, 0] = np.linspace(10.7 + i, 50.2 + i, 468)   # x from 10.7+i to 50.2+i
        lm[i, :, 1] = np.linspace(-5.0, 60.9, 468)          # y starts above the frame
    lm[4] = np.nan
    boxes, found = face_boxes(lm, height=64, width=80)
    assert found.tolist() == [True] * 4 + [False] + [True] * 4
    np.testing.assert_array_equal(boxes[0], [10, 0, 50, 64])  # bottom padded by 10 and clipped
    np.testing.assert_array_equal(boxes[3], [13, 0, 53, 64])

    def reference(b, window=5):  # inference.py get_smoothened_boxes on one run
        b = b.copy()
        for i in range(len(b)):
            b[i] = np.mean(b[len(b) - window:] if i + window > len(b) else b[i:i + window], axis=0)
        return b

    rng = np.random.default_rng(1)
    raw = rng.integers(0, 300, (12, 4))
    run = np.ones(12, bool)
    np.testing.assert_array_equal(smooth_boxes(raw, run), reference(raw))
    split = run.copy()
    split[6] = False
    cuts = np.zeros(12, bool)
    cuts[3] = True
    got = smooth_boxes(raw, split, cuts)
    np.testing.assert_array_equal(got[:3], reference(raw[:3], window=3))  # a short run: its whole length
    np.testing.assert_array_equal(got[7:], reference(raw[7:]))
    np.testing.assert_array_equal(got[6], raw[6])


# ---------------------------------------------------------------------------------------------
# Wav2Lip: loading and rendering

def test_wav2lip_unavailable_reasons(tmp_path):
    import torch

    from eval.methods import get_method
    from eval.methods.wav2lip_net import Wav2LipNet

    cls = get_method("wav2lip_checkpoint")
    with pytest.raises(Unavailable, match=r"--wav2lip-checkpoint PATH \(it cannot be downloaded here\)"):
        cls(make_ctx(tmp_path)).check()
    missing = tmp_path / "nowhere" / "wav2lip.pth"
    with pytest.raises(Unavailable, match=f"{missing}.*does not exist"):
        cls(make_ctx(tmp_path, wav2lip_checkpoint=str(missing))).check()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(Unavailable, match="not a readable PyTorch checkpoint"):
        cls(make_ctx(tmp_path, wav2lip_checkpoint=str(garbage))).check()
    state = Wav2LipNet().state_dict()
    state.pop("audio_encoder.0.conv_block.0.weight")
    state["output_block.1.weight"] = torch.zeros(3, 32, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": state}, wrong)
    with pytest.raises(Unavailable) as err:
        cls(make_ctx(tmp_path, wav2lip_checkpoint=str(wrong))).check()
    msg = str(err.value)
    assert "not a Wav2Lip generator checkpoint" in msg
    assert "missing: audio_encoder.0.conv_block.0.weight" in msg
    assert "unexpected: extra.weight" in msg
    assert "output_block.1.weight (3, 32, 3, 3) (expected (3, 32, 1, 1))" in msg


def test_wav2lip_loads_bare_and_wrapped_state_dicts(tmp_path):
    import torch

    from eval.methods.wav2lip_checkpoint import load_wav2lip
    from eval.methods.wav2lip_net import Wav2LipNet

    torch.manual_seed(3)
    net = Wav2LipNet()
    bare = tmp_path / "bare.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, bare)
    for path in (bare, save_official(net, tmp_path / "official.pth"), save_official(net, tmp_path / "zip.pth", legacy=False)):
        loaded = load_wav2lip(path)
        for k, v in net.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), (path.name, k)
        assert not loaded.training


def test_wav2lip_renders_the_clip_plumbing_only(tmp_path, grid_clip, grid_wav, prepared_grid):
    """Random weights in the official layout: checks frame count, size, audio and where pixels
    change -- NOT lip-sync quality."""
    import torch

    from eval.methods import get_method
    from eval.methods.wav2lip_checkpoint import face_boxes, smooth_boxes
    from eval.methods.wav2lip_net import Wav2LipNet

    torch.manual_seed(0)
    ckpt = save_official(Wav2LipNet(), tmp_path / "wav2lip.pth")
    method = get_method("wav2lip_checkpoint")(make_ctx(tmp_path, wav2lip_checkpoint=str(ckpt)))
    method.check()
    assert method.fit()["parameters"] == TOTAL_PARAMETERS
    clip = grid_test_clip(grid_clip, grid_wav, prepared_grid.path)
    out = tmp_path / "grid_wav2lip.mp4"
    facts = method.render(clip, grid_wav, out)
    info = probe(out)
    assert (info.width, info.height, info.has_audio) == (clip.width, clip.height, True)
    frames = read_video(out)
    assert len(frames) == clip.frames == facts["frames"]
    boxes, found = face_boxes(np.asarray(prepared_grid.array("landmarks")), clip.height, clip.width)
    boxes = smooth_boxes(boxes, found)
    assert facts["generated_frames"] == int(found.sum()) > 60
    src = read_video(grid_clip).astype(np.float32)
    outside = np.ones((clip.height, clip.width), bool)
    x0, y0 = boxes[found, :2].min(0) - PASTE_MARGIN
    x1, y1 = boxes[found, 2:].max(0) + PASTE_MARGIN
    outside[max(0, y0):y1, max(0, x0):x1] = False
    diff = np.abs(frames.astype(np.float32) - src).mean(-1)  # (T, H, W)
    assert diff[:, outside].mean() < ENCODE_TOLERANCE  # untouched outside the face boxes
    k = int(np.flatnonzero(found)[0])
    bx0, by0, bx1, by1 = boxes[k]
    assert diff[k, by0:by1, bx0:bx1].mean() > 3 * ENCODE_TOLERANCE  # the random net's face was pasted


# ---------------------------------------------------------------------------------------------
# external

def test_resample_indices_known_truth():
    from eval.methods.external import resample_indices

    np.testing.assert_array_equal(resample_indices(10, 25, 25), np.arange(10))
    np.testing.assert_array_equal(resample_indices(10, 50, 25), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(resample_indices(90, 30, 25)[:7], [0, 1, 2, 4, 5, 6, 7])  # round(1.2 i)
    assert len(resample_indices(90, 30, 25)) == 75
    np.testing.assert_array_equal(resample_indices(4, 12.5, 25), [0, 1, 1, 2, 2, 3, 3])  # t=i/25 -> nearest


def test_conform_pads_trims_and_refuses():
    from eval.methods.external import conform

    idx, added = conform(73, 25, 25, 75, name="x.mp4")
    assert added == 2 and idx.tolist() == list(range(73)) + [72, 72]
    idx, added = conform(80, 25, 25, 75, name="x.mp4")
    assert added == -5 and idx.tolist() == list(range(75))
    idx, added = conform(72, 25, 25, 75, name="x.mp4")  # Wav2Lip's inference.py stops 3 frames early
    assert added == 3
    with pytest.raises(LipsyncError, match=r"x\.mp4 has 70 frames .* needs 75"):
        conform(70, 25, 25, 75, name="x.mp4")
    with pytest.raises(LipsyncError, match=r"x\.mp4 has 100 frames .* other, longer audio"):
        conform(100, 25, 25, 75, name="x.mp4")


def test_match_video_names(tmp_path):
    from eval.methods.external import match_video

    for name in ("s1.MP4", "s2_result.mov", "s3_a.mp4", "s3_b.mp4", "s4.mp4", "s4.avi", "s5.txt", "s10.mp4"):
        (tmp_path / name).write_bytes(b"x")
    assert match_video(tmp_path, "s1").name == "s1.MP4"
    assert match_video(tmp_path, "s2").name == "s2_result.mov"
    assert match_video(tmp_path, "s5") is None and match_video(tmp_path, "s6") is None
    assert match_video(tmp_path, "s10").name == "s10.mp4"
    with pytest.raises(LipsyncError, match="s3_a.mp4, s3_b.mp4"):
        match_video(tmp_path, "s3")
    with pytest.raises(LipsyncError, match="s4.avi, s4.mp4"):
        match_video(tmp_path, "s4")


def test_external_normalizes_size_and_fps(tmp_path, grid_clip, grid_wav):
    from eval.methods import get_method

    folder = tmp_path / "results"
    folder.mkdir()
    ffmpeg("-i", str(grid_clip), "-vf", "fps=30,scale=450:360", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p",
           "-an", str(folder / "grid_sadtalker.mkv"))
    assert probe(folder / "grid_sadtalker.mkv").fps == 30
    method = get_method("external")(make_ctx(tmp_path, external_dir=str(folder), external_name="SadTalker"))
    method.check()
    clip = grid_test_clip(grid_clip, grid_wav, tmp_path / "unused")
    out = tmp_path / "grid_external.mp4"
    facts = method.render(clip, grid_wav, out)
    assert facts["name"] == method.display_name == "SadTalker"
    assert facts["source_frames"] == 90 and facts["resized"] and facts["frames_added"] == 0
    info = probe(out)
    assert (info.width, info.height, info.has_audio) == (360, 288, True)
    frames = read_video(out).astype(np.float32)
    src = read_video(grid_clip).astype(np.float32)
    assert frames.shape == src.shape == (75, 288, 360, 3)
    psnr = 10 * np.log10(255.0 ** 2 / ((frames - src) ** 2).mean(axis=(1, 2, 3)))
    assert psnr.min() > 25  # the same picture, frame for frame


def test_external_picks_nearest_frames_by_time(tmp_path, grid_wav):
    """Frame j of a 50 fps source is filled with gray level 10 + 6 j; at 25 fps output frame i
    must show source frame 2 i."""
    from eval.methods import get_method
    from lipsync.media import VideoWriter

    folder = tmp_path / "results"
    folder.mkdir()
    sound = tmp_path / "one_s.wav"
    write_wav(sound, load_audio(grid_wav)[:16000])  # 1 s: 25 frames at 25 fps
    writer = VideoWriter(folder / "tone.mp4", 64, 48, 50, sound)
    for j in range(50):
        writer.write(np.full((48, 64, 3), 10 + 6 * (j % 40), np.uint8))
    writer.finish()
    clip = TestClip(name="tone", video=folder / "tone.mp4", audio=sound, prepared=tmp_path, fps=25.0, frames=25,
                    width=128, height=96)
    out = tmp_path / "tone_out.mp4"
    get_method("external")(make_ctx(tmp_path, external_dir=str(folder))).render(clip, sound, out)
    got = read_video(out)
    assert got.shape == (25, 96, 128, 3)
    level = got[:, 8:-8, 8:-8].astype(np.float32).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(level, 10 + 6 * ((2 * np.arange(25)) % 40), atol=2.0)


def test_external_errors(tmp_path, grid_clip, grid_wav):
    from eval.methods import get_method

    cls = get_method("external")
    with pytest.raises(Unavailable, match="--external FOLDER"):
        cls(make_ctx(tmp_path)).check()
    with pytest.raises(Unavailable, match="does not exist"):
        cls(make_ctx(tmp_path, external_dir=str(tmp_path / "absent"))).check()
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(Unavailable, match="not a folder"):
        cls(make_ctx(tmp_path, external_dir=str(tmp_path / "file.txt"))).check()
    folder = tmp_path / "results"
    folder.mkdir()
    method = cls(make_ctx(tmp_path, external_dir=str(folder)))
    method.check()
    clip = grid_test_clip(grid_clip, grid_wav, tmp_path / "unused")
    with pytest.raises(Unavailable, match=r"expected grid\.mp4"):
        method.render(clip, grid_wav, tmp_path / "o.mp4")
    ffmpeg("-i", str(grid_clip), "-frames:v", "60", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", str(folder / "grid.mp4"))
    with pytest.raises(LipsyncError, match=r"grid\.mp4 has 60 frames .* needs 75"):
        method.render(clip, grid_wav, tmp_path / "o.mp4")
    (folder / "grid.mp4").unlink()
    ffmpeg("-i", str(grid_clip), "-vf", "scale=256:256", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-an", str(folder / "grid.mp4"))
    with pytest.raises(LipsyncError, match=r"256x256 but the test clip is 360x288 \(another aspect ratio\)"):
        method.render(clip, grid_wav, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists()
