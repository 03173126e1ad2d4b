"""Training: a tiny model overfits the fixture, reloads exactly, resumes exactly, does not drift."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from lipsync.common import LipsyncError
from lipsync.model_io import load_model
from lipsync.training import TrainingStopped, TrainOptions, prepare_data, train

# keep_best=False: these tests check that the network can fit the fixture, so they keep its last weights
TINY = TrainOptions(steps=300, batch=16, lr=3e-3, val_every=100, tex_channels=32, pca_components=16,
                    self_condition=0.3, prev_noise=0.02, prev_drop=0.1, keep_best=False)
OVERFIT_GEOMETRY = 2.0   # training-frame lip error must fall at least this many times below the PCA mean's
OVERFIT_TEXTURE = 1.3    # training-frame texture error must fall this many times below the reference crop's
DRIFT_TOL = 0.01         # [0,1] units: mean change of the texture between the first and the last 10 s


@pytest.fixture(scope="module")
def tiny_model(prepared_grid, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "tiny"
    train(prepared_grid.path, out, options=TINY)
    return out


def teacher_forced_errors(model, clip):
    """Lip-vertex L1 and masked texture L1 on the training frames, for the model and for the
    trivial predictions (the PCA mean shape, the reference crop)."""
    data, _ = prepare_data(clip, model.net.config, TINY, audio_norm=model.audio_norm)
    idx = data.train
    prev = np.where((data.prev[idx] >= 0)[:, None, None, None], data.crops[np.maximum(data.prev[idx], 0)],
                    data.reference_crop[None])
    with torch.no_grad():
        verts, crops = model.net(torch.from_numpy(data.windows[idx]), torch.from_numpy(prev))
    from lipsync.topology import load_topology

    lips = load_topology().regions["lips_outer"]
    gt_v = data.vertices[idx][:, lips]
    mean_v = model.net.geometry.basis.bias.detach().numpy().reshape(-1, 3)[lips]
    mask = data.masks[idx]
    tex_err = lambda pred: float((np.abs(pred - data.crops[idx]) * mask).sum() / (mask.sum() * 3))  # noqa: E731
    return {"geometry": float(np.abs(verts.numpy()[:, lips] - gt_v).mean()),
            "geometry_trivial": float(np.abs(mean_v[None] - gt_v).mean()),
            "texture": tex_err(crops.numpy()), "texture_trivial": tex_err(data.reference_crop[None])}


def test_tiny_model_overfits_the_fixture(tiny_model, prepared_grid):
    model = load_model(tiny_model)
    e = teacher_forced_errors(model, prepared_grid)
    assert e["geometry"] * OVERFIT_GEOMETRY < e["geometry_trivial"], e
    assert e["texture"] * OVERFIT_TEXTURE < e["texture_trivial"], e
    log = (tiny_model / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,seconds,lr,train_geometry") and len(log) == 1 + 3
    assert (tiny_model / "loss.png").is_file()
    summary = json.loads((tiny_model / "training.json").read_text())
    assert summary["steps"] == TINY.steps and summary["frames_val"] >= 5


def test_model_folder_reports_its_state(tiny_model, tmp_path):
    from lipsync.common import LipsyncError
    from lipsync.model_io import ModelFolder

    folder = ModelFolder(tiny_model)
    assert folder.state() == "finished" and os.fspath(folder) == str(tiny_model)
    summary = folder.summary()
    assert summary.steps == TINY.steps and summary.frames_val > 0 and summary.val_loss > 0
    assert summary.to_dict() == json.loads((tiny_model / "training.json").read_text())
    assert [r["step"] for r in folder.log_rows()][-1] == TINY.steps
    assert ModelFolder(tmp_path / "nothing").state() == "none"
    with pytest.raises(LipsyncError, match="no finished model"):
        ModelFolder(tmp_path / "nothing").summary()


def test_saved_model_reloads_to_identical_outputs(tiny_model):
    a, b = load_model(tiny_model), load_model(tiny_model)
    windows = torch.randn(40, 1, 80, 24, generator=torch.Generator().manual_seed(0))
    va, ca = a.net.rollout(windows)
    vb, cb = b.net.rollout(windows)
    assert torch.equal(va, vb) and torch.equal(ca, cb)
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["format"] == "lipsync-model" and config["fps"] == 25
    assert a.speaker.reference_atlas.shape == (256, 256, 3) and a.speaker.faces.shape == (898, 3)


def test_training_is_reproducible_and_resumes_exactly(prepared_grid, tmp_path):
    opts = TrainOptions(steps=30, batch=8, val_every=10, tex_channels=16, pca_components=8)
    train(prepared_grid.path, tmp_path / "a", options=opts)
    train(prepared_grid.path, tmp_path / "b", options=opts, max_minutes=1e-6)  # stops after one step
    assert not (tmp_path / "b" / "model.safetensors").exists() or json.loads(
        (tmp_path / "b" / "training.json").read_text())["stopped_early"]
    train(prepared_grid.path, tmp_path / "b", options=opts, resume=True)
    sa = load_model(tmp_path / "a").net.state_dict()
    sb = load_model(tmp_path / "b").net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # a stop request (the demo's Cancel button) between validations checkpoints that very step
    steps = []
    with pytest.raises(TrainingStopped, match="stopped at step 17 of 30"):
        train(prepared_grid.path, tmp_path / "c", options=opts, progress=lambda s, n, l: steps.append(s),
              should_stop=lambda: len(steps) >= 17)
    assert not (tmp_path / "c" / "model.safetensors").exists()
    from lipsync.model_io import ModelFolder

    assert ModelFolder(tmp_path / "c").state() == "stopped" and ModelFolder(tmp_path / "c").stopped_at() == (17, 30)
    train(prepared_grid.path, tmp_path / "c", options=opts, resume=True)
    sc = load_model(tmp_path / "c").net.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)


def test_no_drift_over_sixty_seconds(tiny_model, prepared_grid):
    """Fed its own predictions for 60 s (1500 frames), the texture stays where it started."""
    from lipsync.audio_features import audio_windows

    model = load_model(tiny_model)
    speech, _ = prepared_grid.audio()
    for name, audio in (("silence", np.zeros(60 * 16000, np.float32)),
                        ("speech", np.tile(speech, 20)[:60 * 16000])):
        windows = model.audio_norm.apply(audio_windows(audio, 1500, 25.0))[:, None]
        verts, crops = model.net.rollout(torch.from_numpy(windows))
        c = crops.numpy()
        ref = model.net.reference_crop.numpy()[None]
        first, last = np.abs(c[:250] - ref).mean(), np.abs(c[-250:] - ref).mean()
        assert abs(last - first) < DRIFT_TOL, (name, first, last)
        assert np.isfinite(c).all() and np.isfinite(verts.numpy()).all()
        if name == "silence":
            assert np.abs(np.diff(c[-250:], axis=0)).mean() < 1e-3, "silence gives a still face"


def test_a_runaway_texture_loop_restarts_from_the_reference_fed_prediction():
    """A texture decoder with a trap: one frame's audio throws it into a state that feeds itself
    (as a real model did on 2 of 20 sentences). The guarded rollout leaves the trap on the next
    frame; the loop still carries the previous frame where nothing runs away."""
    from torch import nn

    from lipsync.model import ModelConfig, TalkingFaceModel

    net = TalkingFaceModel(ModelConfig(tex_height=16, tex_width=16, tex_channels=8))
    latent, code_size = net.config.latent, net.config.prev_code

    class Deviation(nn.Module):  # the "previous frame" code: how far the previous crop is from the reference
        def forward(self, diff):
            return torch.cat([diff.abs().mean((1, 2, 3))[:, None], torch.zeros(len(diff), code_size - 1)], 1)

    class Trap(nn.Module):
        def forward(self, x):
            z, code = x[:, :latent], x[:, latent:]
            fed_garbage = code[:, 0] > 0.1
            trigger = z[:, 0] > 0.5
            small = 0.01 * torch.tanh(z[:, 1:2])[:, :, None, None]  # ordinary, audio-driven change
            out = small.expand(len(x), 3, 16, 16).clone()
            out[fed_garbage | trigger] = 0.5
            return out

    net.previous = Deviation()
    net.audio = nn.Flatten()  # the "windows" are the latents themselves
    net.texture = Trap()
    z = torch.zeros(40, latent)
    z[:, 1] = torch.linspace(-1, 1, 40)
    z[10, 0] = 1.0  # the trap, at frame 10
    _, crops = net.rollout(z)
    dev = (crops - net.reference_crop).abs().mean((1, 2, 3))
    assert dev[10] > 0.4  # the trap frame itself is what the model says
    assert (dev[11:] < 0.02).all(), dev  # unguarded, every later frame stayed at 0.5
    assert net.rollout_resets == 1


def test_silence_gives_a_closed_mouth(tiny_model, prepared_grid):
    """Digital silence (as pads synthetic speech) gives a still mouth, well below its opening on words."""
    from lipsync.face_measures import mouth_opening
    from lipsync.synthesis import predict
    from test_preprocess import speech_frames

    model = load_model(tiny_model)
    verts, _ = predict(model, np.zeros(3 * 16000, np.float32), 25.0)
    clip_mouth = np.array(prepared_grid.array("mouth_opening"))
    speech, _ = speech_frames(prepared_grid.fps, len(clip_mouth))
    silent = mouth_opening(verts)
    assert np.ptp(silent) < 0.005
    assert np.median(silent) < 0.5 * np.nanmean(clip_mouth[speech])


def test_training_refuses_bad_folders(prepared_grid, tmp_path):
    with pytest.raises(LipsyncError, match="not a prepared clip|manifest"):
        train(tmp_path, tmp_path / "m", options=TINY)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    with pytest.raises(LipsyncError, match="already exists"):
        train(prepared_grid.path, busy, options=TINY)
    with pytest.raises(LipsyncError, match="no checkpoint"):
        train(prepared_grid.path, tmp_path / "fresh", options=TINY, resume=True)
    with pytest.raises(LipsyncError, match="unknown preset"):
        train(prepared_grid.path, tmp_path / "p", preset="huge")


def test_bad_model_folders_are_refused(tiny_model, tmp_path):
    import shutil

    with pytest.raises(LipsyncError, match="not a model folder"):
        load_model(tmp_path / "nothing")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(LipsyncError, match="no model.safetensors"):
        load_model(broken)
    old = tmp_path / "old"
    shutil.copytree(tiny_model, old)
    cfg = json.loads((old / "config.json").read_text())
    cfg["format_version"] = 99
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LipsyncError, match="cannot read; retrain"):
        load_model(old)
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_model, damaged)
    data = (damaged / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LipsyncError, match="damaged or incomplete"):
        load_model(damaged)


def test_loss_plots_never_use_mathtext():
    """matplotlib's mathtext parser is shared by all threads and fails when two draw at once (the
    training thread's loss plot and the demo's live curve did); the loss axes label in plain text."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from lipsync.training import log_loss_axis

    for values in ([0.034, 0.03, 0.028], [0.5, 0.05, 0.002]):
        fig = Figure()
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([1, 2, 3], values)
        log_loss_axis(ax)
        fig.canvas.draw()
        labels = [t.get_text() for t in ax.get_yticklabels() + ax.yaxis.get_minorticklabels()]
        assert not any("$" in t for t in labels), labels
        assert any(t for t in labels), "the axis still has labels"


def test_cli_train_reports_the_model(prepared_grid, tmp_path):
    """``lipsync train`` prints the summary it reads back from the model folder."""
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "cli-model"
    r = subprocess.run([sys.executable, "-m", "lipsync", "train", str(prepared_grid.path), "--out", str(out),
                        "--max-minutes", "0.01", "--quiet"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"model           {out}" in r.stdout and "(stopped at --max-minutes)" in r.stdout
    assert "validation      geometry" in r.stdout and str(out / "train_log.csv") in r.stdout


def test_a_wider_audio_window_is_used_in_training_and_in_synthesis(prepared_grid, tmp_path):
    """``audio_columns`` sets how much audio context each frame sees; the saved model carries it, so
    ``predict`` cuts its windows to the same width (a mismatch would fail in the encoder)."""
    from lipsync.synthesis import predict

    opts = TrainOptions(steps=10, batch=8, val_every=10, tex_channels=16, pca_components=8, audio_columns=40)
    train(prepared_grid.path, tmp_path / "wide", options=opts)
    model = load_model(tmp_path / "wide")
    assert model.net.config.columns == 40
    verts, crops = predict(model, np.zeros(16000, np.float32), 25.0)
    assert verts.shape[0] == 25 and np.isfinite(crops).all()


def test_the_audio_lookahead_option_moves_the_window_and_is_checked_before_anything_is_written(prepared_grid, tmp_path,
                                                                                            monkeypatch):
    """``lookahead_ms=40``: every training window ends 4 columns past its frame's centre (known
    truth: windows cut from a spectrogram whose columns hold their own index), the model records
    it; a lookahead that is not a multiple of 10 ms, or longer than the window, writes nothing."""
    import subprocess
    import sys
    from dataclasses import replace

    import lipsync.audio_features as features
    from conftest import ROOT
    from lipsync.audio_features import centre_column

    seen = {}
    real = features.audio_windows

    def spy(audio, n, fps, *, columns, future):
        seen["future"] = future
        spec = np.tile(np.arange(2000, dtype=np.float32), (80, 1))
        from lipsync.audio_features import frame_windows

        seen["windows"] = frame_windows(spec, n, fps, columns=columns, future=future)
        return real(audio, n, fps, columns=columns, future=future)

    monkeypatch.setattr(features, "audio_windows", spy)
    opts = TrainOptions(steps=10, batch=8, val_every=10, tex_channels=16, pca_components=8, lookahead_ms=40)
    train(prepared_grid.path, tmp_path / "short", options=opts)
    assert seen["future"] == 4
    w = seen["windows"]
    centres = centre_column(np.arange(len(w)), 25.0)
    assert np.array_equal(w[60:, 0, -1], centres[60:] + 4) and np.array_equal(w[60:, 0, 0], centres[60:] - 19)
    assert load_model(tmp_path / "short").net.config.lookahead == 4
    for bad in (45, 240, -10):
        with pytest.raises(LipsyncError, match="lookahead"):
            train(prepared_grid.path, tmp_path / f"bad{bad}", options=replace(opts, lookahead_ms=bad))
        assert not (tmp_path / f"bad{bad}").exists()
    r = subprocess.run([sys.executable, "-m", "lipsync", "train", str(prepared_grid.path), "--out", str(tmp_path / "cli"),
                        "--lookahead-ms", "35"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2 and "multiple of 10 ms" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "cli").exists()


def test_training_keeps_the_best_validated_weights_and_stops_when_validation_stalls(prepared_grid, tmp_path, monkeypatch):
    """Known truth: validation losses are scripted (3, 1, 2, 4, ...); the weights at the second
    validation are kept, and with a patience of 2 training ends at the fourth."""
    import lipsync.training as training

    real_losses, scripted, seen = training._losses, [3.0, 1.0, 2.0, 4.0, 5.0, 6.0], []

    def losses(net, batch, options, weight):
        g, t = real_losses(net, batch, options, weight)
        if net.training:
            return g, t
        seen.append({k: v.detach().clone() for k, v in net.state_dict().items()})
        return torch.tensor(scripted[len(seen) - 1]), torch.tensor(0.0)

    monkeypatch.setattr(training, "_losses", losses)
    opts = TrainOptions(steps=60, batch=8, val_every=5, tex_channels=16, pca_components=8, patience=2,
                        calibrate_articulation=False, mouth_bank=False)
    assert len(prepared_grid.array("valid")) * opts.val_fraction <= 128  # one validation batch each
    folder = train(prepared_grid.path, tmp_path / "m", options=opts)
    summary = folder.summary()
    assert summary.steps == 20 and summary.best_step == 10 and summary.val_loss == 1.0
    assert "2 validations" in summary.stop_reason and not summary.stopped_early
    kept = load_model(tmp_path / "m").net.state_dict()
    assert all(torch.equal(kept[k], seen[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], seen[3][k]) for k in kept)  # the last weights were not kept


def test_constant_validation_stops_after_the_patience(prepared_grid, tmp_path):
    """With a learning rate of 0 nothing improves: training ends ``patience`` validations after the first."""
    opts = TrainOptions(steps=60, batch=8, lr=0.0, val_every=5, tex_channels=16, pca_components=8, patience=1,
                        calibrate_articulation=False, mouth_bank=False)
    summary = train(prepared_grid.path, tmp_path / "m", options=opts).summary()
    assert summary.steps == 10 and summary.best_step == 5 and summary.stop_reason
