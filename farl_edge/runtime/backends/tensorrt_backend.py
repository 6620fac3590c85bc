"""TensorRT backend (TensorRT 10/11 ``tensorrt`` or TensorRT for RTX ``tensorrt_rtx_bindings``).

Torch-free: device memory and streams come from the CUDA driver API through ``ctypes``
(``libcuda``, installed with every NVIDIA driver), so nothing beyond the TensorRT wheels is needed.

Engines live in our own container (:func:`write_engine` / :func:`read_engine`)::

    b"FARLTRT1" | uint32 little-endian header length | header (UTF-8 JSON) | serialized engine

The header names the TensorRT flavour and exact version, the compute capabilities the engine was
built for, the precision, the model, the input size and batch range, and the engine's sha256, so
that a mismatched engine (other flavour / version / GPU) or a corrupt one is refused with a clear
message instead of TensorRT's own failure deep in deserialisation.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import importlib
import importlib.util
import io
import json
import struct
import sys
from pathlib import Path

import numpy as np

from farl_edge.errors import UserError
from farl_edge.runtime import ArtifactError

NAME = "tensorrt"
MAGIC = b"FARLTRT1"
CONTAINER_VERSION = 1
_LEN = struct.Struct("<I")
MAX_HEADER = 1 << 20

# flavour → (importable module, pip packages)
FLAVOURS = {
    "tensorrt": ("tensorrt", "pip install 'farl-edge[tensorrt]' (tensorrt 10/11, GPU machines)"),
    "tensorrt-rtx": ("tensorrt_rtx_bindings", "pip install 'farl-edge[tensorrt-rtx]' "
                                              "(tensorrt-rtx-cu12-libs + tensorrt-rtx-cu12-bindings)"),
}


class EngineError(ArtifactError):
    """The engine file cannot be used here (corrupt, or built for another TensorRT / GPU)."""


# --------------------------------------------------------------------------------------------
# container format
# --------------------------------------------------------------------------------------------

def write_engine(path: str | Path, engine: bytes, header: dict) -> dict:
    """Write ``engine`` with its metadata header; returns the header as written."""
    engine = bytes(engine)
    header = {"container": CONTAINER_VERSION, **header, "engine_bytes": len(engine),
              "engine_sha256": hashlib.sha256(engine).hexdigest()}
    blob = json.dumps(header, sort_keys=True).encode()
    with io.open(path, "wb") as f:  # the module defines open() (backend protocol)
        f.write(MAGIC)
        f.write(_LEN.pack(len(blob)))
        f.write(blob)
        f.write(engine)
    return header


def read_header(path: str | Path) -> dict:
    """The metadata header of an engine file (EngineError when it is not ours or is damaged)."""
    header, _ = _read(path, with_engine=False)
    return header


def read_engine(path: str | Path, verify: bool = True) -> tuple[dict, bytes]:
    """(header, engine bytes); with ``verify`` the engine's size and sha256 are checked."""
    return _read(path, with_engine=True, verify=verify)


def _read(path, with_engine: bool, verify: bool = True) -> tuple[dict, bytes | None]:
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"engine file {path} does not exist")
    with io.open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise EngineError(f"{path} is not a farl-edge TensorRT engine (bad magic {magic[:8]!r}); "
                              f"plain TensorRT plans are not accepted: rebuild with `farl-edge export`")
        raw_len = f.read(_LEN.size)
        if len(raw_len) != _LEN.size:
            raise EngineError(f"corrupt engine {path}: truncated header")
        (n,) = _LEN.unpack(raw_len)
        if n <= 0 or n > MAX_HEADER:
            raise EngineError(f"corrupt engine {path}: header length {n} is out of range")
        blob = f.read(n)
        try:
            header = json.loads(blob.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EngineError(f"corrupt engine {path}: header is not valid JSON ({e})") from None
        if not isinstance(header, dict) or "flavour" not in header:
            raise EngineError(f"corrupt engine {path}: header has no 'flavour'")
        if int(header.get("container", 0)) > CONTAINER_VERSION:
            raise EngineError(f"{path}: engine container version {header.get('container')} is newer than this "
                              f"farl-edge reads ({CONTAINER_VERSION}); upgrade farl-edge")
        engine = f.read() if with_engine else None
    if engine is not None and verify:
        if len(engine) != header.get("engine_bytes"):
            raise EngineError(f"corrupt engine {path}: {len(engine)} engine bytes, header says "
                              f"{header.get('engine_bytes')} (truncated or padded file)")
        digest = hashlib.sha256(engine).hexdigest()
        if digest != header.get("engine_sha256"):
            raise EngineError(f"corrupt engine {path}: engine sha256 {digest[:12]}… does not match its header "
                              f"({str(header.get('engine_sha256'))[:12]}…)")
    return header, engine


def check_compatible(header: dict, flavour_version: str | None, gpu_cc: str | None, *,
                     allow_version_mismatch: bool = False) -> None:
    """EngineError when the engine was built for another TensorRT flavour / version or GPU."""
    flavour = header.get("flavour")
    if flavour not in FLAVOURS:
        raise EngineError(f"engine built with unknown TensorRT flavour {flavour!r}")
    if flavour_version is None:
        raise EngineError(f"engine was built with {flavour} {header.get('version')}, which is not installed here: "
                          f"{FLAVOURS[flavour][1]}")
    if header.get("version") != flavour_version and not allow_version_mismatch:
        raise EngineError(f"engine was built with {flavour} {header.get('version')} but {flavour} "
                          f"{flavour_version} is installed; TensorRT engines only load in the version that built "
                          f"them: rebuild it here (`farl-edge export --target {flavour}`) or install "
                          f"{flavour} {header.get('version')}")
    built_for = [normalize_cc(c) for c in header.get("compute_capabilities", [])]
    if gpu_cc is not None and built_for and normalize_cc(gpu_cc) not in built_for:
        raise EngineError(f"engine was built for compute capability {', '.join(built_for)} but this GPU is "
                          f"{normalize_cc(gpu_cc)}: rebuild it for this GPU (--compute-capability "
                          f"{normalize_cc(gpu_cc)} or current)")


def normalize_cc(cc) -> str:
    """'8.9', '89', 'sm89', 'SM89', (8, 9) → 'sm89'; 'current' stays 'current'."""
    if isinstance(cc, (tuple, list)):
        return f"sm{int(cc[0])}{int(cc[1])}"
    text = str(cc).strip().lower()
    if text in ("current", "native"):
        return "current"
    if text.startswith("sm_"):
        text = text[3:]
    elif text.startswith("sm"):
        text = text[2:]
    if "." in text:
        major, _, minor = text.partition(".")
        text = f"{int(major)}{int(minor)}"
    if not text.isdigit() or len(text) < 2:
        raise UserError(f"compute capability {cc!r} is not like 8.9, sm89 or current")
    return f"sm{text}"


# --------------------------------------------------------------------------------------------
# CUDA driver API (ctypes)
# --------------------------------------------------------------------------------------------

_CUDA = None
_CUDA_ERROR = None
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


def _libcuda():
    """The CUDA driver library, initialised (cached); raises OSError with a reason otherwise."""
    global _CUDA, _CUDA_ERROR
    if _CUDA is not None:
        return _CUDA
    if _CUDA_ERROR is not None:
        raise OSError(_CUDA_ERROR)
    names = ["nvcuda.dll"] if sys.platform.startswith("win") else ["libcuda.so.1", "libcuda.so"]
    found = ctypes.util.find_library("cuda")
    if found:
        names.append(found)
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        _CUDA_ERROR = "no NVIDIA driver (libcuda not found): needs an NVIDIA GPU"
        raise OSError(_CUDA_ERROR)
    rc = lib.cuInit(0)
    if rc != 0:
        _CUDA_ERROR = f"the NVIDIA driver found no usable GPU (cuInit error {rc}): needs an NVIDIA GPU"
        raise OSError(_CUDA_ERROR)
    _CUDA = lib
    return lib


def _check(rc: int, what: str) -> None:
    if rc != 0:
        lib = _CUDA
        text = ctypes.c_char_p()
        if lib is not None and lib.cuGetErrorString(rc, ctypes.byref(text)) == 0 and text.value:
            raise RuntimeError(f"CUDA {what} failed: {text.value.decode()} ({rc})")
        raise RuntimeError(f"CUDA {what} failed with error {rc}")


def cuda_devices() -> list[dict]:
    """[{index, name, compute_capability 'sm89', driver}] of this machine's NVIDIA GPUs ([] if none)."""
    try:
        lib = _libcuda()
    except OSError:
        return []
    count = ctypes.c_int()
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    version = ctypes.c_int()
    lib.cuDriverGetVersion(ctypes.byref(version))
    out = []
    for i in range(count.value):
        dev = ctypes.c_int()
        _check(lib.cuDeviceGet(ctypes.byref(dev), i), "cuDeviceGet")
        major, minor = ctypes.c_int(), ctypes.c_int()
        lib.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, 256, dev)
        out.append({"index": i, "name": name.value.decode(errors="replace"),
                    "compute_capability": f"sm{major.value}{minor.value}",
                    "driver": f"{version.value // 1000}.{(version.value % 1000) // 10}"})
    return out


class CudaContext:
    """The primary context of one device, made current (TensorRT's CUDA runtime shares it)."""

    def __init__(self, device: int = 0):
        lib = _libcuda()
        self.lib = lib
        self.dev = ctypes.c_int()
        _check(lib.cuDeviceGet(ctypes.byref(self.dev), int(device)), "cuDeviceGet")
        self.ctx = ctypes.c_void_p()
        _check(lib.cuDevicePrimaryCtxRetain(ctypes.byref(self.ctx), self.dev), "cuDevicePrimaryCtxRetain")
        self.push()
        self.stream = ctypes.c_void_p()
        _check(lib.cuStreamCreate(ctypes.byref(self.stream), 1), "cuStreamCreate")  # non-blocking

    def push(self) -> None:
        _check(self.lib.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64()
        _check(self.lib.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(max(int(nbytes), 1))), "cuMemAlloc")
        return ptr.value

    def free(self, ptr: int) -> None:
        self.lib.cuMemFree_v2(ctypes.c_uint64(ptr))

    def upload(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        _check(self.lib.cuMemcpyHtoDAsync_v2(ctypes.c_uint64(ptr), array.ctypes.data_as(ctypes.c_void_p),
                                             ctypes.c_size_t(array.nbytes), self.stream), "cuMemcpyHtoDAsync")

    def download(self, array: np.ndarray, ptr: int) -> None:
        _check(self.lib.cuMemcpyDtoHAsync_v2(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_uint64(ptr),
                                             ctypes.c_size_t(array.nbytes), self.stream), "cuMemcpyDtoHAsync")

    def synchronize(self) -> None:
        _check(self.lib.cuStreamSynchronize(self.stream), "cuStreamSynchronize")

    @property
    def stream_handle(self) -> int:
        return int(self.stream.value or 0)


# --------------------------------------------------------------------------------------------
# backend protocol
# --------------------------------------------------------------------------------------------

def flavour_version(flavour: str) -> str | None:
    """Installed version of a TensorRT flavour, or None when it does not import."""
    module = FLAVOURS[flavour][0]
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return str(importlib.import_module(module).__version__)
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return None


def available() -> tuple[bool, str]:
    installed = [f for f in FLAVOURS if importlib.util.find_spec(FLAVOURS[f][0]) is not None]
    if not installed:
        return False, ("neither TensorRT (pip install 'farl-edge[tensorrt]') nor TensorRT for RTX "
                       "(pip install 'farl-edge[tensorrt-rtx]') is installed")
    try:
        _libcuda()
    except OSError as e:
        return False, str(e)
    if not cuda_devices():
        return False, "no NVIDIA GPU found by the driver: needs an NVIDIA GPU"
    return True, ""


class _Logger:
    """TensorRT ILogger subclass factory (the class must derive from the flavour's ILogger)."""

    @staticmethod
    def make(trt, min_severity=None):
        class Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.lines: list[str] = []
                self.min = min_severity if min_severity is not None else trt.ILogger.Severity.WARNING

            def log(self, severity, msg):
                if int(severity) <= int(self.min):
                    self.lines.append(f"[{severity.name}] {msg}")

        return Logger()


class TensorRTRunner:
    def __init__(self, engine_path: Path, manifest: dict | None = None, device: int = 0,
                 allow_version_mismatch: bool = False, **unused):
        if unused:
            raise UserError(f"unknown tensorrt options {sorted(unused)}; known: device, allow_version_mismatch")
        header, engine_bytes = read_engine(engine_path)
        flavour = header["flavour"]
        devices = cuda_devices()
        if not devices:
            raise EngineError("no NVIDIA GPU here: TensorRT engines need one")
        if int(device) >= len(devices):
            raise EngineError(f"device {device} does not exist ({len(devices)} NVIDIA GPU(s))")
        gpu = devices[int(device)]
        check_compatible(header, flavour_version(flavour), gpu["compute_capability"],
                         allow_version_mismatch=allow_version_mismatch)
        trt = importlib.import_module(FLAVOURS[flavour][0])
        self.cuda = CudaContext(int(device))
        self.logger = _Logger.make(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise EngineError(f"{flavour} could not deserialize {engine_path}: " + " | ".join(self.logger.lines[-5:]))
        self.context = self.engine.create_execution_context()
        self.trt = trt
        self.header = header
        self.inputs, self.outputs = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            mode = self.engine.get_tensor_mode(name)
            (self.inputs if mode == trt.TensorIOMode.INPUT else self.outputs).append(name)
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in self.inputs + self.outputs}
        self._buffers: dict[str, tuple[int, int]] = {}  # name → (ptr, nbytes)
        self.info = {"backend": NAME, "flavour": flavour, "version": header.get("version"), "gpu": gpu["name"],
                     "compute_capability": gpu["compute_capability"], "precision": header.get("precision"),
                     "batch": header.get("batch")}

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr = self.cuda.alloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        profile = self.header.get("batch")
        top = profile.get("max") if isinstance(profile, dict) else None
        if top and len(batch) > top:  # beyond the optimisation profile: run in chunks of its maximum
            parts = [self._run(batch[i:i + top]) for i in range(0, len(batch), top)]
            return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.cuda.push()
        name = self.inputs[0]
        x = np.ascontiguousarray(batch, dtype=self.dtypes[name])
        self.context.set_input_shape(name, tuple(x.shape))
        ptr = self._buffer(name, x.nbytes)
        self.cuda.upload(ptr, x)
        self.context.set_tensor_address(name, ptr)
        results = {}
        for out in self.outputs:
            shape = tuple(self.context.get_tensor_shape(out))
            host = np.empty(shape, dtype=self.dtypes[out])
            self.context.set_tensor_address(out, self._buffer(out, host.nbytes))
            results[out] = host
        if not self.context.execute_async_v3(self.cuda.stream_handle):
            raise RuntimeError("TensorRT execution failed: " + " | ".join(self.logger.lines[-5:]))
        for out, host in results.items():
            self.cuda.download(host, self._buffers[out][0])
        self.cuda.synchronize()
        return {k: v.astype(np.float32, copy=False) for k, v in results.items()}

    def __del__(self):
        for ptr, _ in getattr(self, "_buffers", {}).values():
            try:
                self.cuda.free(ptr)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass


def open(model_path: Path, manifest: dict, **options) -> TensorRTRunner:  # noqa: A001 - backend protocol
    return TensorRTRunner(Path(model_path), manifest, **options)
