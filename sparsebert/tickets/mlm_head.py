"""Fitting an MLM head for checkpoints that ship none (all-MiniLM-L6-v2, the embedded model).

The encoder stays frozen (run under ``no_grad``); the head's transform and bias train with the MLM loss; the
decoder is the word-embedding matrix. The fitted head is cached (safetensors) and used as "the original head" for
every ticket of that model, so MLM losses of different tickets are comparable.

A fit is a function of its inputs (model, text, :class:`HeadFitConfig`): the head it starts from is drawn from the
config's seed (:func:`init_head`), not from torch's global RNG when the model was loaded (which depends on whatever
ran before in the process: two fits differed by up to 0.12 in the transform's weight), and the batches and masking
are functions of (seed, step). The same inputs give the same head bit for bit on one machine (same torch, same
thread count). :func:`head_sha256` names a head; every ticket and result row records the one its MLM loss used.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from sparsebert.text.batching import pretraining_batches
from sparsebert.models.loading import PretrainingModel, load_head, model_path, save_head
from sparsebert.models.objectives import mlm_loss_at
from sparsebert.engine.runtime import CPU, Runtime, to_cpu
from sparsebert.tickets.ticket import config_hash
from sparsebert.engine.training import TrainConfig, state_sha256, train

#: the fit's version in the cache key: 2 = seeded head init and the hashed (seed, epoch) data order (issue 20);
#: heads cached by version 1 (unseeded init) are not reused
HEAD_FIT_VERSION = 2


@dataclass
class HeadFitConfig:
    steps: int = field(default=100, metadata={"help": "optimizer steps (NOTES: loss 11.0 -> 7.4 at 100, 7.2 at 200)"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    batch_size: int = field(default=16, metadata={"help": "sequences per step"})
    seed: int = field(default=0, metadata={"help": "data order and masking seed"})


class HeadFit:
    def __init__(self, model: PretrainingModel, tokenizer, blocks: torch.Tensor, cfg: HeadFitConfig,
                 runtime: Runtime = CPU):
        self.model, self.tokenizer, self.blocks, self.cfg, self.runtime = model, tokenizer, blocks, cfg, runtime
        model.to(runtime.device)
        for p in model.parameters():
            p.requires_grad_(False)
        self.params = model.head_params()
        for p in self.params:
            p.requires_grad_(True)

    def parameters(self):
        return self.params

    def models(self):
        return [self.model.head]  # the encoder stays in eval mode: it is frozen and run without grad

    def schedule_steps(self):
        return None

    def batches(self, start_step: int) -> Iterator[dict[str, torch.Tensor]]:
        return pretraining_batches(self.blocks, self.cfg.batch_size, self.cfg.seed, start_step, self.tokenizer)

    def loss(self, batch, step):
        with torch.no_grad():
            self.model.base.eval()
            hidden = self.model(batch["input_ids"]).last_hidden_state
        return mlm_loss_at(self.model, hidden, batch["positions"], batch["targets"]), {}

    def after_step(self, step):
        return False

    def evaluate(self, step):
        return {}

    def state_dict(self):
        return to_cpu(self.model.head_state())

    def load_state_dict(self, state):
        self.model.load_head_state(state, "MLM-head checkpoint")


def init_head(model: PretrainingModel, seed: int) -> None:
    """Re-draw the head's own tensors from ``seed`` alone, as transformers initialises a missing BERT/RoBERTa head
    (linear weights ~ N(0, initializer_range), biases 0, LayerNorm 1 / 0); the decoder (the word embedding) is
    left alone. Modules in their registration order, one CPU generator: the same on every device."""
    g = torch.Generator().manual_seed(int(seed))
    std = float(getattr(model.config, "initializer_range", 0.02))
    with torch.no_grad():
        for name, mod in model.head.named_modules():
            if "decoder" in name:
                continue
            if isinstance(mod, nn.Linear):
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * std)
                if mod.bias is not None:
                    mod.bias.zero_()
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.fill_(1.0)
                mod.bias.zero_()
        model._bias().zero_()


def head_sha256(model: PretrainingModel) -> str:
    """sha256 of the model's MLM head (its :meth:`~sparsebert.models.loading.PretrainingModel.head_state`: names, dtypes,
    shapes and bytes): which head an MLM loss was measured with."""
    return state_sha256(model.head_state())


def head_cache_path(model_name: str, data_id: str, cfg: HeadFitConfig) -> Path:
    from sparsebert.engine.fsutil import cache_root

    key = config_hash({"model": str(Path(model_path(model_name)).resolve()) if Path(model_path(model_name)).exists()
                       else model_name, "data": data_id, **cfg.__dict__, "fit_version": HEAD_FIT_VERSION})
    return cache_root() / "mlm_heads" / f"{key}.safetensors"


def load_or_fit_head(
    model: PretrainingModel, model_name: str, tokenizer, blocks: torch.Tensor, data_id: str,
    cfg: HeadFitConfig | None = None, log=None, runtime: Runtime = CPU,
) -> Path | None:
    """Give ``model`` a usable MLM head: nothing to do if the checkpoint has one (returns None); otherwise load the
    cached fitted head or fit it now (and cache it). Returns the head file."""
    if model.head_pretrained:
        return None
    cfg = cfg or HeadFitConfig()
    path = head_cache_path(model_name, data_id, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:  # concurrent trials wait for one fit instead of repeating it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            _fit_and_save(model, model_name, tokenizer, blocks, cfg, path, log, runtime)
    load_head(model, path)
    return path


def _fit_and_save(model, model_name, tokenizer, blocks, cfg, path, log, runtime: Runtime = CPU) -> None:
    (log or print)(f"fitting an MLM head for {model_name} ({cfg.steps} steps, encoder frozen, "
                   f"{runtime.describe()}) -> {path}")
    init_head(model, cfg.seed)  # not the random head transformers drew from the global RNG at load time
    train(HeadFit(model, tokenizer, blocks, cfg, runtime), TrainConfig(steps=cfg.steps, lr=cfg.lr, eval_every=0,
                                                               log_every=max(cfg.steps // 5, 1), seed=cfg.seed))
    save_head(model, path)
    for p in model.parameters():
        p.requires_grad_(False)
