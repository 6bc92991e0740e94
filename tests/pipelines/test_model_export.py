"""The model logged to MLflow at the end of a run loads without pickle and serves any batch size."""

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch

from fusion import build_model
from pipelines.checkpoints import save_checkpoint
from pipelines.track.export import PackedModel, log_final_model
from pipelines.track.tracker import Tracker


@pytest.fixture
def logged_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is relative to the working directory
    mcfg = {
        "name": "mtl_baseline",
        "tasks": ["semseg", "depth"],
        "modalities": ["rgb", "depth"],
        "num_classes": 4,
        "backbone": "resnet18",
        "width": 0.125,
        "output_stride": 32,
        "pretrained": None,
        "options": {"fusion": "early"},
    }
    torch.manual_seed(0)
    model = build_model(mcfg).eval()
    save_checkpoint(tmp_path / "ckpt", model, {"model_config": mcfg, "epoch": 0})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.create_run(uri, "export", "run", {})
    log_final_model(tracker, str(tmp_path / "ckpt"), {"model_config": mcfg}, (32, 48))
    tracker.end()
    mlflow.set_tracking_uri(uri)
    return model, mcfg, f"runs:/{tracker.run_id}/model"


def test_logged_model_serves_other_batch_sizes_with_the_checkpoint_values(logged_model):
    model, mcfg, model_uri = logged_model
    loaded = mlflow.pytorch.load_model(model_uri)
    packed = PackedModel(model, mcfg["modalities"], {"rgb": 3, "depth": 1}, mcfg["tasks"]).eval()
    for batch in (1, 3):
        x = torch.randn(batch, 4, 32, 48)
        with torch.no_grad():
            expected = packed(x)
            got = loaded(x)
        assert got.shape == (batch, 4 + 1, 32, 48)  # 4 semseg logits + 1 depth channel
        assert torch.allclose(got, expected, atol=1e-5)
    info = mlflow.models.get_model_info(model_uri)
    assert info.metadata["output_channels"] == {"semseg": [0, 4], "depth": [4, 5]}
    assert info.metadata["input_channels"] == {"rgb": 3, "depth": 1}


def test_logged_model_signature_names_the_packed_input(logged_model):
    _, _, model_uri = logged_model
    sig = mlflow.models.get_model_info(model_uri).signature
    spec = sig.inputs.to_dict()[0]
    assert list(spec["tensor-spec"]["shape"]) == [-1, 4, 32, 48]
    assert spec["tensor-spec"]["dtype"] == str(np.dtype("float32"))
