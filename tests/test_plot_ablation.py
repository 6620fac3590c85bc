"""train/plot_ablation.py: curves from result.json and model-card histories, PNG written, bad input refused."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "train" / "plot_ablation.py"


def _run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True)


def _spec(tmp_path, arms, metric="nme_io"):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"title": "t", "panels": [{"title": "p", "metric": metric, "lower_is_better": True,
                                                          "target": 4.5, "arms": arms}]}))
    return spec


def test_curves_from_result_and_card(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"steps": 10, "history": [
        {"epoch": 3, "nme_io": 9.0}, {"epoch": 6, "nme_io": 6.5}]}))
    (tmp_path / "card.json").write_text(json.dumps({"model": "m", "history": [
        {"epoch": 3, "nme_io": 12.0, "auc": 1.0}, {"epoch": 6, "nme_io": 5.0}]}))
    spec = _spec(tmp_path, {"from run": "result.json", "from card": "card.json"})
    done = _run(spec, "--output", tmp_path / "out", "--base", tmp_path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    curves = json.loads((tmp_path / "out.json").read_text())
    assert curves["panels"][0]["curves"] == {"from run": [[3, 9.0], [6, 6.5]], "from card": [[3, 12.0], [6, 5.0]]}
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = _run(spec, "--output", tmp_path / "out", "--base", tmp_path, cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_missing_metric_is_a_clear_error_and_writes_nothing(tmp_path):
    (tmp_path / "result.json").write_text(json.dumps({"history": [{"epoch": 8, "f1_mean": 50.0}]}))
    spec = _spec(tmp_path, {"arm": "result.json"}, metric="nme_io")
    done = _run(spec, "--output", tmp_path / "out", "--base", tmp_path, cwd=tmp_path)
    assert done.returncode != 0
    assert "no 'nme_io'" in done.stderr and "f1_mean" in done.stderr
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "out.png").exists()
