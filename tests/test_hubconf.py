"""hubconf.py: the notebook entry point loads a local checkpoint."""
import torch
from conftest import ROOT


def test_hubconf_local(checkpoint):
    model = torch.hub.load(ROOT, "npr", source="local", checkpoint=checkpoint, device="cpu")
    assert not model.training
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1)
