"""Edge heads: shapes, cost measured from the model, the 25% budget against the UPerHead, and the
channel-pruned start of a slim UPerHead student."""
import pytest
import torch
from torch import nn

from farl_edge.models import create_model
from farl_edge.models.complexity import count_macs
from farl_edge.models.edge_heads import EdgeHead
from farl_edge.models.heads import DenseHead
from farl_edge.registry import get_config, list_models
from farl_edge.train.prune import channel_ranking, init_slim_head_from_teacher

EDGE = [n for n in list_models() if get_config(n).base]


def test_registry_has_edge_variants():
    assert {"farl-b16-lapa-448-edge", "farl-b16-300w-448-edge", "farl-small-300w-edge", "farl-small-celebm-edge"} <= set(EDGE)


@pytest.mark.parametrize("name", [n for n in EDGE if n.startswith("farl-small")] + ["farl-b16-300w-448-edge"])
def test_edge_forward_shapes(name):
    cfg = get_config(name)
    model = create_model(name, pretrained=False)
    s, stride = cfg.input_size, cfg.head.get("out_stride", 4)
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


@pytest.mark.parametrize("out_stride", [4, 8])
def test_all_mlp_edge_head_shapes(out_stride):
    # The SegFormer-style head (measured, not shipped: see the model cards) stays selectable.
    head = EdgeHead(192, 19, channels=64, out_stride=out_stride).eval()
    out = head([torch.rand(2, 192, 14, 14) for _ in range(4)])
    assert out.shape == (2, 19, 224 // out_stride, 224 // out_stride)


def _teacher_head(channels=24, outputs=5, width=16):
    torch.manual_seed(0)
    head = DenseHead(width, outputs, channels).eval()
    for m in head.modules():  # trained-looking norms, so the ranking and the copy are exercised
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.1, 2.0)
            m.running_mean.data.normal_()
            m.running_var.data.uniform_(0.5, 2.0)
    return head


def test_pruned_start_at_full_width_reproduces_the_teacher():
    teacher = _teacher_head()
    student = DenseHead(16, 5, 24).eval()
    init_slim_head_from_teacher(student, teacher)
    feats = [torch.randn(2, 16, 8, 8) for _ in range(4)]
    assert torch.equal(student(feats), teacher(feats))


def test_pruned_start_keeps_the_highest_ranked_channels():
    teacher = _teacher_head()
    with torch.no_grad():
        for bn in (teacher.decoder.fpn_bottleneck[1], teacher.decoder.bottleneck[1]):
            bn.weight[[3, 7]] = 50.0  # two channels far above the rest
    student = DenseHead(16, 5, 2).eval()
    keep = init_slim_head_from_teacher(student, teacher)
    assert keep.tolist() == [3, 7] and set(channel_ranking(teacher)[:2].tolist()) == {3, 7}
    assert torch.equal(student.conv_seg.weight, teacher.conv_seg.weight[:, [3, 7]])
    assert torch.equal(student.decoder.fpn_convs[0][0].weight, teacher.decoder.fpn_convs[0][0].weight[[3, 7]][:, [3, 7]])
    # bottleneck input: the 16 backbone channels, then channels 3 and 7 of each of the 4 pooling branches
    expect_in = list(range(16)) + [16 + i * 24 + c for i in range(4) for c in (3, 7)]
    assert torch.equal(student.decoder.bottleneck[0].weight, teacher.decoder.bottleneck[0].weight[[3, 7]][:, expect_in])
    assert torch.equal(student.adapter.fpn1[0].weight, teacher.adapter.fpn1[0].weight)


def test_pruned_start_refuses_what_cannot_be_cut():
    teacher = _teacher_head()
    with pytest.raises(ValueError, match="cannot be cut"):
        init_slim_head_from_teacher(DenseHead(16, 5, 32), teacher)
    with pytest.raises(ValueError, match="cannot be cut"):
        init_slim_head_from_teacher(DenseHead(16, 7, 8), teacher)
    with pytest.raises(TypeError, match="UPerHead heads on both sides"):
        init_slim_head_from_teacher(EdgeHead(16, 5, channels=8), teacher)
