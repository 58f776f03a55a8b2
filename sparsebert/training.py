"""The one training loop. TAMT (MLM/KD/MLM+KD), IMP, MLM-head fitting and fine-tuning all run through
:func:`train`; they differ only in a :class:`Method` (trainable parameters, loss, per-step hook, evaluation,
state), never in copies of the loop.

The loop knows nothing of Ray. It reports through a callback ``report(metrics, write_checkpoint)``: the caller
decides whether to persist a checkpoint by calling ``write_checkpoint(directory)``. A run resumed from such a
directory continues exactly (optimizer, scheduler, RNG, method state; the data order is a function of the step).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

CHECKPOINT_FILE = "trainer.pt"

Report = Callable[[dict[str, Any], Callable[[Path], None]], None]


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping knobs shared by every method."""

    steps: int = field(default=100, metadata={"help": "optimizer steps in total"})
    lr: float = field(default=2e-5, metadata={"help": "peak learning rate (AdamW)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "max global grad norm (0 = off)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    schedule: str = field(default="linear", metadata={"help": "linear (decay to 0) | constant"})
    schedule_steps: int = field(
        default=0, metadata={"help": "length of the linear decay (0 = steps; the reference decays over 2 epochs)"}
    )
    eval_every: int = field(default=50, metadata={"help": "evaluate (and report) every E steps; 0 = only at end"})
    log_every: int = field(default=10, metadata={"help": "progress line every N steps (0 = silent)"})
    seed: int = field(default=0, metadata={"help": "seed of data order, masking and dropout"})

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.schedule not in ("linear", "constant"):
            raise ValueError(f"schedule must be 'linear' or 'constant', got {self.schedule!r}")


class Method(Protocol):
    """What differs between methods. ``batches(start)`` must yield the same batch for a given step wherever it
    starts (exact resume)."""

    def parameters(self) -> list[nn.Parameter]: ...
    def batches(self, start_step: int) -> Iterator[Any]: ...
    def loss(self, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]: ...
    def after_step(self, step: int) -> bool: ...  # True: rebuild optimizer + schedule (IMP's reset)
    def evaluate(self, step: int) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def schedule_steps(self) -> int | None: ...  # length of one LR schedule (None: the whole run)
    def models(self) -> list[nn.Module]: ...  # put in train() mode during steps


def _schedule(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))

    return factor


def _build_optim(method: Method, cfg: TrainConfig, total: int):
    """AdamW over the method's parameters; a method may give param groups (dicts with their own ``lr``)."""
    groups = list(method.parameters())
    if groups and isinstance(groups[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
        groups = [g for g in groups if g["params"]]
        params = [p for g in groups for p in g["params"]]
    else:
        params = [p for p in groups if p.requires_grad]
        groups = params
    if not params:
        raise ValueError("the method has no trainable parameters")
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, total))
    return params, opt, sched


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically to ``directory/trainer.pt`` (tensors and plain types only)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".trainer.")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, directory / CHECKPOINT_FILE)


def load_checkpoint(directory: Path) -> dict[str, Any]:
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    return torch.load(path, weights_only=True)


def print_progress(prefix: str = "") -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"{prefix}{msg}", file=sys.stderr, flush=True)

    return log


def train(
    method: Method,
    cfg: TrainConfig,
    report: Report | None = None,
    resume_from: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``cfg.steps`` optimizer steps of ``method``; returns the last reported metrics.

    ``report(metrics, write_checkpoint)`` is called every ``eval_every`` steps and at the end, after evaluation;
    ``write_checkpoint(dir)`` saves everything needed for an exact resume into ``dir``.
    """
    log = log or print_progress()
    total = method.schedule_steps() or cfg.schedule_steps or cfg.steps
    params, opt, sched = _build_optim(method, cfg, total)
    step = 0
    resumed_at = 0
    torch.manual_seed(cfg.seed)
    if resume_from is not None:
        state = load_checkpoint(Path(resume_from))
        method.load_state_dict(state["method"])
        params, opt, sched = _build_optim(method, cfg, total)  # the method may have changed its parameters
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step = resumed_at = int(state["step"])
        log(f"resumed at step {step}/{cfg.steps} from {resume_from}")

    def snapshot() -> dict[str, Any]:
        return {
            "step": step,
            "method": method.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": torch.get_rng_state(),
        }

    def write_checkpoint(directory: Path) -> None:
        save_checkpoint(Path(directory), snapshot())

    metrics: dict[str, Any] = {}
    data = method.batches(step)
    t0, step0 = time.perf_counter(), step
    running, n_running = 0.0, 0
    for m in method.models():
        m.train()
    while step < cfg.steps:
        batch = next(data)
        loss, step_metrics = method.loss(batch, step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        step += 1
        running += float(loss.detach())
        n_running += 1
        if method.after_step(step):
            params, opt, sched = _build_optim(method, cfg, total)
        if on_step is not None:
            on_step(step)
        if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
            now = time.perf_counter()
            rate = (step - step0) / max(now - t0, 1e-9)
            eta = (cfg.steps - step) / max(rate, 1e-9)
            log(f"step {step}/{cfg.steps} loss {running / n_running:.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {rate:.2f} steps/s eta {eta:.0f}s")
            running, n_running = 0.0, 0
        at_eval = cfg.eval_every and step % cfg.eval_every == 0
        if at_eval or step == cfg.steps:
            metrics = {"step": step, "train_loss": float(loss.detach()), **step_metrics}
            metrics.update(method.evaluate(step))
            metrics["steps_per_s"] = (step - step0) / max(time.perf_counter() - t0, 1e-9)
            metrics["resumed_at"] = resumed_at
            for m in method.models():
                m.train()
            if report is not None:
                report(metrics, write_checkpoint)
    if cfg.steps == 0 or (step == cfg.steps and not metrics):
        metrics = {"step": step, **method.evaluate(step)}
        if report is not None:
            report(metrics, write_checkpoint)
    return metrics


def step_generator(seed: int, step: int) -> torch.Generator:
    """A generator determined by (seed, step): per-step randomness (MLM masking) that resumes exactly."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2**63 - 1))


def copy_dir_atomic(src: Path, dst: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
