"""Checks of a space before anything is created (no Ray here): duplicate YAML keys, the keys a variant's method does
not use, every ``transfer`` / ``eval`` value by type and range (each knob's one definition, :mod:`sparsebert.engine.knobs`),
``tune.metric`` against what the stage's trainable reports, the machine (:func:`check_machine`) and the models
(:func:`check_models`). Errors are :class:`SpaceError` naming the file and the key."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from .space import Space, SpaceError, _err, _expand

#: files one of which a local model directory must hold (PyTorch weights: whole or sharded)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")
#: files one of which a local model directory's tokenizer needs (fast, WordPiece, BPE, SentencePiece)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
#: the ticket's proxy losses, on every row of every stage (trainables/common.py ticket_columns)
TICKET_METRICS = ("mlm_loss", "kd_loss", "kd_loss_mse")
#: what the training loop reports (sparsebert/engine/training.py) in find and transfer trials
LOOP_METRICS = ("step", "train_loss", "steps_per_s")
#: what each stage's trainable reports besides (transfer: also every metric of its task, and best/<metric>)
STAGE_METRICS = {
    "find": TICKET_METRICS + LOOP_METRICS + ("actual_sparsity", "imp_round", "train_mlm_loss", "train_kd_loss",
                                             "kd_loss_cos", "mlm_tokens"),
    "evaluate": TICKET_METRICS + ("kd_loss_cos", "mlm_tokens"),
    "transfer": TICKET_METRICS + LOOP_METRICS + ("score", "best_score", "best_step"),
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping holding a key twice (PyYAML lets the last one win silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """The YAML file's content; malformed YAML or a duplicate key is a SpaceError naming the file and the line."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise SpaceError(f"{path.name}: {where}: malformed YAML: {getattr(e, 'problem', e)}") from None


def check_variant_keys(path: Path, variants: list[dict] | None) -> None:
    """A key that a variant's own method does not use is refused, listing that method's keys (the shared ``ticket``
    section may still hold keys for its other variants)."""
    from sparsebert.tickets.finder_base import to_enum
    from sparsebert.tickets.finders import SPECS, all_fields
    from sparsebert.tickets.ticket import Method

    for i, variant in enumerate(variants or []):
        if "method" not in variant:
            continue
        try:
            cls = SPECS[to_enum(Method, variant["method"], "method")]
        except ValueError as e:
            raise _err(path, f"variants[{i}].method", str(e)) from None
        own = {f.name for f in dataclasses.fields(cls)}
        for k in variant:
            if k != "method" and k not in own and k in all_fields():  # an unknown key is named by finder_spec
                raise _err(path, f"variants[{i}].{k}", f"method {variant['method']!r} does not use it; its keys: "
                                                      f"{sorted(own | {'method'})}")


def check_section_values(path: Path, section: str, values: dict, owners: tuple[type, ...],
                         skip: tuple[str, ...] = ()) -> None:
    """Every value (every point of a search dimension) of a config section, by its knob's type and range."""
    from sparsebert.engine.knobs import check_key

    for k, v in values.items():
        owner = next((c for c in owners if k in c.__dataclass_fields__), None)
        if owner is None or k in skip:
            continue
        for point in _expand({k: v}):
            try:
                check_key(owner, k, point[k])
            except ValueError as e:
                raise _err(path, f"{section}.{k}", str(e)) from None


def task_metrics(task: str) -> set[str]:
    """The metric names a transfer trial on ``task`` reports (computed from the task's own metric functions)."""
    import numpy as np

    from sparsebert.transfer.metrics import squad_metrics
    from sparsebert.transfer.tasks import compute_task_metrics, get_task

    spec = get_task(task)
    if spec.kind == "span":
        names = set(squad_metrics({"q": "a"}, [{"id": "q", "answers": {"text": ["a"]}}]))
    else:
        labels = np.array([0.0, 1.0, 0.5]) if spec.kind == "regression" else np.array([0, 1, 0])
        preds = labels if spec.kind == "regression" else np.eye(max(spec.num_labels, 2))[labels]
        names = set(compute_task_metrics(spec, preds, labels))
    splits = [s for s in spec.eval_splits] if len(spec.eval_splits) > 1 else []
    return names | {f"{s}/{n}" for s in splits for n in names}


def check_metric(path: Path, stage: str, metric: Any, transfer: dict) -> None:
    """``tune.metric`` must be something the stage's trainable reports."""
    known = set(STAGE_METRICS[stage])
    if stage == "transfer":
        for point in _expand({"task": transfer.get("task")}):
            try:
                extra = task_metrics(str(point["task"]))
            except ValueError:
                continue  # an unknown task is named by the transfer check
            known |= extra
        known |= {f"best/{m}" for m in known}
    if metric not in known:
        raise _err(path, "tune.metric", f"{metric!r} is not reported by a {stage} trial; valid: {sorted(known)}")


def check_machine(space: Space, gpus: int | None = None, local: bool = True, cpus: int | None = None) -> list[str]:
    """Can this space's trials get the devices they ask for? Checked before Ray starts; returns notes to print.

    ``local``: a Ray started here (not ``--address``) with ``gpus`` GPUs (None: what torch sees). ``device: cuda``
    where there is no GPU is an error (SpaceError naming the key), and so is a per-trial request no node can satisfy
    (``resources.cpu`` above ``cpus`` (None: os.cpu_count()), ``resources.gpu`` above the GPUs here): such a trial
    would wait forever. ``device: auto`` with ``resources.gpu`` on a
    machine without GPUs runs the trials on the CPU (the reservation is dropped, with a note): the same space packs
    trials onto a GPU where there is one and runs on a laptop where there is none."""
    import torch

    if not local:
        return []  # a cluster's workers may have GPUs the driver lacks: Ray schedules, trials resolve their device
    have = gpus if gpus is not None else (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    dev = space.runtime["device"]
    if dev.startswith("cuda") and not (have and torch.cuda.is_available() and torch.cuda.device_count()):
        raise _err(space.path, "device", f"{dev!r} requested but torch sees no CUDA device here "
                                         f"(CUDA build: {torch.version.cuda or 'no, a CPU-only torch'}; "
                                         f"use device: auto to run on the CPU, or --address to join a GPU cluster)")
    if dev == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise _err(space.path, "device", "'mps' requested but this torch has no usable MPS backend")
    n_cpu = cpus or os.cpu_count() or 1
    if space.resources.get("cpu", 1) > n_cpu:
        raise _err(space.path, "resources.cpu", f"{space.resources['cpu']} per trial, but this machine has {n_cpu} "
                                                f"CPU(s): no trial could start (use at most {n_cpu}, or --address)")
    if have and space.resources.get("gpu", 0) > have:
        raise _err(space.path, "resources.gpu", f"{space.resources['gpu']} per trial, but this machine has {have} "
                                                f"GPU(s): no trial could start")
    want = space.resources.get("gpu", 0)
    if want and not have:
        space.resources = {k: v for k, v in space.resources.items() if k != "gpu"}
        return [f"{space.path.name}: resources.gpu: {want} per trial, but this machine has no GPU: trials run on "
                f"the CPU (device: auto)"]
    return []


def check_models(space: Space, local: bool = True) -> list[str]:
    """Does every model the space names exist here? Checked before anything is written; reads configs only, never
    weights. Returns notes to print; a model that is not there is a SpaceError naming its key (``model``,
    ``ticket.model`` or ``variants[i].model``) and what was tried.

    ``embedded-minilm``: its package must be importable. A local directory: it must hold a config.json, a tokenizer
    and weights (:data:`TOKENIZER_FILES`, :data:`WEIGHT_FILES`). A hub name:
    it must be in the local Hugging Face cache (offline, as ``run_search.py`` runs: HF_HUB_OFFLINE=1), or, online,
    its config must load from the Hub. ``local=False`` (``--address``: a cluster, whose nodes have their own caches):
    hub names are not checked (a note says so)."""
    notes: list[str] = []
    done: set[str] = set()
    for key, model in _models(space):
        if model in done:
            continue
        done.add(model)
        problem, note = _model_problem(model, local)
        if problem:
            raise _err(space.path, key, problem)
        if note:
            notes.append(f"{space.path.name}: {key}: {note}")
    return notes


def _models(space: Space) -> list[tuple[str, str]]:
    """(key, model) of every ticket the space can produce; the key says where the model is set."""
    from sparsebert.tickets.finders import FinderSpec

    default = FinderSpec.__dataclass_fields__["model"].default
    out = []
    in_ticket = "model" in (space.raw.get("ticket") or {})
    for i, variant in enumerate(space.variants or [{}]):
        key = (f"variants[{i}].model" if "model" in variant else "ticket.model" if in_ticket else "model")
        for point in _expand({**space.ticket, **variant}):
            out.append((key, str(point.get("model", default))))
    return out


def _hub_offline() -> bool:
    import huggingface_hub.constants as hc

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    return env in {"1", "ON", "YES", "TRUE"} or bool(hc.HF_HUB_OFFLINE)


def _model_problem(model: str, local: bool) -> tuple[str | None, str | None]:
    """(what is wrong, a note) for one model name."""
    from sparsebert.text.embedded import EMBEDDED_MODEL, resolve_model_path

    if model == EMBEDDED_MODEL:
        try:
            resolve_model_path(model)
        except ImportError as e:
            return f"{model!r} is not installed: {e}", None
        return None, None
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            return f"{model}: a directory without config.json (not a Hugging Face model directory)", None
        problem = _config_problem(model)  # first: a config asking for its own code is refused as such
        if problem:
            return problem, None
        for kind, names in (("weights", WEIGHT_FILES), ("tokenizer", TOKENIZER_FILES)):
            if not any((p / n).is_file() for n in names):
                return f"{model}: a directory without {kind} (none of {', '.join(names)})", None
        return None, None
    if p.exists():
        return f"{model}: a file, not a model directory (a local model is a directory with config.json)", None
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model or not model.strip():
        return f"{model!r}: no such directory (a local model is a directory with config.json)", None
    # a hub name ("name" or "org/name")
    if not local:
        return None, (f"{model!r} is a hub name: not checked here (--address: the cluster's nodes load it from "
                      f"their own Hugging Face cache or the Hub)")
    from huggingface_hub.constants import HF_HUB_CACHE
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model, local_files_only=True, trust_remote_code=False)
        return _config_problem(model), None
    except OSError:
        cached = f"not in the Hugging Face cache ({HF_HUB_CACHE})"
    except Exception as e:  # noqa: BLE001  (e.g. ValueError: a config this transformers cannot read)
        return (f"{model!r}: in the Hugging Face cache but its config does not load ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]})"), None
    tried = f"not {EMBEDDED_MODEL}, not a local directory, {cached}"
    if _hub_offline():
        return (f"{model!r} not found: {tried}; HF_HUB_OFFLINE=1 downloads nothing: download it once online "
                f"(HF_HUB_OFFLINE=0) or give a local model directory"), None
    try:
        AutoConfig.from_pretrained(model, trust_remote_code=False)
        return _config_problem(model), None
    except Exception as e:  # noqa: BLE001
        return (f"{model!r} not found: {tried}, not on the Hub ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]})"), None


def _config_problem(model: str) -> str | None:
    """What is wrong with a model's config (never running the model's own code: trust_remote_code=False), or None."""
    from sparsebert.models.loading import load_config

    try:
        load_config(model)
    except Exception as e:  # noqa: BLE001 -- UnsupportedModelError (custom code, unknown type), a bad config.json
        return f"{model}: {' '.join(str(e).split())[:300]}"
    return None
