"""The one training loop. TAMT (MLM/KD/MLM+KD), IMP, MLM-head fitting and fine-tuning all run through
:func:`train`; they differ only in a :class:`Recipe` (trainable parameters, loss, per-step hook, evaluation,
state), never in copies of the loop.

The loop knows nothing of Ray. It reports through a callback ``report(metrics, write_checkpoint)``: the caller
decides whether to persist a checkpoint by calling ``write_checkpoint(directory)``. A run resumed from such a
directory continues exactly (optimizer, scheduler, RNG, method state; the data order is a function of the step).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from sparsebert.engine.fsutil import move_aside
from sparsebert.engine.knobs import check_knobs, knob
from sparsebert.engine.runtime import CPU, Runtime, prefetch, to_cpu

CHECKPOINT_FILE = "trainer.pt"
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


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically to ``directory/trainer.pt`` (moved to the CPU: device-independent). The
    checkpoint it replaces is kept as ``trainer.prev.pt`` (a hard link: no copy, and ``trainer.pt`` is only ever
    replaced by a rename, never written in place), the fallback of :func:`load_resume_checkpoint`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".trainer.")
    os.close(fd)
    try:
        torch.save(to_cpu(state), tmp)
        current = directory / CHECKPOINT_FILE
        if current.is_file() and not current.is_symlink():
            link = directory / f".{PREVIOUS_CHECKPOINT_FILE}.{os.getpid()}"
            try:
                link.unlink(missing_ok=True)
                os.link(current, link)
                os.replace(link, directory / PREVIOUS_CHECKPOINT_FILE)
            except OSError:  # a filesystem without hard links: no previous copy kept
                link.unlink(missing_ok=True)
        os.replace(tmp, current)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be read (truncated, not a torch zip, a pickle weights_only refuses) or is
    not one (a required key missing). The message names the file."""


#: the keys every checkpoint written by :func:`train` holds
CHECKPOINT_KEYS = ("step", "method", "optimizer", "scheduler", "rng")
#: an older good checkpoint kept beside ``trainer.pt``, tried when ``trainer.pt`` is unreadable (where one is kept)
PREVIOUS_CHECKPOINT_FILE = "trainer.prev.pt"


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """The state in the checkpoint file ``path`` (on the CPU), checked to be a complete training checkpoint.
    ``mmap``: map the tensors instead of reading them (cheap; to look at the step only). CheckpointError if
    unreadable or incomplete; FileNotFoundError if absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu", mmap=mmap)
    except Exception as e:  # RuntimeError (PytorchStreamReader: truncated zip), UnpicklingError, EOFError, OSError
        raise CheckpointError(f"{path}: unreadable training checkpoint: {type(e).__name__}: {e}") from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {missing})")
    try:
        int(state["step"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad step {state['step']!r}") from e
    return state


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step a checkpoint file was written at (its tensors are mapped, not read). CheckpointError if
    unreadable, FileNotFoundError if absent."""
    return int(read_checkpoint(path, mmap=True)["step"])


def load_checkpoint(directory: Path) -> dict[str, Any]:
    """A checkpoint's state on the CPU, whatever device wrote it (the method and optimizer move it back).
    FileNotFoundError if absent, CheckpointError (naming the file) if unreadable."""
    return read_checkpoint(Path(directory) / CHECKPOINT_FILE)


def _warn(log: Callable[[str], None] | None, msg: str) -> None:
    logger.warning(msg)
    if log is not None:
        log(f"WARNING: {msg}")


def load_resume_checkpoint(
    directory: str | os.PathLike, log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any] | None, Path | None]:
    """The state to resume from in ``directory`` and the file it came from: ``trainer.pt``, else (when it cannot
    be read) the previous good checkpoint if one is kept there (``trainer.prev.pt``), else ``(None, None)``: start
    from scratch. An unreadable file is moved aside to ``<name>.corrupt-<UTC time>`` (never tried again) with a
    warning naming it, on ``log`` and :mod:`logging`. FileNotFoundError if ``directory`` holds no checkpoint."""
    directory = Path(directory)
    present = [directory / n for n in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE) if (directory / n).is_file()]
    if not present:
        raise FileNotFoundError(f"no training checkpoint at {directory / CHECKPOINT_FILE}")
    for i, path in enumerate(present):
        try:
            state = read_checkpoint(path)
        except CheckpointError as e:
            try:
                moved = f"moved aside to {move_aside(path)}"
            except OSError as oe:
                moved = f"could not be moved aside ({oe})"
            rest = ("trying the previous one, " + str(present[i + 1])) if i + 1 < len(present) \
                else "starting from scratch"
            _warn(log, f"resume checkpoint {path} is unreadable and {moved}; {rest} ({e})")
            continue
        if i:
            _warn(log, f"resuming from the previous checkpoint {path} (step {int(state['step'])})")
        return state, path
    return None, None


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


def state_sha256(state: Any) -> str:
    """sha256 of a (nested) state dict's tensors and values, in key order: a fingerprint of weights (e.g. to show
    which checkpoint a run resumed from)."""
    h = hashlib.sha256()

    def feed(key: str, v: Any) -> None:
        if isinstance(v, dict):
            for k in sorted(v, key=str):
                feed(f"{key}/{k}", v[k])
        elif isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(f"{key}={v!r}".encode())

    feed("", state)
    return h.hexdigest()


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
