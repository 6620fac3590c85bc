"""`farl-edge bench`: percentiles, the adaptive loop, the floor table, and one fast end-to-end run."""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from farl_edge.bench import hardware
from farl_edge.bench.timing import TimingPolicy, is_stable, measure, median, percentile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_fixtures import fallback_checkpoint  # noqa: E402


# ----------------------------------------------------------------------------- percentiles
@pytest.mark.parametrize("samples,q,expected", [
    ([5.0], 99, 5.0),
    ([1, 2, 3, 4], 50, 2.5),  # position 1.5
    ([1, 2, 3, 4, 5], 50, 3.0),
    ([10, 20, 30, 40, 50], 90, 46.0),  # position 3.6 → 40 + 0.6 * 10
    ([10, 20, 30, 40, 50], 99, 49.6),  # position 3.96
    ([3, 1, 2], 0, 1.0),
    ([3, 1, 2], 100, 3.0),
    (list(range(1, 101)), 99, 99.01),  # position 98.01 → 99 + 0.01
])
def test_percentile_hand_computed(samples, q, expected):
    assert percentile(samples, q) == pytest.approx(expected)
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)))


def test_percentile_errors_and_median():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert median([4, 1, 3, 2]) == 2.5


def test_stability_rule():
    assert not is_stable([1, 1, 1], 0.02)  # needs 4 samples
    assert is_stable([10, 10, 10, 10.1], 0.02)
    assert not is_stable([10, 10, 20, 20, 20, 20], 0.02)  # first-half median 10, all 20


class FakeClock:
    """Each fn() call advances the clock by the next duration; the clock never moves otherwise."""

    def __init__(self, durations):
        self.t = 0.0
        self.durations = list(durations)

    def __call__(self):
        return self.t

    def fn(self):
        self.t += self.durations.pop(0) if self.durations else 0.01


def test_measure_min_iters_and_warmup():
    clock = FakeClock([1.0, 1.0] + [0.010] * 100)  # 2 slow warm-up calls, then 10 ms
    r = measure(clock.fn, TimingPolicy(warmup=2, min_iters=5, min_time=0.0, max_time=100), clock=clock)
    assert len(r.warmup_ms) == 2 and r.iters >= 5
    assert r.stats()["median_ms"] == pytest.approx(10.0)
    assert r.stable


def test_measure_min_time_and_max_time():
    clock = FakeClock([0.010] * 1000)
    r = measure(clock.fn, TimingPolicy(warmup=0, min_iters=1, min_time=0.5, max_time=100), clock=clock)
    assert r.iters >= 50  # 0.5 s of 10 ms calls
    # unstable series (every call slower than the last): stops at max_time, says so
    noisy = FakeClock([0.01 + 0.001 * i for i in range(1000)])
    r = measure(noisy.fn, TimingPolicy(warmup=0, min_iters=4, min_time=0, max_time=0.2, rel_tol=0.0001), clock=noisy)
    assert r.stable is False and r.iters > 4 and 0.2 <= r.seconds <= 0.3


def test_measure_fewer_than_four_iters_stops():
    clock = FakeClock([0.5, 0.1, 0.2, 0.3])
    r = measure(clock.fn, TimingPolicy(warmup=1, min_iters=3, min_time=0.0, max_time=100), clock=clock)
    assert r.iters == 3 and r.stable is False
    assert r.stats()["median_ms"] == pytest.approx(200.0)


# ----------------------------------------------------------------------------- hardware / floor
CPUINFO = """processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+
cpu MHz		: 2000.000
physical id	: 0
core id		: 0
flags		: fpu sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16

processor	: 1
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+
cpu MHz		: 2100.000
physical id	: 0
core id		: 1
flags		: fpu sse4_2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16
"""


def test_parse_cpuinfo():
    info = hardware.parse_cpuinfo(CPUINFO)
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+" and info["vendor"] == "GenuineIntel"
    assert {"amx_int8", "amx_bf16", "avx512_vnni", "avx512f"} <= info["flags"]
    assert info["logical"] == 2 and info["physical"] == 2 and info["mhz"] == 2100.0


def test_peak_rates_per_isa():
    amx = {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "fma"}
    assert hardware.peak_macs_per_cycle(amx, "int8") == (1024, "amx_int8")
    assert hardware.peak_macs_per_cycle(amx, "bf16") == (512, "amx_bf16")
    assert hardware.peak_macs_per_cycle(amx, "fp32") == (32, "avx512f")
    vnni = {"avx512f", "avx512_vnni", "fma"}
    assert hardware.peak_macs_per_cycle(vnni, "int8") == (128, "avx512_vnni")
    macs, isa = hardware.peak_macs_per_cycle(vnni, "bf16")  # no bf16 instructions: fp32 rate
    assert macs == 32 and "fp32 rate" in isa
    assert hardware.peak_macs_per_cycle({"fma", "avx2"}, "fp32") == (16, "fma")
    assert hardware.peak_macs_per_cycle(set(), "int8")[0] == 4


ZEN4_CPUINFO = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
cpu MHz		: 2596.136
physical id	: 0
core id		: 0
flags		: fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16
"""


def test_zen4_issues_one_512_bit_op_per_cycle():
    """AMD family 25 with AVX-512 (Zen 4) gets half of the AVX-512 rates; AVX2, AMX and Intel keep theirs."""
    info = hardware.parse_cpuinfo(ZEN4_CPUINFO)
    assert info["family"] == 25 and info["vendor"] == "AuthenticAMD"
    flags = info["flags"]
    assert hardware.zmm_ports("AuthenticAMD", 25, flags) == 1
    assert hardware.zmm_ports("AuthenticAMD", 26, flags) == 2  # Zen 5: full-width units
    assert hardware.zmm_ports("GenuineIntel", 6, flags) == 2
    assert hardware.zmm_ports("AuthenticAMD", 25, {"avx2", "fma"}) == 2  # Zen 3: no AVX-512 at all
    assert hardware.peak_macs_per_cycle(flags, "int8", zmm_ports=1) == (64, "avx512_vnni")
    assert hardware.peak_macs_per_cycle(flags, "bf16", zmm_ports=1) == (32, "avx512_bf16")
    assert hardware.peak_macs_per_cycle(flags, "fp32", zmm_ports=1) == (16, "avx512f")
    assert hardware.peak_macs_per_cycle({"fma"}, "fp32", zmm_ports=1) == (16, "fma")
    assert hardware.peak_macs_per_cycle({"amx_int8", "avx512f"}, "int8", zmm_ports=1) == (1024, "amx_int8")
    # farl-small-300w, 2.3187 GMACs int8 on 2 Zen 4 cores at 2596 MHz: 2.3187e9 / (64 × 2 × 2.596e9) = 6.98 ms
    assert hardware.floor_ms(2.3187, "int8", flags, 2, 2596.136, zmm_ports=1) == pytest.approx(6.977, abs=1e-3)
    with pytest.raises(ValueError, match="zmm_ports"):
        hardware.peak_macs_per_cycle(flags, "int8", zmm_ports=4)
    cpu = hardware.CpuInfo("AMD EPYC", "AuthenticAMD", sorted(flags & set(hardware.ISA_FLAGS)), 2, 2, 2596.1, "t",
                           family=25)
    assert cpu.zmm_ports == 1 and hardware.peak_table(cpu, 2)["int8"]["macs_per_cycle_core"] == 64


def test_floor_hand_computed():
    amx = {"amx_int8", "amx_bf16", "avx512f"}
    # 450 GMACs on 2 AMX cores at 2929.7 MHz, int8: 450e9 / (1024 * 2 * 2.9297e9) = 75.0 ms
    assert hardware.floor_ms(450, "int8", amx, cores=2, mhz=2929.6875) == pytest.approx(75.0)
    # bf16 at 2100 MHz: 450e9 / (512 * 2 * 2.1e9) = 209.26 ms
    assert hardware.floor_ms(450, "bf16", amx, cores=2, mhz=2100) == pytest.approx(450e9 / (512 * 2 * 2.1e9) * 1e3)
    # fp32 AVX-512, batch 8: 1 GMAC × 8 / (32 × 1 × 1e9) = 250 ms
    assert hardware.floor_ms(1.0, "fp32", amx, cores=1, mhz=1000, batch=8) == pytest.approx(250.0)
    with pytest.raises(ValueError):
        hardware.floor_ms(1.0, "fp32", amx, cores=0, mhz=1000)


def test_detect_cpu_and_machine_class():
    cpu = hardware.detect_cpu()
    assert cpu.mhz > 0 and cpu.physical_cores >= 1 and cpu.mhz_source
    assert cpu.machine_class(1).endswith("-1c")
    assert hardware.detect_cpu(mhz=1234).mhz == 1234


def test_pareto_front():
    from farl_edge.bench.report import pareto_front

    pts = [(10, 90.0), (5, 80.0), (20, 95.0), (15, 85.0)]  # (latency, f1): (15, 85) is dominated by (10, 90)
    assert [pts[i] for i in pareto_front(pts, higher_is_better=True)] == [(5, 80.0), (10, 90.0), (20, 95.0)]
    nme = [(10, 3.0), (5, 4.0), (20, 3.5)]  # (20, 3.5) dominated by (10, 3.0)
    assert [nme[i] for i in pareto_front(nme, higher_is_better=False)] == [(5, 4.0), (10, 3.0)]


def test_plan_lists_unavailable_and_missing_paths(tmp_path):
    from farl_edge.bench.matrix import BenchConfig, plan

    cfg = BenchConfig(models=["farl-small-300w"], targets=["onnx", "tensorrt", "coreml"],
                      precisions=["bf16", "int8"], batches=[1, 4], out=tmp_path)
    fake = {"torch": (True, ""), "onnx": (True, ""), "tensorrt": (False, "needs an NVIDIA GPU"),
            "coreml": (False, "Core ML runs only on macOS")}
    rows, skipped = plan(cfg, availability=lambda t: fake[t])
    keys = {(r.target, r.precision, r.stage, r.batch): r for r in rows}
    assert ("torch", "fp32", "full", 1) in keys  # the reference is always there
    assert keys[("torch", "bf16", "full", 4)].status == "planned"
    assert keys[("onnx", "int8", "head", 1)].status == "derived"
    assert keys[("tensorrt", "int8", "full", 1)].status == "unavailable"
    assert "NVIDIA" in keys[("tensorrt", "int8", "full", 1)].reason
    assert keys[("coreml", "int8", "full", 1)].reason == "Core ML runs only on macOS"
    why = {(s["target"], s["precision"]): s["reason"] for s in skipped}
    assert ("onnx", "bf16") in why and ("torch", "int8") in why and ("tensorrt", "bf16") in why


def test_plan_has_torch_compile_rows_whole_model_only(tmp_path):
    from farl_edge.bench.matrix import BenchConfig, plan

    cfg = BenchConfig(models=["farl-small-300w"], targets=["torch-compile"], precisions=["fp32", "fp16", "int8"],
                      batches=[1], out=tmp_path)
    rows, skipped = plan(cfg, availability=lambda t: (True, ""))
    keys = {(r.target, r.precision, r.stage) for r in rows}
    assert {("torch-compile", "fp32", "full"), ("torch-compile", "int8", "full")} <= keys
    assert not any(t == "torch-compile" and stage != "full" for t, _, stage in keys)
    why = {(s["target"], s["precision"]): s["reason"] for s in skipped}
    assert "bf16" in why[("torch-compile", "fp16")]


def test_derived_head_stage():
    """Exported head stage = full − backbone medians; a non-positive difference is 'unreliable', not a value."""
    from types import SimpleNamespace

    from farl_edge.bench.derive import derive
    from farl_edge.bench.matrix import Row

    cpu = hardware.CpuInfo("cpu", "GenuineIntel", ["avx512f"], 2, 2, 1000.0, "test")
    info = SimpleNamespace(cfg=SimpleNamespace(task="alignment"), gmacs={"total": 2.0, "backbone": 0.5, "head": 1.5})

    def rows(full_ms, backbone_ms):
        out = [Row("m", "onnx", "fp32", "full", 1, "ok", data={"median_ms": full_ms}),
               Row("m", "onnx", "fp32", "backbone", 1, "ok", data={"median_ms": backbone_ms}),
               Row("m", "onnx", "fp32", "head", 1, "derived")]
        derive(out, {"m": info}, cpu, threads=2, batches=[1])
        return out[2]

    head = rows(10.0, 4.0)
    assert head.status == "derived" and head.data["median_ms"] == pytest.approx(6.0)
    assert head.data["gmacs"] == 1.5 and head.data["fps"] == pytest.approx(1000 / 6)
    # floor: 1.5 GMACs / (32 MACs/cycle × 2 cores × 1 GHz) = 23.4375 ms
    assert head.data["floor_ms"] == pytest.approx(23.4375)
    noisy = rows(4.0, 10.0)
    assert noisy.status == "unreliable" and "timing noise" in noisy.reason and "median_ms" not in noisy.data


def test_int8_slower_than_bf16_says_so():
    """An int8 row slower than the same target's bf16 row says so and names the profile command;
    a faster one gets no such note."""
    from types import SimpleNamespace

    from farl_edge.bench.derive import derive
    from farl_edge.bench.matrix import Row

    cpu = hardware.CpuInfo("cpu", "GenuineIntel", ["avx512f"], 2, 2, 1000.0, "test")
    info = SimpleNamespace(cfg=SimpleNamespace(task="alignment"), gmacs={"total": 2.0})
    rows = [Row("m", "torch-compile", "bf16", "full", 1, "ok", data={"median_ms": 18.2}),
            Row("m", "torch-compile", "int8", "full", 1, "ok", data={"median_ms": 21.1}),
            Row("m", "openvino", "bf16", "full", 1, "ok", data={"median_ms": 15.1}),
            Row("m", "openvino", "int8", "full", 1, "ok", data={"median_ms": 14.7})]
    derive(rows, {"m": info}, cpu, threads=2, batches=[1])
    slow = " ".join(rows[1].notes)
    assert "int8 slower than bf16 in this run (21.1 vs 18.2 ms)" in slow
    assert "torch_compile_profile.py --model m" in slow
    assert not any("slower" in n for n in rows[3].notes + rows[0].notes)


# ----------------------------------------------------------------------------- end to end
def test_bench_fast_run(tmp_path, helen_dir):
    """torch + onnx fp32 on the small alignment model, two batch sizes, stages, tiny eval subset;
    tensorrt / coreml rows listed with their reason. Every column of the measured rows is filled."""
    from farl_edge.cli import main

    out = tmp_path / "bench"
    ckpt = fallback_checkpoint("farl-small-300w")
    argv = ["bench", "--model", "farl-small-300w", "--targets", "torch,onnx,tensorrt,coreml", "--precisions", "fp32",
            "--batch", "1,2", "--iters", "3", "--min-time", "0", "--warmup", "1", "--eval-limit", "4",
            "--export-eval-size", "2", "--threads", "1", "--out", str(out), "--quiet"]
    if ckpt is not None:
        argv += ["--checkpoint", str(ckpt)]
    assert main(argv) == 0
    for name in ("bench.md", "bench.csv", "bench.json", "latency.png", "pareto-farl-small-300w.png", "command.txt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    data = json.loads((out / "bench.json").read_text())
    env = data["environment"]
    assert env["threads"] == 1 and env["cpu"]["model"] and "versions" in env and env["versions"]["torch"]
    assert env["peak"]["int8"]["macs_per_cycle_core"] > 0
    rows = {(r["target"], r["precision"], r["stage"], r["batch"]): r for r in data["rows"]}
    measured = [rows[("torch", "fp32", "full", 1)], rows[("torch", "fp32", "full", 2)],
                rows[("onnx", "fp32", "full", 1)], rows[("onnx", "fp32", "full", 2)]]
    for r in measured:
        assert r["status"] == "ok", r
        for key in ("size_mb", "metric", "delta", "median_ms", "p90_ms", "p99_ms", "fps", "x_torch", "gmacs",
                    "floor_ms", "pct_of_floor", "cold_start_ms", "peak_rss_mb"):
            assert r.get(key) is not None and math.isfinite(r[key]), (r["target"], r["batch"], key)
        assert r["cosine"]["mean"] > 0.9999
        assert r["metric_name"] == "nme_io"
        # measured floor: the model's own op shapes timed alone in this run (real measurement)
        assert r["measured_floor_ms"] > 0 and r["x_measured_floor"] == r["median_ms"] / r["measured_floor_ms"]
        assert set(r["measured_floor"]["per_class_ms"]) == {"gemm", "attention", "conv"}
    assert rows[("onnx", "fp32", "full", 2)]["measured_floor_ms"] == \
        2 * rows[("onnx", "fp32", "full", 1)]["measured_floor_ms"]
    assert set(data["kernel_throughput"]) == {"f32"}
    assert all(v > 0 for v in data["kernel_throughput"]["f32"].values())
    assert rows[("torch", "fp32", "full", 1)]["delta"] == 0 and rows[("torch", "fp32", "full", 1)]["x_torch"] == 1
    assert abs(rows[("onnx", "fp32", "full", 1)]["delta"]) < 0.01
    # stages: torch measured, onnx backbone exported and measured, onnx head derived
    for key in (("torch", "fp32", "backbone", 1), ("torch", "fp32", "head", 1), ("onnx", "fp32", "backbone", 1)):
        assert rows[key]["status"] == "ok" and rows[key]["median_ms"] > 0, key
    assert rows[("onnx", "fp32", "backbone", 1)]["cosine"]["mean"] > 0.9999
    head = rows[("onnx", "fp32", "head", 1)]  # full − backbone; on a loaded machine it can come out ≤ 0
    assert head["status"] == "derived" or (head["status"] == "unreliable" and "timing noise" in head["reason"])
    assert 0 < rows[("torch", "fp32", "backbone", 1)]["gmacs"] < rows[("torch", "fp32", "full", 1)]["gmacs"]
    for target, why in (("tensorrt", "NVIDIA GPU"), ("coreml", "macOS")):
        r = rows[(target, "fp32", "full", 1)]
        assert r["status"] == "unavailable" and why in r["reason"]

    md = (out / "bench.md").read_text()
    assert "| target |" in md and "unavailable" in md and "NVIDIA GPU" in md and "macOS" in md
    assert "amx" in md or "avx" in md or "ISA flags" in md
    with open(out / "bench.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(data["rows"])
    onnx1 = next(r for r in table if r["target"] == "onnx" and r["stage"] == "full" and r["batch"] == "1")
    assert all(onnx1[k] != "" for k in ("median_ms", "p99_ms", "metric", "delta", "cosine_mean", "pct_of_floor",
                                        "measured_floor_ms", "x_measured_floor"))
    assert "× measured floor" in md and "Kernel throughput" in md
    assert (out / "command.txt").read_text().startswith("farl-edge bench")


def test_cached_artifact_is_stale_when_model_config_or_weights_change(tmp_path):
    import hashlib
    import json

    from farl_edge.bench.artifacts import stale_reason
    from farl_edge.bench.matrix import Row
    from farl_edge.bench.weights import ModelInfo
    from farl_edge.registry import get_config

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights v1")
    dest = tmp_path / "artifacts" / "farl-small-300w-full-onnx-fp32-b1"
    dest.mkdir(parents=True)
    cfg = get_config("farl-small-300w").to_dict()
    manifest = {"model": cfg, "weights": {"source": "checkpoint", "sha256": hashlib.sha256(b"weights v1").hexdigest()}}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    info = ModelInfo("farl-small-300w", None, str(weights), False, "", {}, 0.0, 0, None, None)
    full, backbone = (Row("farl-small-300w", "onnx", "fp32", stage, 1) for stage in ("full", "backbone"))
    assert stale_reason(dest / "manifest.json", info, full) is None
    weights.write_bytes(b"weights v2")
    assert stale_reason(dest / "manifest.json", info, full) == "weights changed"
    manifest["weights"]["sha256"] = hashlib.sha256(b"weights v2").hexdigest()
    manifest["model"] = {**cfg, "head": {**cfg["head"], "channels": 8}}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    assert stale_reason(dest / "manifest.json", info, full) == "model config changed (head)"
    # The backbone stage ignores the head, and reads its weights hash from the sidecar beside the artifact.
    assert stale_reason(dest / "manifest.json", info, backbone) is None
    (dest.parent / f"{dest.name}.source.json").write_text(json.dumps({"sha256": "old"}))
    assert stale_reason(dest / "manifest.json", info, backbone) == "weights changed"
    assert stale_reason(tmp_path / "missing" / "manifest.json", info, full) is None


@pytest.mark.slow
@pytest.mark.extended  # minutes of inductor compilation; the plan test above always runs
def test_bench_torch_compile_int8_row(tmp_path, helen_dir):
    """A torch.compile (inductor) row, PT2E int8 calibrated on the shipped model: measured, evaluated,
    compared with the eager reference (minutes: inductor compiles the quantised graph)."""
    pytest.importorskip("torchao")
    from farl_edge.cli import main

    out = tmp_path / "bench"
    argv = ["bench", "--model", "farl-small-300w", "--targets", "torch-compile", "--precisions", "int8",
            "--batch", "1", "--iters", "3", "--min-time", "0", "--warmup", "1", "--eval-limit", "8",
            "--threads", "1", "--calib-size", "16", "--no-measured-floor", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    rows = {(r["target"], r["precision"]): r for r in json.loads((out / "bench.json").read_text())["rows"]
            if r["stage"] == "full"}
    r = rows[("torch-compile", "int8")]
    assert r["status"] == "ok" and r["median_ms"] > 0 and r["metric_name"] == "nme_io", r
    assert rows[("torch", "fp32")]["status"] == "ok"  # the eager reference is always measured
    assert r["cosine"]["min"] > 0.99  # int8: close to the eager reference
    assert abs(rows[("torch-compile", "int8")]["delta"]) < 1.0
