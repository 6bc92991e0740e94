"""`fusionpipe evaluate --device`: which device a name means, and clear errors for the rest."""
import pytest
import torch

from pipelines.config import ConfigError
from pipelines.evaluate import resolve_device


def test_auto_takes_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


def test_bad_devices_are_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="--device: 'gpu0' is not a device"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match="--device: 'meta' is not supported"):
        resolve_device("meta")
