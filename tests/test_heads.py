"""Task heads: shapes, decoding, pooling equivalence, mapping back to the original image."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from farl_edge import crops
from farl_edge.models import create_model
from farl_edge.models.heads import adaptive_avg_pool, soft_argmax
from farl_edge.registry import get_config, list_models


@pytest.mark.parametrize("size_in,size_out", [(7, 1), (7, 2), (7, 3), (7, 6), (14, 3), (14, 6), (28, 6)])
def test_adaptive_pool_matches_torch(size_in, size_out):
    x = torch.randn(2, 5, size_in, size_in)
    assert torch.allclose(adaptive_avg_pool(x, size_out), F.adaptive_avg_pool2d(x, size_out), atol=1e-6)


def test_soft_argmax_of_a_peak_is_the_pixel_centre():
    hm = torch.zeros(1, 2, 8, 8)
    hm[0, 0, 3, 5] = 1.0  # row 3, column 5
    hm[0, 1, 0, 7] = 1.0
    pts = soft_argmax(hm)
    assert torch.allclose(pts[0, 0], torch.tensor([5.5 / 8, 3.5 / 8]))
    assert torch.allclose(pts[0, 1], torch.tensor([7.5 / 8, 0.5 / 8]))


SMALL = ["farl-small-300w", "farl-small-celebm"]
FULL = ["farl-b16-lapa-448", "farl-b16-300w-448"]


@pytest.mark.parametrize("name", SMALL + FULL)
def test_head_forward_shapes(name):
    cfg = get_config(name)
    model = create_model(name, pretrained=False)
    s = cfg.input_size
    with torch.no_grad():
        out = model(torch.rand(1, 3, s, s))
    if cfg.task == "parsing":
        assert out.shape == (1, len(cfg.labels), s // 4, s // 4)
    else:
        landmarks, heatmaps = out
        assert landmarks.shape == (1, cfg.num_landmarks, 2)
        assert heatmaps.shape == (1, cfg.num_landmarks, s // 4, s // 4)
        assert float(landmarks.min()) >= 0 and float(landmarks.max()) <= s  # inside the input


@pytest.mark.parametrize("name", [n for n in list_models() if get_config(n).task != "backbone" and n not in SMALL + FULL])
def test_every_registry_head_builds(name):
    cfg = get_config(name)
    model = create_model(name, pretrained=False)
    assert model.head is not None and model.output_names[0] in ("logits", "landmarks")
    assert cfg.num_outputs > 0


def test_parsing_argmax_maps_back_to_original_size():
    cfg = get_config("farl-small-celebm")
    model = create_model(cfg.name, pretrained=False)
    image = np.random.default_rng(0).integers(0, 255, (300, 260, 3), dtype=np.uint8)
    box = np.array([40.0, 50.0, 220.0, 250.0])
    matrix = crops.crop_matrix({"warp": "box", "box_scale": 1.2}, cfg.input_size, box=box)
    x = crops.to_tensor_layout(crops.warp_input(image, matrix, cfg.input_size, {"warp": "box"})[None])
    with torch.no_grad():
        logits = model(torch.from_numpy(x))[0].numpy()
    labels = crops.logits_to_label_map(logits, matrix, cfg.input_size, {"warp": "box"}, image.shape[:2])
    assert labels.shape == image.shape[:2]
    assert labels.max() < len(cfg.labels)
    # Inside the crop the labels are the upsampled argmax; outside the crop it is background.
    assert (labels[:5, :5] == 0).all()


def test_alignment_landmarks_map_back_through_the_crop():
    cfg = get_config("farl-small-300w")
    matrix = crops.crop_matrix(cfg.preprocess, cfg.input_size, box=np.array([100.0, 80.0, 180.0, 170.0]))
    pts_input = np.array([[112.0, 112.0], [0.0, 0.0]])
    back = crops.landmarks_to_image(pts_input, matrix, cfg.input_size, cfg.preprocess)
    # The input centre is the box centre.
    assert np.allclose(back[0], [140.0, 125.0], atol=1e-6)
