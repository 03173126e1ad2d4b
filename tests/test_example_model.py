"""The model shipped with the demo: it loads, reproduces its recorded outputs, and the command
that re-makes it produces a folder of the same kind."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from demo import example_model
from lipsync.common import LipsyncError
from lipsync.model_io import load_model
from lipsync.training import TrainOptions

TINY = TrainOptions(steps=20, batch=8, val_every=10, tex_channels=16, pca_components=8, mouth_bank_frames=5)


def assert_reproduces(folder):
    recorded = np.load(folder / example_model.RECORDED)
    now = example_model.record_outputs(folder)
    assert set(recorded.files) == set(now)
    for name in ("vertices", "crops", "crop_means"):
        np.testing.assert_allclose(now[name], recorded[name], atol=1e-4, err_msg=name)
    if "bank_index" in now:
        # the mouth each frame shows; the path's costs come from float32 shapes, so a near tie may
        # be broken the other way on another machine: nearly every frame must agree
        assert now["bank_index"].shape == recorded["bank_index"].shape
        assert (now["bank_index"] == recorded["bank_index"]).mean() >= 0.98


def test_shipped_model_loads_and_reproduces_its_recorded_outputs():
    folder = example_model.shipped_model()
    assert folder is not None, f"the shipped model is missing from {example_model.MODEL_DIR}; make it with python -m demo.example_model"
    model = load_model(folder)
    summary = json.loads((folder / "training.json").read_text())
    options = json.loads((folder / "options.json").read_text())
    assert summary["options"] == options and options["mouth_bank_frames"] == example_model.BANK_FRAMES
    assert summary["frames_train"] + summary["frames_val"] >= 4000  # trained on the 3-minute clip, not the 3-second one
    assert model.mouth_bank is not None and len(model.mouth_bank.patches) == example_model.BANK_FRAMES
    assert model.mouth_bank.follows_teeth  # made with the teeth read-out
    assert_reproduces(folder)
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert (folder / "model.safetensors").stat().st_size < 5e6 and size < 6e6, f"the shipped model takes {size / 1e6:.1f} MB"


def test_the_command_makes_a_shipped_model_folder(prepared_grid, tmp_path):
    out = tmp_path / "shipped"
    example_model.make(None, out=out, prepared=prepared_grid.path, options=TINY, workdir=tmp_path)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "training.json", example_model.RECORDED, "options.json"} <= names
    assert "checkpoint.pt" not in names
    assert json.loads((out / "training.json").read_text())["prepared"] == prepared_grid.path.name
    assert len(load_model(out).mouth_bank.patches) == 5
    dtypes = {k: v.dtype for k, v in load_file(str(out / "model.safetensors")).items()}
    assert {d for k, d in dtypes.items() if k.startswith("net.")} == {torch.float16}
    assert dtypes["mouth_bank.patches"] == dtypes["speaker.reference_atlas"] == torch.uint8
    assert_reproduces(out)
    # a failing re-make leaves the shipped folder as it was
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(LipsyncError):
        example_model.make(None, out=out, prepared=tmp_path / "no-such-clip", options=TINY, workdir=tmp_path)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("lipsync-example-")]


def test_float16_weights_make_the_same_face(prepared_grid, tmp_path):
    """Weights stored as float16 (the shipped model) load as float32 and give the outputs of the
    float32 weights to within float16 rounding, from a smaller file."""
    from lipsync.model_io import store_half
    from lipsync.training import train

    model = Path(train(prepared_grid.path, tmp_path / "model", preset="quick", options=TINY))
    before, size = example_model.record_outputs(model), (model / "model.safetensors").stat().st_size
    net_bytes = sum(v.numel() * 4 for k, v in load_file(str(model / "model.safetensors")).items() if k.startswith("net."))
    store_half(model)
    after = example_model.record_outputs(model)
    assert (model / "model.safetensors").stat().st_size <= size - net_bytes // 2 + 4096
    assert load_model(model).net.geometry.basis.weight.dtype == torch.float32
    spread = np.ptp(before["vertices"], axis=0).max()
    assert np.abs(after["vertices"] - before["vertices"]).max() < 0.02 * spread
    np.testing.assert_allclose(after["crops"], before["crops"], atol=2e-3)
