"""CPU / ISA detection and the compute floor: the fastest a model could possibly run here.

floor (ms) = GMACs × batch / (peak MACs per cycle per core × cores × frequency)

Peak MACs per cycle per core, per ISA and data type (:data:`PEAK_MACS`), from the instruction
widths and the usual two 512-bit FMA ports of server cores (Xeon Scalable "Gold/Platinum"). Cores
that issue one 512-bit op per cycle get half of the AVX-512 figures (AMX is unaffected): AMD Zen 4
(family 25 with AVX-512), which runs each zmm op on its 256-bit units. Measured on an EPYC Zen 4
VM, 2 cores at 2.6 GHz, OpenVINO, GEMM 2048³: int8 0.30, bf16 0.18, fp32 0.08 TMAC/s, i.e. 90 %,
105 % and 96 % of the halved figures (64 / 32 / 16 MACs per cycle per core), twice the full ones.

| ISA flag (/proc/cpuinfo) | dtype | MACs/cycle/core | how |
| --- | --- | --- | --- |
| amx_int8     | int8 | 1024 | TDPBSSD: 16×16×64 = 16384 MACs per tile op, one per 16 cycles |
| amx_bf16     | bf16 | 512  | TDPBF16PS: 16×16×32 = 8192 MACs per tile op, one per 16 cycles |
| amx_fp16     | fp16 | 512  | TDPFP16PS (Granite Rapids), as amx_bf16 |
| avx512_vnni  | int8 | 128  | VPDPBUSD zmm: 16 lanes × 4 = 64 MACs, 2 ports |
| avx_vnni     | int8 | 64   | VPDPBUSD ymm: 32 MACs, 2 ports |
| avx512_bf16  | bf16 | 64   | VDPBF16PS zmm: 16 lanes × 2 = 32 MACs, 2 ports |
| avx512_fp16  | fp16 | 64   | VFMADDPH zmm: 32 MACs, 2 ports |
| avx512f      | fp32 | 32   | VFMADDPS zmm: 16 MACs, 2 ports |
| fma (AVX2)   | fp32 | 16   | VFMADDPS ymm: 8 MACs, 2 ports |
| (none)       | fp32 | 4    | SSE mulps + addps |

A data type without a dedicated instruction on this CPU falls back to the best fp32 rate (int8 /
bf16 / fp16 are then computed as fp32 at best). Frequency: ``lscpu``'s "CPU max MHz" when the
machine exposes it, else ``cpuinfo_max_freq`` in sysfs, else the highest "cpu MHz" in
/proc/cpuinfo (virtual machines often show only the nominal clock: turbo makes the true floor
lower, so a row can in principle beat it); ``--cpu-mhz`` overrides. Cores = threads used, at most
the physical cores.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

# (flag, dtype, MACs/cycle/core, note): checked in order, the first present flag wins per dtype.
PEAK_MACS: list[tuple[str, str, int, str]] = [
    ("amx_int8", "int8", 1024, "AMX TDPBSSD 16x16x64 per 16 cycles"),
    ("avx512_vnni", "int8", 128, "AVX-512 VNNI VPDPBUSD zmm, 2 ports"),
    ("avx_vnni", "int8", 64, "AVX-VNNI VPDPBUSD ymm, 2 ports"),
    ("amx_bf16", "bf16", 512, "AMX TDPBF16PS 16x16x32 per 16 cycles"),
    ("avx512_bf16", "bf16", 64, "AVX-512 BF16 VDPBF16PS zmm, 2 ports"),
    ("amx_fp16", "fp16", 512, "AMX TDPFP16PS 16x16x32 per 16 cycles"),
    ("avx512_fp16", "fp16", 64, "AVX-512 FP16 VFMADDPH zmm, 2 ports"),
    ("avx512f", "fp32", 32, "AVX-512 VFMADDPS zmm, 2 ports"),
    ("fma", "fp32", 16, "AVX2 FMA VFMADDPS ymm, 2 ports"),
    ("", "fp32", 4, "SSE mulps+addps"),
]
DTYPES = ("fp32", "bf16", "fp16", "int8")
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")


@dataclass
class CpuInfo:
    model: str
    vendor: str
    flags: list[str]  # the ISA flags of ISA_FLAGS this CPU has
    logical_cpus: int
    physical_cores: int
    mhz: float
    mhz_source: str
    machine: str = field(default_factory=platform.machine)
    family: int = 0  # /proc/cpuinfo "cpu family"

    @property
    def zmm_ports(self) -> int:
        """512-bit vector ops issued per cycle: 1 on AMD Zen 4, else 2 (see the module docstring)."""
        return zmm_ports(self.vendor, self.family, self.flags)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def isa(self) -> str:
        """Short name of the best matrix ISA: amx / avx512-vnni / avx512 / avx2 / baseline."""
        f = set(self.flags)
        if {"amx_tile", "amx_int8"} <= f or "amx_bf16" in f:
            return "amx"
        if "avx512_vnni" in f:
            return "avx512-vnni"
        if "avx512f" in f:
            return "avx512"
        if "avx2" in f:
            return "avx2"
        return "baseline"

    def machine_class(self, threads: int | None = None) -> str:
        """Folder name for committed results, e.g. ``intel-amx-2c``."""
        vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(self.vendor, self.vendor.lower() or "cpu")
        cores = min(threads or self.physical_cores, self.physical_cores)
        return re.sub(r"[^a-z0-9.-]+", "-", f"{vendor}-{self.isa}-{cores}c")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def parse_cpuinfo(text: str) -> dict:
    """model name, vendor, flags, logical cpus, physical cores, highest 'cpu MHz' from /proc/cpuinfo text."""
    model = vendor = ""
    family = 0
    flags: set[str] = set()
    mhz = 0.0
    logical = 0
    cores: set[tuple[str, str]] = set()
    phys = core = "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            logical += 1
        elif key == "model name" and not model:
            model = value
        elif key == "vendor_id" and not vendor:
            vendor = value
        elif key == "cpu family" and not family and value.isdigit():
            family = int(value)
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "cpu MHz":
            try:
                mhz = max(mhz, float(value))
            except ValueError:
                pass
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
            cores.add((phys, core))
    return {"model": model, "vendor": vendor, "flags": flags, "logical": logical,
            "physical": len(cores) or logical, "mhz": mhz, "family": family}


def _lscpu_max_mhz() -> float:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0.0
    m = re.search(r"CPU max MHz:\s*([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def detect_cpu(mhz: float | None = None) -> CpuInfo:
    info = parse_cpuinfo(_read("/proc/cpuinfo"))
    source = "override"
    if not mhz:
        mhz, source = _lscpu_max_mhz(), "lscpu CPU max MHz"
    if not mhz:
        khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
        mhz, source = (float(khz) / 1000, "sysfs cpuinfo_max_freq") if khz.isdigit() else (0.0, "")
    if not mhz:
        mhz, source = info["mhz"], "/proc/cpuinfo cpu MHz (nominal; turbo not visible)"
    if not mhz:
        mhz, source = 2000.0, "unknown (assumed 2000 MHz)"
    logical = info["logical"] or os.cpu_count() or 1
    return CpuInfo(model=info["model"] or platform.processor() or "unknown", vendor=info["vendor"],
                   flags=[f for f in ISA_FLAGS if f in info["flags"]], logical_cpus=logical,
                   physical_cores=min(info["physical"] or logical, logical), mhz=float(mhz), mhz_source=source,
                   family=info["family"])


def zmm_ports(vendor: str, family: int, flags) -> int:
    """512-bit vector ops per cycle per core: AMD family 25 with AVX-512 is Zen 4 (256-bit units)."""
    return 1 if vendor == "AuthenticAMD" and family == 25 and "avx512f" in set(flags) else 2


def peak_macs_per_cycle(flags, dtype: str, zmm_ports: int = 2) -> tuple[int, str]:
    """(MACs/cycle/core, ISA used) for ``dtype`` on a CPU with ``flags``; fp32 rate when no ISA has it.
    ``zmm_ports`` = 1 halves the AVX-512 rows (a core that issues one 512-bit op per cycle)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    if zmm_ports not in (1, 2):
        raise ValueError(f"zmm_ports must be 1 or 2, not {zmm_ports!r}")
    flags = set(flags)

    def rate(flag: str, macs: int) -> int:
        return macs // 2 if zmm_ports == 1 and flag.startswith("avx512") else macs

    best_fp32 = next((rate(f, m), f or "scalar") for f, d, m, _ in PEAK_MACS if d == "fp32" and (not f or f in flags))
    for flag, d, macs, _ in PEAK_MACS:
        if d == dtype and (not flag or flag in flags):
            return rate(flag, macs), flag or "scalar"
    return best_fp32[0], f"{best_fp32[1]} (no {dtype} instructions: fp32 rate)"


def peak_table(cpu: CpuInfo, cores: int) -> dict[str, dict]:
    """{dtype: {macs_per_cycle_core, isa, gmacs_per_s}} for ``cores`` cores of ``cpu``."""
    out = {}
    for dtype in DTYPES:
        macs, isa = peak_macs_per_cycle(cpu.flags, dtype, cpu.zmm_ports)
        out[dtype] = {"macs_per_cycle_core": macs, "isa": isa, "zmm_ports": cpu.zmm_ports, "cores": cores, "mhz": cpu.mhz,
                      "gmacs_per_s": macs * cores * cpu.mhz * 1e6 / 1e9}
    return out


def floor_ms(gmacs: float, dtype: str, flags, cores: int, mhz: float, batch: int = 1, zmm_ports: int = 2) -> float:
    """Compute floor in milliseconds: ``gmacs`` (per image) × batch at the peak rate of ``dtype``."""
    if cores < 1 or mhz <= 0:
        raise ValueError("cores must be >= 1 and mhz > 0")
    macs, _ = peak_macs_per_cycle(flags, dtype, zmm_ports)
    return gmacs * 1e9 * batch / (macs * cores * mhz * 1e6) * 1e3


def cores_used(cpu: CpuInfo, threads: int) -> int:
    return max(1, min(int(threads), cpu.physical_cores))
