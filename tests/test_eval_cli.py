"""`farl-edge eval` on real faces: the pipeline runs, writes JSON, and agrees with a direct computation."""
import json

import numpy as np
import pytest

from farl_edge.checkpoint import save_checkpoint
from farl_edge.cli import main
from farl_edge.datasets import open_dataset
from farl_edge.evaluate import predict_samples
from farl_edge.metrics import nme, normalizer
from farl_edge.models import create_model
from farl_edge.models.predictor import TorchPredictor


def _fixed_checkpoint(name, tmp_path):
    """The model as a file, so the CLI and the direct computation use the same weights."""
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(create_model(name), path)
    return path


def test_eval_alignment_json_matches_direct_nme(helen_dir, tmp_path):
    out = tmp_path / "helen.json"
    ckpt = _fixed_checkpoint("farl-small-300w", tmp_path)
    assert main(["eval", "--model", str(ckpt), "--data", str(helen_dir), "--limit", "6", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 6 and {"nme_io", "nme_ip", "auc", "fr"} <= set(report)
    samples = open_dataset(helen_dir)[:6]
    model = create_model("farl-small-300w", checkpoint=ckpt)
    preds = list(predict_samples(TorchPredictor(model), samples, progress=False))
    direct = np.mean([nme(p.landmarks, p.sample.landmarks, normalizer(p.sample.landmarks, "inter_ocular", "300w"))
                      for p in preds]) * 100
    assert report["nme_io"] == pytest.approx(direct, rel=1e-6)


def test_eval_parsing_json_matches_direct_f1(celebm_val_dir, tmp_path):
    out = tmp_path / "celebm.json"
    ckpt = _fixed_checkpoint("farl-small-celebm", tmp_path)
    assert main(["eval", "--model", str(ckpt), "--data", str(celebm_val_dir), "--limit", "3",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 3 and set(report["f1"]) >= {"face", "hair", "nose"}
    model = create_model("farl-small-celebm", checkpoint=ckpt)
    preds = list(predict_samples(TorchPredictor(model), open_dataset(celebm_val_dir)[:3], progress=False))
    tp = np.zeros(19)
    n_pred = np.zeros(19)
    n_gt = np.zeros(19)
    for p in preds:
        gt = p.sample.load_mask()
        for c in range(19):
            tp[c] += np.sum((p.label_map == c) & (gt == c))
            n_pred[c] += np.sum(p.label_map == c)
            n_gt[c] += np.sum(gt == c)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * tp / (n_pred + n_gt)
    assert report["f1_mean"] == pytest.approx(np.nanmean(f1[1:]) * 100, rel=1e-6)


def test_eval_unknown_model_is_one_line_error(helen_dir, capsys):
    assert main(["eval", "--model", "no-such-model", "--data", str(helen_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown model 'no-such-model'" in err and "\n" not in err


def test_eval_missing_data_folder(tmp_path, capsys):
    assert main(["eval", "--model", "farl-small-300w", "--data", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_keeps_an_existing_json_unless_forced(helen_dir, tmp_path, capsys):
    out = tmp_path / "helen.json"
    out.write_text("mine")
    args = ["eval", "--model", "farl-small-300w", "--data", str(helen_dir), "--limit", "2", "--json", str(out)]
    assert main(args) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_text() == "mine"
    assert main([*args, "--force"]) == 0
    assert json.loads(out.read_text())["n"] == 2


@pytest.mark.parametrize("model, data, words", [
    ("farl-small-300w", "celebm_val_dir", ("alignment model", "no landmarks", "parsing data set")),
    ("farl-small-celebm", "helen_dir", ("parsing model", "no masks", "landmark data set")),
])
def test_eval_task_and_data_mismatch_is_named(model, data, words, request, capsys):
    assert main(["eval", "--model", model, "--data", str(request.getfixturevalue(data))]) == 2
    err = capsys.readouterr().err.strip()
    assert all(w in err for w in words) and "\n" not in err


def test_stdout_closed_early_is_quiet():
    """`farl-edge models | head -1`: the reader closes the pipe; no traceback, SIGPIPE's exit status."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "farl_edge.cli", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child writes anything: its first flush meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err
