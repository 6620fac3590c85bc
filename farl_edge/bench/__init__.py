"""``farl-edge bench``: latency, memory, cold start, accuracy and the distance to the CPU's compute
floor, for every target × precision × batch of a model, in one run.

- :mod:`farl_edge.bench.timing`: percentiles and the adaptive timing loop;
- :mod:`farl_edge.bench.hardware`: CPU / ISA detection and the peak-rate (floor) table;
- :mod:`farl_edge.bench.runner`: the matrix (exports through the export pipeline, one subprocess per row);
- :mod:`farl_edge.bench.worker`: one row in a fresh process;
- :mod:`farl_edge.bench.report`: markdown, CSV, JSON, PNG plots;
- :mod:`farl_edge.bench.cli`: the ``bench`` subcommand.
"""
from __future__ import annotations

__all__ = ["BenchConfig", "run_bench"]


def __getattr__(name):
    if name in __all__:
        from farl_edge.bench import runner

        return getattr(runner, name)
    raise AttributeError(name)
