"""The one training loop. TAMT (MLM/KD/MLM+KD), IMP, MLM-head fitting and fine-tuning all run through
:func:`train`; they differ only in a :class:`Recipe` (trainable parameters, loss, per-step hook, evaluation,
state), never in copies of the loop.

The loop knows nothing of Ray. It reports through a callback ``report(metrics, write_checkpoint)``: the caller
decides whether to persist a checkpoint by calling ``write_checkpoint(directory)``. A run resumed from such a
directory continues exactly (optimizer, scheduler, RNG, method state; the data order is a function of the step).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from sparsebert.engine.checkpoint import (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE, CheckpointError,  # noqa: F401
                                          checkpoint_step, load_checkpoint, load_resume_checkpoint,
                                          read_checkpoint, save_checkpoint, state_sha256)
from sparsebert.engine.knobs import check_knobs, knob
from sparsebert.engine.runtime import CPU, Runtime, prefetch

logger = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], Callable[[Path], None]], None]


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping knobs shared by every method."""

    steps: int = knob(100, "optimizer steps in total", min=0)
    lr: float = knob(2e-5, "peak learning rate", above=0)
    weight_decay: float = knob(0.0, "weight decay (the reference's BertAdam: 0.01)", min=0)
    grad_clip: float = knob(1.0, "max global grad norm (0: off)", min=0)
    warmup_steps: int = knob(0, "linear warm-up steps", min=0)
    schedule: str = knob("linear", "linear (decay to 0) | constant", choices=("linear", "constant"))
    schedule_steps: int = knob(0, "length of the linear LR decay (0: the run; the reference: 2 epochs)", min=0)
    eval_every: int = knob(50, "evaluate (and report) every N steps; 0: only at the end", min=0)
    eval_at_end: bool = knob(True, "the last step's evaluation is a best-dev candidate (false: the reference's)")
    log_every: int = knob(10, "progress line every N steps (0: silent)", min=0)
    seed: int = knob(0, "seed of data order, masking and dropout")
    optimizer: str = knob("adamw", "adamw (ours) | bertadam (the reference's mask training)",
                          choices=("adamw", "bertadam"))

    def __post_init__(self) -> None:
        check_knobs(self)


class Recipe(Protocol):
    """What differs between methods. ``batches(start)`` must yield the same batch for a given step wherever it
    starts (exact resume); batches are CPU tensors (the loop moves them to the method's device, one step ahead), so
    per-step randomness such as MLM masking belongs in ``batches``, not in ``loss``. ``loss`` runs under the
    runtime's autocast; its metrics may be device tensors (read only when reported)."""

    def parameters(self) -> list[nn.Parameter]: ...
    def batches(self, start_step: int) -> Iterator[Any]: ...
    def loss(self, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]: ...
    def after_step(self, step: int) -> bool: ...  # True: rebuild optimizer + schedule (IMP's reset)
    def evaluate(self, step: int) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def schedule_steps(self) -> int | None: ...  # length of one LR schedule (None: the whole run)
    def models(self) -> list[nn.Module]: ...  # put in train() mode during steps
    # runtime: Runtime  -- optional attribute: the device/precision the method's models live on (default CPU fp32)
    # after_backward()  -- optional: called after each backward, before clipping and the optimizer step (fine-tuning
    #                      a baked ticket zeroes its pruned gradients there)
    #: True: ``evaluate(step, track_best=False)`` evaluates without updating the best score (eval_at_end=False needs it)
    keeps_best: bool = False


class RecipeDefaults:
    """The Recipe protocol's no-op parts, for small recipes (benchmarks, tests) that only train."""

    def schedule_steps(self):
        return None

    def after_step(self, step: int) -> bool:
        return False

    def evaluate(self, step: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _schedule(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total - step) / max(1, total - cfg.warmup_steps))

    return factor


def _build_optim(method: Recipe, cfg: TrainConfig, total: int, runtime: Runtime = CPU):
    """AdamW over the method's parameters (fused on CUDA); a method may give param groups (dicts with their own
    ``lr``)."""
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
    if cfg.optimizer == "bertadam":
        from sparsebert.engine.optim import BertAdam

        opt = BertAdam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip)
    else:
        fused = runtime.fused_adamw() and all(p.device.type == "cuda" and p.dtype == torch.float32 for p in params)
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                **({"fused": True} if fused else {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(cfg, total))
    return params, opt, sched


def apply_hyperparameters(opt: torch.optim.Optimizer, sched, own: list[dict[str, Any]]) -> None:
    """After a checkpoint's optimizer and scheduler state are loaded (moments, step, schedule position), put back
    the run's own hyperparameters: ``own`` holds each param group's settings as built from this run's config
    (lr, weight decay, betas, ...). The loaded state carries those of the run that wrote it: under PBT a trial
    resumes from another trial's checkpoint with a mutated config, which must win. The peak rate becomes the
    group's ``initial_lr`` and the scheduler's ``base_lrs``; the current rate is the schedule's factor at the
    restored position times that peak. A resume with an unchanged config sets exactly the values it loaded."""
    if len(own) != len(opt.param_groups):
        raise ValueError(f"checkpoint has {len(opt.param_groups)} param groups, the run {len(own)}")
    for group, mine in zip(opt.param_groups, own):
        peak = mine.get("initial_lr", mine["lr"])
        group.update({k: v for k, v in mine.items() if k != "lr"})
        group["initial_lr"] = peak
    sched.base_lrs = [g["initial_lr"] for g in opt.param_groups]
    lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(opt.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs


def print_progress(prefix: str = "") -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"{prefix}{msg}", file=sys.stderr, flush=True)

    return log


def _floats(d: dict[str, Any]) -> dict[str, Any]:
    return {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in d.items()}


def train(
    method: Recipe,
    cfg: TrainConfig,
    report: Report | None = None,
    resume_from: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run ``cfg.steps`` optimizer steps of ``method``; returns the last reported metrics.

    The method's ``runtime`` (device, precision; CPU fp32 if it has none) decides where batches go and whether the
    loss runs under autocast (fp16: with a gradient scaler). Nothing in a step waits for the device: losses are
    summed on the device and read (one sync) at log and evaluation steps, where a non-finite loss is reported.

    ``report(metrics, write_checkpoint)`` is called every ``eval_every`` steps and at the end, after evaluation;
    ``write_checkpoint(dir)`` saves everything needed for an exact resume into ``dir`` (on the CPU).
    """
    log = log or print_progress()
    if not cfg.eval_at_end and not getattr(method, "keeps_best", False):
        raise ValueError(f"eval_at_end=False needs a recipe that keeps a best score (keeps_best, evaluate's "
                         f"track_best); {type(method).__name__} does not")
    rt: Runtime = getattr(method, "runtime", None) or CPU
    total = method.schedule_steps() or cfg.schedule_steps or cfg.steps
    params, opt, sched = _build_optim(method, cfg, total, rt)
    scaler = rt.grad_scaler()
    step = 0
    resumed_at = 0
    torch.manual_seed(cfg.seed)
    state, source = load_resume_checkpoint(resume_from, log) if resume_from is not None else (None, None)
    if state is not None:  # None after resume_from: its checkpoint was unreadable (warned), a fresh start
        method.load_state_dict(state["method"])
        params, opt, sched = _build_optim(method, cfg, total, rt)  # the method may have changed its parameters
        own = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        apply_hyperparameters(opt, sched, own)
        torch.set_rng_state(state["rng"])
        if rt.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], rt.device)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step = resumed_at = int(state["step"])
        log(f"resumed at step {step}/{cfg.steps} from {source} (state sha256 {state_sha256(state['method'])[:16]}, "
            f"lr {sched.get_last_lr()[0]:.3e})")

    def snapshot() -> dict[str, Any]:
        return {
            "step": step,
            "method": method.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "precision": rt.precision,
        }

    def write_checkpoint(directory: Path) -> None:
        save_checkpoint(Path(directory), snapshot())

    def check_finite(value: torch.Tensor, since: int) -> float:
        v = float(value)
        if not math.isfinite(v):
            raise FloatingPointError(f"non-finite loss {v} in steps {since + 1}..{step} ({rt.describe()})")
        return v

    metrics: dict[str, Any] = {}
    data = prefetch(method.batches(step), rt)
    t0, step0 = time.perf_counter(), step
    running, n_running, since = torch.zeros((), device=rt.device), 0, step
    after_backward = getattr(method, "after_backward", None)
    for m in method.models():
        m.train()
    while step < cfg.steps:
        batch = next(data)
        with rt.autocast():
            loss, step_metrics = method.loss(batch, step)
        loss = loss.float()
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if after_backward is not None:
            after_backward()
        if cfg.grad_clip and cfg.optimizer != "bertadam":  # BertAdam clips each tensor itself
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        sched.step()
        step += 1
        running += loss.detach()
        n_running += 1
        if method.after_step(step):
            params, opt, sched = _build_optim(method, cfg, total, rt)
        if on_step is not None:
            on_step(step)
        at_log = cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps)
        on_cadence = bool(cfg.eval_every and step % cfg.eval_every == 0)
        at_eval = on_cadence or step == cfg.steps
        if at_log or at_eval:
            mean = check_finite(running, since) / max(n_running, 1)
            running.zero_()
            n_running, since = 0, step
        if at_log:
            now = time.perf_counter()
            rate = (step - step0) / max(now - t0, 1e-9)
            eta = (cfg.steps - step) / max(rate, 1e-9)
            log(f"step {step}/{cfg.steps} loss {mean:.4f} "
                f"lr {sched.get_last_lr()[0]:.2e} {rate:.2f} steps/s eta {eta:.0f}s")
        if at_eval:
            metrics = {"step": step, "train_loss": float(loss.detach()), **_floats(step_metrics)}
            metrics.update(method.evaluate(step) if on_cadence or cfg.eval_at_end
                           else method.evaluate(step, track_best=False))
            metrics["steps_per_s"] = (step - step0) / max(time.perf_counter() - t0, 1e-9)
            metrics["lr"] = float(sched.get_last_lr()[0])  # the rate of the next step (PBT may change it)
            metrics["resumed_at"] = resumed_at
            for m in method.models():
                m.train()
            if report is not None:
                report(metrics, write_checkpoint)
    if cfg.steps == 0 or (step == cfg.steps and not metrics):
        on_cadence = step == 0 or bool(cfg.eval_every and step % cfg.eval_every == 0)
        metrics = {"step": step, **(method.evaluate(step) if on_cadence or cfg.eval_at_end
                                    else method.evaluate(step, track_best=False)),
                   "lr": float(sched.get_last_lr()[0]), "resumed_at": resumed_at}
        if report is not None:
            report(metrics, write_checkpoint)
    return metrics
