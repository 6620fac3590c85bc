"""The small trained models ship with the package, load by name and reproduce their card's metric.

A regression pin: the reference metric is the one the shipping run measured and wrote into the card;
this test proves the shipped file still reproduces it, not that the number is good."""
import pytest

from farl_edge.checkpoint import read_card
from farl_edge.datasets import open_dataset
from farl_edge.evaluate import evaluate
from farl_edge.models import create_model
from farl_edge.models.predictor import TorchPredictor
from farl_edge.registry import get_config, list_models, weights_path
from conftest import shared_data

SHIPPED = [n for n in list_models() if get_config(n).weights and get_config(n).task != "backbone"]
DATA = {"300w": ("300w", "test-helen"), "celebamask-hq": ("celebamask-hq", "val")}


def test_required_models_are_shipped():
    for name in ("farl-small-300w", "farl-small-celebm"):
        path = weights_path(get_config(name))
        assert path is not None, f"{name}: weights missing from farl_edge/data/weights"
        card = read_card(path)
        assert card["model"] == name and card["dtype"] == "float16"
        assert {"data", "recipe", "reproduce", "training_time_s", "metrics", "license"} <= set(card)
        assert "non-commercial" in card["license"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reproduces_reference_metric(name):
    path = weights_path(get_config(name))
    if path is None:
        pytest.fail(f"{name} is registered with weights {get_config(name).weights} but the file is not shipped")
    card = read_card(path)
    ref = card["metrics"]["reference_subset"]
    samples = open_dataset(shared_data(*DATA[get_config(name).dataset]))
    got = evaluate(TorchPredictor(create_model(name)), samples, limit=ref["limit"], progress=False)
    key = "nme_io" if "nme_io" in ref else "f1_mean"
    # pinned to the card's own number (same faces, same code path): a change here is a regression
    assert got[key] == pytest.approx(ref[key], abs=0.02)


def test_pretrained_backbone_card_says_how_it_was_made():
    """farl-small-224: image + text towers pre-trained here; the card discloses generated captions."""
    path = weights_path(get_config("farl-small-224"))
    assert path is not None, "farl-small-224 is registered with weights but the file is not shipped"
    card = read_card(path)
    pre = card["pretraining"]
    assert card["model"] == "farl-small-224" and card["dtype"] == "float16" and "non-commercial" in card["license"]
    assert pre["steps"] > 0 and "generated from each face's own annotations" in pre["captions"]
    assert pre["data"]["captioned"] < pre["data"]["samples"] and pre["losses"]["last_100_steps"]["loss"] > 0
    model = create_model("farl-small-224")  # loads by name, image tower only
    assert model.cfg.task == "backbone"
