"""Which weights of a model are prunable, by fully-qualified parameter name (SPEC.md "Prunable weights").

Per encoder layer: attention.self.{query,key,value}, attention.output.dense, intermediate.dense, output.dense;
plus pooler.dense and embeddings.word_embeddings. Never: biases, LayerNorms, position/token-type embeddings,
the MLM head, task heads. BERT-base has 6 x 12 + 2 = 74 prunable matrices; RoBERTa the same under ``roberta.``.
"""

from __future__ import annotations


from torch import nn

#: architecture (``config.model_type``) -> name of the base-model attribute inside task models
SUPPORTED_MODEL_TYPES = {"bert": "bert", "roberta": "roberta"}

_LAYER_SUFFIXES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


class UnsupportedModelError(ValueError):
    """The model's architecture has no prunable-weight registry."""


def _base_prefix(model: nn.Module) -> str:
    """'' for a bare BertModel, 'bert.' / 'roberta.' for a task model wrapping one."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"unknown model type {model_type!r}: supported are {sorted(SUPPORTED_MODEL_TYPES)}"
        )
    attr = SUPPORTED_MODEL_TYPES[model_type]
    return f"{attr}." if hasattr(model, attr) else ""


def prunable_module_names(model: nn.Module) -> list[str]:
    """Fully-qualified names of the modules whose ``weight`` is prunable, in model order."""
    prefix = _base_prefix(model)
    base = getattr(model, prefix[:-1]) if prefix else model
    names = [f"{prefix}embeddings.word_embeddings"]
    for i in range(base.config.num_hidden_layers):
        names += [f"{prefix}encoder.layer.{i}.{s}" for s in _LAYER_SUFFIXES]
    if getattr(base, "pooler", None) is not None:
        names.append(f"{prefix}pooler.dense")
    return names


def prunable_weight_names(model: nn.Module) -> list[str]:
    """Fully-qualified names of the prunable weights (``<module>.weight``), the keys of every mask."""
    return [f"{m}.weight" for m in prunable_module_names(model)]


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Base-relative weight name (the mask key, e.g. ``encoder.layer.0.output.dense.weight``) -> module."""
    prefix = _base_prefix(model)
    return {
        f"{m[len(prefix):]}.weight": model.get_submodule(m) for m in prunable_module_names(model)
    }


def weight_of(module: nn.Module):
    """The stored (unmasked) weight of a module, whether or not a mask parametrization is registered on it."""
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return module.parametrizations.weight.original
    return module.weight


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Mask key -> stored weight tensor (the pre-trained values, unmasked)."""
    return {k: weight_of(m) for k, m in prunable_modules(model).items()}
