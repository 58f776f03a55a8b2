"""Tokenizing a loaded task for the model (:func:`tokenize_task`); batches are cut by :mod:`sparsebert.transfer.task_tensors`."""

from __future__ import annotations

from sparsebert.transfer.tasks import TaskSpec, get_task

__all__ = ["tokenize_task"]

def tokenize_task(
    spec: TaskSpec | str,
    dataset_dict,
    tokenizer,
    max_length: int = 128,
    stride: int = 128,
    squad_padding: str | bool = "max_length",
    stride_mode: str = "overlap",
):
    """Tokenize every split for the model (fast tokenizer, batched ``map``; padding left to the collator).

    Classification/regression: ``input_ids``, ``attention_mask`` (``token_type_ids`` when the tokenizer makes
    them) and ``labels`` (int64; float32 for regression); all other columns are removed. Truncation: longest
    first, ``max_length`` tokens. SQuAD: the train split becomes :func:`~sparsebert.transfer.squad.prepare_train_features`
    windows, eval splits :func:`~sparsebert.transfer.squad.prepare_eval_features` windows (with ``example_id`` and
    ``offset_mapping``: remove :data:`~sparsebert.transfer.squad.EVAL_META_COLUMNS` before batching); pass
    ``max_length=384, stride=128`` for SQuAD (SPEC), windows padded to ``max_length`` unless ``squad_padding=False``;
    ``stride_mode`` (SQuAD): ``overlap`` (``stride`` = tokens shared by consecutive windows) or ``step`` (``stride``
    = the reference's ``doc_stride``, the step between window starts).
    """
    import datasets

    from sparsebert.transfer import squad

    spec = get_task(spec)
    out = {}
    for split, ds in dataset_dict.items():
        if spec.kind == "span":
            build = squad.build_train_features if split == spec.train_split else squad.build_eval_features
            out[split] = build(ds, tokenizer, max_length=max_length, stride=stride, padding=squad_padding,
                               stride_mode=stride_mode)
            continue

        def encode(batch, _spec=spec):
            texts = [batch[c] for c in _spec.text_columns]
            enc = tokenizer(*texts, truncation=True, max_length=max_length)
            enc = dict(enc)
            enc["labels"] = batch["label"]
            return enc

        tok = ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"tokenize {spec.name}/{split}")
        tok = tok.cast_column("labels", datasets.Value("float32" if spec.kind == "regression" else "int64"))
        out[split] = tok
    return datasets.DatasetDict(out)
