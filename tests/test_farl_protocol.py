"""FaRL's own formulas, re-implemented here from its published code as fixtures (not a dependency),
against the project's pipeline: landmark decoding and MIM branch sizing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared_data


def farl_heatmap2points(heatmap: torch.Tensor) -> torch.Tensor:
    """farl/network/geometry.py ``heatmap2points``: (B, N, H, W) → (B, N, 2) x, y in heatmap indices."""
    b, n, h, w = heatmap.shape
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    heatmap_sum = torch.clamp(heatmap.sum([2, 3]), min=1e-6)
    yy_coord = (yy.view(1, 1, h, w) * heatmap).sum([2, 3]) / heatmap_sum
    xx_coord = (xx.view(1, 1, h, w) * heatmap).sum([2, 3]) / heatmap_sum
    return torch.stack([xx_coord, yy_coord], dim=-1)


def test_soft_argmax_is_farl_plus_half_a_pixel_also_at_low_mass():
    from farl_edge.models.heads import soft_argmax

    torch.manual_seed(0)
    heat = torch.rand(2, 68, 56, 56, dtype=torch.float64) ** 8
    heat[0, :6] *= 1e-12          # mass far below FaRL's 1e-6 floor: FaRL's points collapse towards 0
    heat[1, 10] *= 3e-7 / heat[1, 10].sum()
    ours = soft_argmax(heat) * 56
    ref = farl_heatmap2points(heat.float()).double() + 0.5
    assert (ours - ref).abs().max().item() <= 1e-4
    assert ref[0, :6].abs().max() < 1.0  # the low-mass case really differs from a normalised mean


def test_model_landmarks_follow_farl_decode_on_real_faces():
    """Image in → heatmaps → FaRL's decode vs the model's landmarks, back to image coordinates."""
    from farl_edge import crops
    from farl_edge.datasets import open_dataset
    from farl_edge.evaluate import prepare
    from farl_edge.models import create_model

    model = create_model("farl-small-300w")
    cfg = model.cfg
    samples = list(open_dataset(shared_data("300w", "test-helen")))[:4]
    prepared = [prepare(s, cfg) for s in samples]
    x = torch.from_numpy(crops.to_tensor_layout(np.stack([p[0] for p in prepared])))
    with torch.no_grad():
        landmarks, heat = model(x)
    hm = heat.shape[-1]
    farl_crop = (farl_heatmap2points(heat) + 0.5) / hm * cfg.input_size  # FaRL + the 0.5 px convention
    assert (farl_crop - landmarks).abs().max().item() <= 0.01  # float32 sums over 56² cells: ~2e-3 px
    for i, (_, matrix, _) in enumerate(prepared):
        a = crops.landmarks_to_image(landmarks[i].numpy(), matrix, cfg.input_size, cfg.preprocess)
        b = crops.landmarks_to_image(farl_crop[i].numpy(), matrix, cfg.input_size, cfg.preprocess)
        assert np.abs(a - b).max() <= 0.01


@pytest.mark.parametrize("layers", [1, 2])
def test_mim_branch_depth_and_vocabulary_come_from_the_file(tmp_path, layers):
    from farl_edge.checkpoint import mim_branch_shape
    from farl_edge.models.clip import FaRLClip
    from farl_edge.models.factory import create_clip_model
    from farl_edge.registry import get_config

    torch.manual_seed(0)
    src = FaRLClip(get_config("farl-small-224"), mim=True, mim_vocab_size=512, mim_layers=layers)
    path = tmp_path / "pretrain.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    assert mim_branch_shape(path) == (layers, 512)
    clip = create_clip_model("farl-small-224", mim=True, checkpoint=path)
    assert len(clip.visual.lm_transformer.resblocks) == layers and clip.visual.lm_head.out_features == 512
    for k, v in src.state_dict().items():
        assert torch.equal(clip.state_dict()[k], v), k


def test_farl_trainer_file_with_a_multisteplr_counter_loads_safely(tmp_path):
    """FaRL's trainer files carry MultiStepLR state (``milestones`` is a collections.Counter):
    weights_only loading accepts it from torch 2.4 on, the floor the extras pin."""
    import collections

    from farl_edge.models import create_model

    src = create_model("farl-small-300w", pretrained=False)
    opt = torch.optim.SGD(src.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10, 20], gamma=0.1)
    assert isinstance(sched.state_dict()["milestones"], collections.Counter)
    state = {f"backbone.{k}": v for k, v in src.backbone.state_dict().items()}
    path = tmp_path / "trainer.pth"
    torch.save({"networks": {"main_ema": state}, "schedulers": {"main": sched.state_dict()}, "iter": 7}, path)
    from farl_edge.checkpoint import _classify, _torch_load

    fmt, loaded = _classify(_torch_load(path), path)
    assert fmt == "farl-trainer" and set(loaded) == set(state)
