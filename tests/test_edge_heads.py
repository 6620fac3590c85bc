"""Edge heads: shapes, cost measured from the model, and the 25% budget against the UPerHead."""
import pytest
import torch
from torch import nn

from farl_edge.models import create_model
from farl_edge.models.complexity import count_macs
from farl_edge.registry import get_config, list_models

EDGE = [n for n in list_models() if get_config(n).head and get_config(n).head["type"] == "edge"]


def test_registry_has_edge_variants():
    assert {"farl-b16-lapa-448-edge", "farl-b16-300w-448-edge", "farl-small-300w-edge", "farl-small-celebm-edge"} <= set(EDGE)


@pytest.mark.parametrize("name", [n for n in EDGE if n.startswith("farl-small")] + ["farl-b16-300w-448-edge"])
def test_edge_forward_shapes(name):
    cfg = get_config(name)
    model = create_model(name, pretrained=False)
    s, stride = cfg.input_size, cfg.head["out_stride"]
    with torch.no_grad():
        out = model(torch.rand(1, 3, s, s))
    if cfg.task == "parsing":
        assert out.shape == (1, len(cfg.labels), s // stride, s // stride)
    else:
        assert out[0].shape == (1, cfg.num_landmarks, 2) and out[1].shape[-1] == s // stride
        assert float(out[0].min()) >= 0 and float(out[0].max()) <= s


def test_mac_count_matches_hand_computation_for_one_conv():
    class OneConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.head = nn.Conv2d(8, 5, 1, bias=False)

        def forward(self, x):
            return self.head(self.backbone(x))

    macs = count_macs(OneConv(), 32)
    assert macs["backbone"] * 1e9 == pytest.approx(3 * 8 * 3 * 3 * 32 * 32)
    assert macs["head"] * 1e9 == pytest.approx(8 * 5 * 32 * 32)


@pytest.mark.parametrize("name", ["farl-small-300w-edge", "farl-small-celebm-edge", "farl-b16-lapa-448-edge"])
def test_edge_head_costs_at_most_a_quarter_of_the_uperhead(name):
    edge_cfg = get_config(name)
    full = count_macs(create_model(edge_cfg.base, pretrained=False), edge_cfg.input_size)
    edge = count_macs(create_model(name, pretrained=False), edge_cfg.input_size)
    assert edge["head"] <= 0.25 * full["head"]
    assert edge["backbone"] == pytest.approx(full["backbone"])
