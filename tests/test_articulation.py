"""Articulation calibration: synthesis moves the mouth as much as the speaker did on held-out frames."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lipsync.face_measures import mouth_opening
from lipsync.model import ModelConfig, TalkingFaceModel
from lipsync.topology import INNER_LIP_BOTTOM
from lipsync.training import MAX_ARTICULATION_GAIN, TrainingData, articulation_gain


def faces_opening(reference: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    """Copies of ``reference`` (V, 3) whose lower inner lip is lowered by ``amounts`` (T,)."""
    v = np.repeat(reference[None], len(amounts), 0).astype(np.float32)
    v[:, INNER_LIP_BOTTOM, 1] += amounts
    return v


class ShapesByIndex(torch.nn.Module):
    """A stand-in network whose geometry for audio window i is ``shapes[i]`` (the window holds i)."""

    def __init__(self, shapes: np.ndarray):
        super().__init__()
        self.shapes = torch.from_numpy(shapes)
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def audio(self, windows):
        return windows[:, 0, 0, 0].long()

    def geometry(self, index):
        return self.shapes[index]


def data_with(real: np.ndarray) -> TrainingData:
    n = len(real)
    windows = np.zeros((n, 1, 2, 2), np.float32)
    windows[:, 0, 0, 0] = np.arange(n)
    empty = np.zeros((n, 1, 1, 1), np.float32)
    return TrainingData(windows=windows, vertices=real, crops=empty, masks=empty, weight=empty[0], prev=np.full(n, -1),
                        train=np.arange(n // 2), val=np.arange(n // 2, n), reference_crop=empty[0])


@pytest.mark.parametrize("predicted_share, expected", [(0.8, 1.25), (1.0, 1.0), (1.3, 1.0), (0.4, MAX_ARTICULATION_GAIN)])
def test_gain_is_the_real_over_the_predicted_spread_of_the_opening(face_model, predicted_share, expected):
    reference = face_model["vertices"]
    width = np.linalg.norm(reference[61] - reference[291])
    amounts = 0.08 * width * (1 + np.sin(np.linspace(0, 12 * np.pi, 200)))
    real = faces_opening(reference, amounts)
    predicted = faces_opening(reference, predicted_share * amounts)
    assert np.std(mouth_opening(predicted[100:])) > 0
    gain = articulation_gain(ShapesByIndex(predicted), data_with(real))
    assert gain == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("tail", [0.8, 1.25])
def test_a_calm_validation_tail_does_not_mute_the_mouth(face_model, tail):
    """A speaker whose last part (the validation frames) is calmer (0.8) or livelier (1.25) than the
    rest; the network predicts 0.8 of the real opening there. The speaker's spread is the larger
    of the validation frames' and all the usable frames': a calm tail alone gave 1.25, which
    muted the mouth; a lively one keeps its own ratio."""
    reference = face_model["vertices"]
    width = np.linalg.norm(reference[61] - reference[291])
    wave = 1 + np.sin(np.linspace(0, 12 * np.pi, 200))
    amounts = 0.06 * width * np.where(np.arange(200) < 100, 1.0, tail) * wave
    real = faces_opening(reference, amounts)
    predicted = faces_opening(reference, 0.8 * amounts)
    data = data_with(real)
    predicted_spread = np.std(mouth_opening(predicted[data.val]))
    whole, end = np.std(mouth_opening(real)), np.std(mouth_opening(real[data.val]))
    expected = max(whole, end) / predicted_spread
    if tail < 1:
        assert 1.3 < expected < MAX_ARTICULATION_GAIN  # well above the calm tail's own ratio, 1.25
    else:
        assert expected == pytest.approx(1.25, rel=0.02)
    assert articulation_gain(ShapesByIndex(predicted), data) == pytest.approx(expected, rel=0.02)
    # frames that are neither training nor validation (untracked: their vertices are zeros) do not count
    holes = data_with(np.concatenate([real, np.zeros_like(real[:20])]))
    holes.train, holes.val = data.train, data.val
    padded = np.concatenate([predicted, np.zeros_like(predicted[:20])])
    assert articulation_gain(ShapesByIndex(padded), holes) == pytest.approx(expected, rel=0.02)


def test_rollout_scales_the_change_from_the_mean_face():
    torch.manual_seed(0)
    config = ModelConfig(tex_channels=8, pca_components=4, crop=(128, 256, 32, 224), tex_height=32, tex_width=48)
    net = TalkingFaceModel(config)
    with torch.no_grad():
        net.geometry.head[-1].weight.normal_()  # coefficients that move the face
    windows = torch.randn(6, 1, config.n_mels, config.columns)
    plain, _ = net.rollout(windows)
    net.config.articulation_gain = 1.25
    louder, _ = net.rollout(windows)
    mean = net.geometry.basis.bias.detach().view(1, -1, 3)
    torch.testing.assert_close(louder - mean, 1.25 * (plain - mean), rtol=1e-5, atol=1e-6)
    assert float((plain - mean).abs().max()) > 1e-3
    # the gain travels with the saved config
    assert ModelConfig.from_dict(net.config.to_dict()).articulation_gain == 1.25
    assert ModelConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "articulation_gain"}).articulation_gain == 1.0
