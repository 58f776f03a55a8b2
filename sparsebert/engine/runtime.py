"""Where and in what precision a job computes: one device, one autocast dtype, and the moves onto that device.

``RuntimeConfig(device, precision)`` is what a search space (or a caller) asks for; :func:`resolve` turns it into a
:class:`Runtime` once per process:

* ``device``: ``auto`` (the GPU the process can see, e.g. the one Ray made visible to a trial; else CPU) | ``cpu``
  | ``cuda`` | ``cuda:N`` | ``mps``. Asking for a device that is not there raises :class:`DeviceUnavailable`.
* ``precision``: ``auto`` (bf16 on a CUDA GPU that supports it, fp32 otherwise) | ``fp32`` | ``bf16`` | ``fp16``.
  bf16/fp16 run the forward under ``torch.autocast``; fp16 adds a gradient scaler. Parameters (TAMT's scores, the
  weights being fine-tuned), thresholds, masks and optimizer state stay fp32; the masked weight is computed once per
  step in the compute dtype (:mod:`sparsebert.tickets.masking`). fp32 on CUDA lets matmuls use TF32 tensor cores.

Everything that leaves a job (tickets, training checkpoints, metrics) is on the CPU, so a checkpoint written on a
GPU resumes on a CPU and the reverse. Batches reach the device through :func:`prefetch`: pinned host memory and
``non_blocking`` copies issued one step ahead, so the copy of batch k+1 overlaps the compute of step k.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class Precision(str, enum.Enum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Switch(str, enum.Enum):
    """A knob that is on, off, or decided per runtime (``compile``, ``static_shapes``)."""

    AUTO = "auto"
    TRUE = "true"
    FALSE = "false"


def switch(value: Any, name: str) -> Switch:
    """A :class:`Switch` value (YAML gives booleans for true/false); ValueError naming ``name`` otherwise."""
    if isinstance(value, Switch):
        return value
    if isinstance(value, bool):
        return Switch.TRUE if value else Switch.FALSE
    try:
        return Switch(str(value).strip().lower() if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(f"{name}: must be auto, true or false, got {value!r}") from None


DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}


class DeviceUnavailable(ValueError):
    """The requested device does not exist in this process (message names the ``device`` key)."""


@dataclass
class RuntimeConfig:
    """The ``device`` / ``precision`` keys of a search space."""

    device: str = field(default="auto", metadata={
        "help": "auto (the GPU Ray gave the trial, else CPU) | cpu | cuda | cuda:N | mps"})
    precision: Precision = field(default=Precision.AUTO, metadata={
        "help": "auto (bf16 on GPUs that support it, fp32 elsewhere) | fp32 | bf16 | fp16 (with a grad scaler)"})
    compile: Switch = field(default=Switch.AUTO, metadata={
        "help": "auto (on CUDA only, where it was measured to help) | true | false: torch.compile the training step"})

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not DEVICE_RE.match(self.device):
            raise ValueError(f"device: must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        try:
            self.precision = Precision(self.precision)
        except ValueError:
            raise ValueError(f"precision: must be one of {[p.value for p in Precision]}, "
                             f"got {self.precision!r}") from None
        self.compile = switch(self.compile, "compile")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "RuntimeConfig":
        d = dict(d or {})
        unknown = set(d) - {"device", "precision", "compile"}
        if unknown:
            raise ValueError(f"unknown runtime keys {sorted(unknown)}; valid: device, precision, compile")
        return cls(**d)

    def as_dict(self) -> dict[str, str]:
        return {"device": self.device, "precision": self.precision.value, "compile": self.compile.value}


def _visible() -> str:
    return f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}"


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> ``cuda:0`` when CUDA is visible (Ray renumbers a trial's GPUs from 0), else ``mps`` when
    available, else ``cpu``. Explicit devices are checked: a missing one raises :class:`DeviceUnavailable`."""
    RuntimeConfig(device=spec)  # syntax
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DeviceUnavailable(f"device: {spec!r} requested but torch sees no CUDA device ({_visible()}; "
                                    f"CUDA build: {torch.version.cuda or 'no, a CPU-only torch'})")
        if (dev.index or 0) >= n:
            raise DeviceUnavailable(f"device: {spec!r} requested but only {n} CUDA device(s) are visible "
                                    f"({_visible()})")
        return torch.device("cuda", dev.index or 0)
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceUnavailable("device: 'mps' requested but this torch has no usable MPS backend")
    return dev


def resolve_dtype(precision: Precision | str, device: torch.device) -> torch.dtype:
    p = Precision(precision)
    if p is Precision.AUTO:
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return DTYPES[p]


@dataclass(frozen=True)
class Runtime:
    """A resolved device and compute dtype. ``Runtime()`` is CPU fp32 (the default of every core entry point)."""

    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    compile: bool = False  # torch.compile the training step (resolved from the compile Switch)
    compile_backend: str = "inductor"  # torch.compile's backend (tests count recompiles with the quick aot_eager)

    @property
    def static_shapes(self) -> bool:
        """Batches of a few fixed shapes (padded widths, full last batches, a fixed MLM position count): where a
        step is compiled (one graph per shape) or runs on CUDA (see benchmarks/bench_gpu.py --only padding)."""
        return self.compile or self.device.type == "cuda"

    def compiled(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` itself, or (``compile`` on) ``torch.compile`` of it sharing its parameters: static shapes
        (one graph per shape, no dynamic-shape guesses), CUDA graphs on CUDA (``reduce-overhead``)."""
        if not self.compile:
            return module
        mode = "reduce-overhead" if self.device.type == "cuda" and self.compile_backend == "inductor" else None
        return torch.compile(module, backend=self.compile_backend, mode=mode, dynamic=False)

    def mark_step(self) -> None:
        """Tell CUDA-graph trees a new training step begins (the previous step's outputs may be overwritten)."""
        if self.compile and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()

    @property
    def mixed(self) -> bool:
        return self.dtype != torch.float32

    @property
    def precision(self) -> str:
        return {v: k.value for k, v in DTYPES.items()}[self.dtype]

    def describe(self) -> str:
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        return f"{name}, {self.precision}" + (", compiled" if self.compile else "")

    def autocast(self):
        """The forward's context: autocast to the compute dtype, or nothing in fp32."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> "torch.amp.GradScaler | None":
        """fp16 needs loss scaling (bf16 has fp32's range and does not)."""
        if self.dtype != torch.float16:
            return None
        return torch.amp.GradScaler(self.device.type)

    def fused_adamw(self) -> bool:
        return self.device.type == "cuda"

    def to(self, obj: Any, non_blocking: bool = False) -> Any:
        """Move a tensor, or the tensors inside dicts/lists/tuples, to this device."""
        return to_device(obj, self.device, non_blocking)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


CPU = Runtime()


def resolve_runtime(cfg: RuntimeConfig | dict | None = None) -> Runtime:
    """The :class:`Runtime` of this process for ``cfg`` (None: auto device, auto precision)."""
    cfg = cfg if isinstance(cfg, RuntimeConfig) else RuntimeConfig.from_dict(cfg)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.precision, device)
    if device.type == "cuda":
        if dtype == torch.float32:
            torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls
        torch.cuda.set_device(device)
    on = cfg.compile is Switch.TRUE or (cfg.compile is Switch.AUTO and device.type == "cuda")
    return Runtime(device, dtype, on)


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def to_cpu(obj: Any) -> Any:
    """A device-independent copy (detached CPU tensors) of a state tree, for checkpoints and tickets."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def _pin(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.pin_memory()
    if isinstance(obj, dict):
        return {k: _pin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_pin(v) for v in obj)
    return obj


def prefetch(batches: Iterator[Any], runtime: Runtime) -> Iterator[Any]:
    """Yield ``batches`` on ``runtime.device``. On CUDA each batch is pinned and copied with ``non_blocking`` one
    step ahead (the copy of the next batch overlaps this step's compute); on CPU batches pass through."""
    if runtime.device.type != "cuda":
        if runtime.device.type == "cpu":
            yield from batches
        else:
            for b in batches:
                yield runtime.to(b)
        return
    ahead = runtime.to(_pin(next(batches)), non_blocking=True)
    for b in batches:
        nxt = runtime.to(_pin(b), non_blocking=True)
        yield ahead
        ahead = nxt
    yield ahead
