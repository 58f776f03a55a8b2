"""``--smoke``: any space shrunk to a tiny model, few steps, small data and at most two values per axis, so that
it runs end to end in seconds on a CPU."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .space import _is_dim



SMOKE_TICKET = {"steps": 4, "batch_size": 4, "imp_interval": 2, "reset_every": 2}
SMOKE_TRANSFER = {"max_steps": 4, "subset_size": 32, "max_eval_examples": 32, "batch_size": 8, "max_length": 64,
                  "eval_every": 2}
SMOKE_PBT = {"num_samples": 2, "max_steps": 12, "perturbation_interval": 2}


def smoke_model_dir() -> Path:
    """A tiny 2-layer BERT with the embedded tokenizer, built once into the cache."""
    from sparsebert.engine.fsutil import cache_root
    from sparsebert.models.loading import tiny_model_dir

    path = cache_root() / "smoke-model"
    if not (path / "tokenizer_config.json").is_file():
        tiny_model_dir(path, "bert", hidden=32, layers=2, heads=2, intermediate=64, tokenizer_from="embedded-minilm")
    return path


def _cut(v: Any) -> Any:
    """At most two values of a grid/choice (first and last)."""
    if _is_dim(v):
        (kind, arg), = v.items()
        if kind in ("grid", "choice") and len(arg) > 2:
            return {kind: [arg[0], arg[-1]]}
    return v


def _spread(items: list, n: int) -> list:
    """At most n items, spread over the list (keeps first and last: e.g. the steps study's 1k and IMP's 2792)."""
    if len(items) <= n:
        return items
    idx = sorted({round(i * (len(items) - 1) / (n - 1)) for i in range(n)})
    return [items[i] for i in idx]


def shrink(raw: dict[str, Any]) -> dict[str, Any]:
    """``--smoke``: a tiny model, few steps, small data, at most 2 values per axis, the embedded task/text."""
    raw = copy.deepcopy(raw)
    raw["model"] = str(smoke_model_dir())
    ticket = {k: _cut(v) for k, v in (raw.get("ticket") or {}).items()}
    ticket.pop("model", None)
    for k, v in SMOKE_TICKET.items():
        if k in ticket or k in ("steps", "batch_size", "imp_interval"):
            ticket[k] = v
    ticket["text"] = {"source": "embedded", "block_size": 32, "max_blocks": 128}
    if ticket.get("save_at"):  # snapshots of one short run (steps is 4 in a smoke run)
        ticket["save_at"] = [2, 4]
    raw["ticket"] = ticket
    if raw.get("variants"):  # smoke budgets win over the variants' own (e.g. IMP's 2792-step interval)
        raw["variants"] = [{k: (SMOKE_TICKET[k] if k in SMOKE_TICKET else v) for k, v in var.items() if k != "model"}
                           for var in raw["variants"]]
        raw["variants"] = _spread(raw["variants"], 4)
    if raw.get("transfer"):
        tr = {k: _cut(v) for k, v in raw["transfer"].items()}
        for k, v in tr.items():  # values set per task: the smoke task (polarity) takes the default, else the first
            if isinstance(v, dict) and "per_task" in v and "default" not in v and isinstance(v["per_task"], dict):
                tr[k] = {**v, "default": next(iter(v["per_task"].values()), None)}
        tr.update(SMOKE_TRANSFER)
        tr["task"] = "polarity"  # the embedded task: paper tasks need hub/local data a smoke run may not have
        tr.pop("data_dir", None)
        tr.pop("epochs", None)
        raw["transfer"] = tr
    raw["eval"] = {**(raw.get("eval") or {}), "eval_blocks": 8, "head_steps": 2}
    t = dict(raw.get("tune") or {})
    searcher_type = t.get("searcher") if isinstance(t.get("searcher"), str) else (t.get("searcher") or {}).get("type")
    t["num_samples"] = 2 if searcher_type == "optuna" else 1
    sched = t.get("scheduler")
    if isinstance(sched, dict) and sched.get("type") == "asha":
        # a smoke transfer trial reports twice (4 steps, eval every 2); a smoke TAMT trial 5 times (every step of 4,
        # then its ticket): a find trial cut at max_t makes no ticket
        t["scheduler"] = {**sched, "grace_period": 1, "max_t": 2 if raw.get("stage", "transfer") == "transfer" else 5}
    if isinstance(sched, dict) and sched.get("type") == "pbt":
        # a population that perturbs: 2 trials (the lower one clones the upper one), 6 reports each (12 steps,
        # eval every 2) against an interval of 2 reports
        t["num_samples"] = SMOKE_PBT["num_samples"]
        t["scheduler"] = {**sched, "perturbation_interval": SMOKE_PBT["perturbation_interval"]}
        if raw.get("transfer"):
            raw["transfer"]["max_steps"] = SMOKE_PBT["max_steps"]
    raw["tune"] = t
    gpu = (raw.get("resources") or {}).get("gpu", 0)
    import torch

    if gpu and torch.cuda.is_available():  # a smoke run on a GPU machine still uses (a slice of) it
        raw["resources"] = {"cpu": 1, "gpu": min(float(gpu), 1.0)}
    else:
        raw["resources"] = {"cpu": 1}
        if str(raw.get("device", "auto")).startswith("cuda"):
            raw["device"] = "auto"
    return raw
