"""The derived columns of a bench report: × torch, GMACs, the peak-rate floor and the measured floor
(the model's own op shapes timed alone, after the rows) of rows that run on the host CPU, Δmetric,
and the head stage of exported targets (full − backbone)."""
from __future__ import annotations

from farl_edge.bench import hardware
from farl_edge.bench.matrix import METRIC, Row, runs_on_host_cpu

# The command that shows where a target's int8 and bf16 rows spend their time, named in an int8 row
# that came out slower than bf16 (the issue asks the row to say why, not to hide it).
PROFILE_COMMAND = {
    "torch-compile": "python benchmarks/torch_compile_profile.py --model {model} --precisions int8,bf16",
    "openvino": "python benchmarks/openvino_profile.py <int8 IR> <fp32 IR>:bf16 --floor",
}


def measured_floors(rows: list, infos: dict, threads: int, device: str, log) -> tuple[dict, object]:
    """Time every op shape of the measured rows' models alone; {(model, stage, row precision): MeasuredFloor}.
    Runs after the rows (never beside them) and only for rows whose compute runs on this CPU; also
    returns the throughput cache (what each shape reached)."""
    from farl_edge.bench.floor import KERNEL_PRECISION, ThroughputCache, measured_floor

    cache = ThroughputCache(threads)
    wanted = sorted({(r.model, r.stage, r.precision) for r in rows
                     if r.model in infos and infos[r.model].op_shapes and r.data.get("median_ms")
                     and r.precision in KERNEL_PRECISION and runs_on_host_cpu(r.target, device)})
    if wanted:
        log(f"measured floor: timing {len({s for i in infos.values() for c in i.op_shapes.values() for s in c})} "
            f"op shapes alone")
    out = {}
    for model, stage, precision in wanted:
        counts = infos[model].op_shapes.get(stage)
        if counts:
            out[(model, stage, precision)] = measured_floor(counts, precision, cache)
    return out, cache


def kernel_throughput(cache) -> dict:
    """{kernel precision: {op class: TMAC/s}}, MAC-weighted over every shape measured in this run."""
    macs: dict = {}
    secs: dict = {}
    for (shape, precision), tmacs in cache.table.items():
        key = (precision, shape.op_class)
        macs[key] = macs.get(key, 0.0) + shape.macs
        secs[key] = secs.get(key, 0.0) + shape.macs / (tmacs * 1e12)
    out: dict = {}
    for (precision, op_class), m in sorted(macs.items()):
        out.setdefault(precision, {})[op_class] = m / secs[(precision, op_class)] / 1e12
    return out


def derive(rows: list[Row], infos: dict, cpu: hardware.CpuInfo, threads: int, batches: list[int],
           device: str = "cpu", floors: dict | None = None) -> None:
    """× torch, GMACs, floor (rows on the host CPU), Δmetric; head stage of exported targets = full − backbone.
    Rows of models that never started (time budget) are left as they are."""
    by_key = {r.key: r for r in rows}
    cores = hardware.cores_used(cpu, threads)
    for r in rows:
        if r.model not in infos:
            continue
        if r.status == "derived":
            full = by_key.get((r.model, r.target, r.precision, "full", r.batch))
            bb = by_key.get((r.model, r.target, r.precision, "backbone", r.batch))
            if full and bb and full.status == "ok" and bb.status == "ok":
                diff = full.data["median_ms"] - bb.data["median_ms"]
                if diff > 0:
                    r.data["median_ms"] = diff
                    r.data["fps"] = 1000.0 * r.batch / diff
                    r.notes.append("derived: full − backbone medians")
                else:
                    # A measurement that says nothing, not a broken row: reported, not counted as failed.
                    r.status, r.reason = "unreliable", (
                        f"derived head time is not positive (full {full.data['median_ms']:.1f} ms, backbone "
                        f"{bb.data['median_ms']:.1f} ms): timing noise; rerun on an idle machine")
            elif any(x is not None and x.status == "skipped" for x in (full, bb)):
                r.status, r.reason = "skipped", "its full or backbone row was skipped (time budget)"
            else:
                r.status, r.reason = "failed", "needs measured full and backbone rows"
    for r in rows:
        info = infos.get(r.model)
        if info is None:
            continue
        gm = info.gmacs.get({"full": "total"}.get(r.stage, r.stage), info.gmacs["total"])
        r.data["gmacs"] = gm
        if r.data.get("median_ms"):
            # The floor is this CPU's: rows that run on a GPU / Core ML get none.
            if r.precision in hardware.DTYPES and runs_on_host_cpu(r.target, device):
                fl = hardware.floor_ms(gm, r.precision, cpu.flags, cores, cpu.mhz, r.batch, cpu.zmm_ports)
                r.data["floor_ms"] = fl
                r.data["x_floor"] = r.data["median_ms"] / fl
                r.data["pct_of_floor"] = 100.0 * fl / r.data["median_ms"]
            mf = (floors or {}).get((r.model, r.stage, r.precision))
            if mf is not None:
                # measured at batch 1; a batch of b costs b times the arithmetic
                r.data["measured_floor_ms"] = mf.ms * r.batch
                r.data["x_measured_floor"] = r.data["median_ms"] / r.data["measured_floor_ms"]
                r.data["measured_floor"] = {"kernel_precision": mf.precision, "per_class_ms": mf.per_class_ms,
                                            "kernel_throughput": mf.kernel_throughput}
            ref = by_key.get((r.model, "torch", "fp32", r.stage, r.batch))
            if ref and ref.data.get("median_ms"):
                r.data["x_torch"] = ref.data["median_ms"] / r.data["median_ms"]
        # accuracy columns: measured once per (target, precision, stage) at the first batch
        src = by_key.get((r.model, r.target, r.precision, r.stage, batches[0]))
        if src is not r and src is not None:
            for key in ("metrics", "cosine", "landmark_shift_px"):
                if key in src.data:
                    r.data[key] = src.data[key]
            if "metrics" in src.data or "cosine" in src.data:
                r.data["accuracy_from_batch"] = batches[0]
        bf16 = by_key.get((r.model, r.target, "bf16", r.stage, r.batch))
        if (r.precision == "int8" and bf16 is not None and r.data.get("median_ms")
                and bf16.data.get("median_ms") and r.data["median_ms"] > bf16.data["median_ms"]):
            why = PROFILE_COMMAND.get(r.target)
            r.notes.append(f"int8 slower than bf16 in this run ({r.data['median_ms']:.1f} vs "
                           f"{bf16.data['median_ms']:.1f} ms)"
                           + (f"; where each spends its time: `{why.format(model=r.model)}`" if why else ""))
        metric, _ = METRIC.get(info.cfg.task, (None, None))
        ref = by_key.get((r.model, "torch", "fp32", "full", batches[0]))
        if metric and r.stage == "full" and "metrics" in r.data and ref is not None and "metrics" in ref.data:
            r.data["metric_name"] = metric
            r.data["metric"] = r.data["metrics"].get(metric)
            if r.data["metric"] is not None and ref.data["metrics"].get(metric) is not None:
                r.data["delta"] = r.data["metric"] - ref.data["metrics"][metric]
