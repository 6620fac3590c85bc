"""``farl-edge bench``: latency, memory, cold start, accuracy and the distance to the CPU's compute
floor, for every target × precision × batch of a model, in one run.

- :mod:`farl_edge.bench.timing`: percentiles and the adaptive timing loop;
- :mod:`farl_edge.bench.hardware`: CPU / ISA detection and the peak-rate (floor) table;
- :mod:`farl_edge.bench.runner`: ``run_bench``, the matrix from plan to report, built from
  - :mod:`farl_edge.bench.matrix`: ``BenchConfig``, the rows and which of them can run here;
  - :mod:`farl_edge.bench.weights`: the weights, GMACs, data folders and op shapes of each model;
  - :mod:`farl_edge.bench.artifacts`: the artifact cache (exports through the export pipeline);
  - :mod:`farl_edge.bench.driver`: one row measured in a fresh subprocess;
  - :mod:`farl_edge.bench.derive`: × torch, the floors, Δmetric, the derived head stage;
- :mod:`farl_edge.bench.worker`: one row in a fresh process;
- :mod:`farl_edge.bench.report`: markdown, CSV, JSON, PNG plots;
- :mod:`farl_edge.bench.cli`: the ``bench`` subcommand.
"""
from __future__ import annotations

__all__ = ["BenchConfig", "run_bench"]


def __getattr__(name):
    if name == "BenchConfig":
        from farl_edge.bench.matrix import BenchConfig

        return BenchConfig
    if name == "run_bench":
        from farl_edge.bench.runner import run_bench

        return run_bench
    raise AttributeError(name)
