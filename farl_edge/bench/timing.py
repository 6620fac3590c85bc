"""Latency statistics and the adaptive timing loop.

:func:`percentile` is numpy's default ("linear") definition: for sorted samples x₀ … xₙ₋₁ the
q-th percentile sits at position (n − 1)·q/100, interpolated between its two neighbours.

:func:`measure` runs ``fn`` after a warm-up (at least ``warmup`` calls and ``warmup_s`` seconds),
then keeps timing until *all* of: at least ``min_iters`` calls, at least ``min_time`` seconds, and
a stable median (the median of the first half of the samples and the median of all of them differ
by at most ``rel_tol``; with ``min_iters`` < 4 the stability test is skipped, as it needs 4
samples); it stops anyway at ``max_iters`` calls or ``max_time`` seconds (the result
then says ``stable: false``). Every call is timed on its own with ``time.perf_counter``.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """q-th percentile (0–100), linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], not {q}")
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(samples: Sequence[float]) -> float:
    return percentile(samples, 50)


@dataclass
class TimingResult:
    samples_ms: list[float]
    warmup_ms: list[float]
    stable: bool
    seconds: float

    @property
    def iters(self) -> int:
        return len(self.samples_ms)

    def stats(self) -> dict:
        s = self.samples_ms
        return {"median_ms": median(s), "p90_ms": percentile(s, 90), "p99_ms": percentile(s, 99),
                "mean_ms": sum(s) / len(s), "min_ms": min(s), "max_ms": max(s), "iters": len(s),
                "warmup_iters": len(self.warmup_ms), "stable": self.stable, "timing_s": round(self.seconds, 2)}

    def to_dict(self) -> dict:
        return {**self.stats(), **asdict(self)}


@dataclass(frozen=True)
class TimingPolicy:
    warmup: int = 2
    warmup_s: float = 0.0
    min_iters: int = 10
    min_time: float = 2.0
    max_iters: int = 1000
    max_time: float = 60.0
    rel_tol: float = 0.02

    def __post_init__(self):
        if self.min_iters < 1 or self.max_iters < self.min_iters:
            raise ValueError("need 1 <= min_iters <= max_iters")
        if self.warmup < 0 or self.min_time < 0 or self.max_time <= 0:
            raise ValueError("warmup, min_time must be >= 0 and max_time > 0")

    def to_dict(self) -> dict:
        return asdict(self)


def is_stable(samples: Sequence[float], rel_tol: float) -> bool:
    """Median of the first half within ``rel_tol`` of the median of all samples (needs >= 4)."""
    if len(samples) < 4:
        return False
    m_all = median(samples)
    m_half = median(samples[: len(samples) // 2])
    return m_all > 0 and abs(m_half - m_all) / m_all <= rel_tol


def measure(fn: Callable[[], object], policy: TimingPolicy = TimingPolicy(),
            clock: Callable[[], float] = time.perf_counter) -> TimingResult:
    """Time ``fn()`` under ``policy`` (see the module docstring)."""
    started = clock()
    warm: list[float] = []
    while len(warm) < policy.warmup or (clock() - started) < policy.warmup_s:
        t0 = clock()
        fn()
        warm.append((clock() - t0) * 1e3)
        if clock() - started > policy.max_time:
            break
    samples: list[float] = []
    t_start = clock()
    stable = False
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        samples.append((t1 - t0) * 1e3)
        elapsed = t1 - t_start
        stable = is_stable(samples, policy.rel_tol)
        # Fewer than 4 samples cannot show stability: min_iters < 4 means "just this many".
        if len(samples) >= policy.min_iters and elapsed >= policy.min_time and (stable or len(samples) < 4):
            break
        if len(samples) >= policy.max_iters or elapsed >= policy.max_time:
            break
    return TimingResult(samples, warm, bool(stable), clock() - started)
