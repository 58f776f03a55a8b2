"""SQuAD v1.1 features (sliding windows over long contexts) and n-best span post-processing.

The standard Hugging Face question-answering recipe: question first, context second (swapped for a tokenizer that
pads on the left), ``truncation="only_second"``, overflowing windows of ``max_length`` tokens overlapping by
``stride`` tokens (``stride_mode="step"``: windows starting ``stride`` context tokens apart, the legacy
``doc_stride`` of the reference, see :func:`step_overlaps`), character offsets to map token spans back to context
text. Works with any fast tokenizer (BERT WordPiece, RoBERTa byte-level BPE): the CLS index is looked up per
feature, not assumed to be 0.

* :func:`prepare_train_features`: one row per window with ``start_positions``/``end_positions``; a window that does
  not contain the whole gold answer points both at its CLS token.
* :func:`prepare_eval_features`: one row per window with ``example_id`` and ``offset_mapping`` (``None`` for every
  token outside the context, so a predicted span can only land in the context). Drop those two columns
  (:data:`EVAL_META_COLUMNS`) before batching for the model.
* :func:`postprocess_predictions`: per example, the best-scoring valid span (start <= end, at most
  ``max_answer_length`` tokens, both ends in the context) over the ``n_best`` top starts x ``n_best`` top ends of
  every window of that example; score = start logit + end logit; the answer is the context slice between the
  start token's first and the end token's last character.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "EVAL_META_COLUMNS",
    "prepare_train_features",
    "prepare_eval_features",
    "build_train_features",
    "build_eval_features",
    "postprocess_predictions",
]

#: columns of eval features that the model must not see (kept for post-processing)
EVAL_META_COLUMNS = ("example_id", "offset_mapping")


STRIDE_MODES = ("overlap", "step")


def step_overlaps(questions: Sequence[str], tokenizer, max_length: int, step: int) -> list[int]:
    """Per question: the tokenizer ``stride`` (overlap) that makes consecutive windows start ``step`` context
    tokens apart, as the legacy ``squad_convert_example_to_features`` does with ``doc_stride``: a window holds
    ``room = max_length - question tokens - special tokens`` context tokens and the legacy passes
    ``stride = max_seq_length - doc_stride - len(truncated_query) - sequence_pair_added_tokens`` (= room - step)
    to its tokenizer, so window k starts at token ``k * doc_stride`` and a new window is made while the previous
    one did not reach the context's end. Differences left: the legacy first truncates the question to
    ``max_query_length`` (64) tokens (ours keeps it whole) and rejects ``doc_stride >= max_length -
    max_query_length``; here a question so long that room < step gets overlap 0 (windows step by room)."""
    if step < 1:
        raise ValueError(f"stride (step between windows) must be >= 1, got {step}")
    special = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer(list(questions), add_special_tokens=False)["input_ids"]]
    return [max(0, max_length - n - special - step) for n in lengths]


def _tokenize(examples: Mapping[str, Sequence[Any]], tokenizer, max_length: int, stride: int, padding,
              stride_mode: str = "overlap"):
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("SQuAD features need a fast tokenizer (offset mapping, overflowing windows)")
    if stride >= max_length:
        raise ValueError(f"stride ({stride}) must be smaller than max_length ({max_length})")
    if stride_mode not in STRIDE_MODES:
        raise ValueError(f"stride_mode must be one of {STRIDE_MODES}, got {stride_mode!r}")
    pad_on_right = tokenizer.padding_side == "right"
    questions = [q.lstrip() for q in examples["question"]]  # leading spaces waste window room
    contexts = list(examples["context"])
    context_index = 1 if pad_on_right else 0

    def encode(rows: Sequence[int], overlap: int):
        q, c = [questions[i] for i in rows], [contexts[i] for i in rows]
        first, second = (q, c) if pad_on_right else (c, q)
        return tokenizer(
            first,
            second,
            truncation="only_second" if pad_on_right else "only_first",
            max_length=max_length,
            stride=overlap,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=padding,
        )

    if stride_mode == "overlap":
        return encode(range(len(questions)), stride), context_index
    # step: the overlap depends on the question's length; one tokenizer call per distinct overlap, then the
    # windows are put back in example order (windows of one example stay in context order)
    overlaps = step_overlaps(questions, tokenizer, max_length, stride)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, o in enumerate(overlaps):
        groups[o].append(i)
    windows = []  # (example index, encoding, row)
    n_sequences = None
    for overlap, rows in groups.items():
        enc = encode(rows, overlap)
        n_sequences = enc.n_sequences
        for r, local in enumerate(enc["overflow_to_sample_mapping"]):
            windows.append((rows[local], enc, r))
    from transformers import BatchEncoding

    windows.sort(key=lambda w: w[0])  # stable
    keys = list(windows[0][1].keys()) if windows else []
    data = {k: [w[1][k][w[2]] for w in windows] for k in keys if k != "overflow_to_sample_mapping"}
    data["overflow_to_sample_mapping"] = [w[0] for w in windows]
    encodings = [w[1].encodings[w[2]] for w in windows]
    return BatchEncoding(data, encoding=encodings, n_sequences=n_sequences), context_index


def _cls_index(input_ids: Sequence[int], tokenizer) -> int:
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    try:
        return list(input_ids).index(cls_id)
    except ValueError:
        return 0


def prepare_train_features(
    examples: Mapping[str, Sequence[Any]],
    tokenizer,
    max_length: int = 384,
    stride: int = 128,
    padding: str | bool = "max_length",
    stride_mode: str = "overlap",
) -> dict[str, list]:
    """Batched ``Dataset.map`` function: SQuAD examples (id/context/question/answers) -> training windows.

    Uses the first gold answer. ``start_positions``/``end_positions`` are token indices of the answer's first and
    last token inside the window, or the window's CLS index when the answer is not wholly inside it.
    """
    enc, context_index = _tokenize(examples, tokenizer, max_length, stride, padding, stride_mode)
    sample_map = enc.pop("overflow_to_sample_mapping")
    offsets_all = enc.pop("offset_mapping")
    starts: list[int] = []
    ends: list[int] = []
    for i, offsets in enumerate(offsets_all):
        cls = _cls_index(enc["input_ids"][i], tokenizer)
        answers = examples["answers"][sample_map[i]]
        texts, char_starts = list(answers["text"]), list(answers["answer_start"])
        if not texts:
            starts.append(cls)
            ends.append(cls)
            continue
        start_char = int(char_starts[0])
        end_char = start_char + len(texts[0])
        seq_ids = enc.sequence_ids(i)
        ctx_tokens = [k for k, s in enumerate(seq_ids) if s == context_index]
        if not ctx_tokens:  # no room left for the context
            starts.append(cls)
            ends.append(cls)
            continue
        tok_lo, tok_hi = ctx_tokens[0], ctx_tokens[-1]
        if not (offsets[tok_lo][0] <= start_char and offsets[tok_hi][1] >= end_char):
            starts.append(cls)
            ends.append(cls)
            continue
        s = tok_lo
        while s <= tok_hi and offsets[s][0] <= start_char:
            s += 1
        e = tok_hi
        while e >= tok_lo and offsets[e][1] >= end_char:
            e -= 1
        starts.append(s - 1)
        ends.append(e + 1)
    out = dict(enc)
    out["start_positions"] = starts
    out["end_positions"] = ends
    return out


def prepare_eval_features(
    examples: Mapping[str, Sequence[Any]],
    tokenizer,
    max_length: int = 384,
    stride: int = 128,
    padding: str | bool = "max_length",
    stride_mode: str = "overlap",
) -> dict[str, list]:
    """Batched ``Dataset.map`` function: SQuAD examples -> evaluation windows with ``example_id`` and
    ``offset_mapping`` (``None`` outside the context)."""
    enc, context_index = _tokenize(examples, tokenizer, max_length, stride, padding, stride_mode)
    sample_map = enc.pop("overflow_to_sample_mapping")
    example_ids = []
    offset_mapping = []
    for i in range(len(enc["input_ids"])):
        seq_ids = enc.sequence_ids(i)
        example_ids.append(examples["id"][sample_map[i]])
        offset_mapping.append(
            [tuple(o) if seq_ids[k] == context_index else None for k, o in enumerate(enc["offset_mapping"][i])]
        )
    out = dict(enc)
    out["example_id"] = example_ids
    out["offset_mapping"] = offset_mapping
    return out


def _features(dataset, prepare, desc: str, tokenizer, max_length: int, stride: int, padding, stride_mode: str):
    return dataset.map(prepare, batched=True, remove_columns=dataset.column_names, desc=desc,
                       fn_kwargs=dict(tokenizer=tokenizer, max_length=max_length, stride=stride, padding=padding,
                                      stride_mode=stride_mode))


def build_train_features(dataset, tokenizer, max_length: int = 384, stride: int = 128, padding="max_length",
                         stride_mode: str = "overlap"):
    """``datasets.Dataset`` of SQuAD examples -> training features (original columns removed)."""
    return _features(dataset, prepare_train_features, "SQuAD train features", tokenizer, max_length, stride, padding,
                     stride_mode)


def build_eval_features(dataset, tokenizer, max_length: int = 384, stride: int = 128, padding="max_length",
                        stride_mode: str = "overlap"):
    """``datasets.Dataset`` of SQuAD examples -> evaluation features (original columns removed)."""
    return _features(dataset, prepare_eval_features, "SQuAD eval features", tokenizer, max_length, stride, padding,
                     stride_mode)


def _column(rows: Any, name: str) -> list:
    """A column of a ``datasets.Dataset``, a dict of lists, or a list of dicts, as a Python list."""
    if isinstance(rows, Mapping) or hasattr(rows, "column_names"):
        return list(rows[name])
    return [r[name] for r in rows]


def postprocess_predictions(
    examples: Any,
    features: Any,
    start_logits: Any,
    end_logits: Any,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Map window logits back to one answer text per example: ``{example id: answer}``.

    ``examples`` need ``id`` and ``context``; ``features`` need ``example_id`` and ``offset_mapping`` (as made by
    :func:`prepare_eval_features`, in the same order as the logits). Logits: an array (num_features, seq_len) or a
    list of per-feature 1-d arrays (dynamic padding; positions past a feature's offsets are ignored). Ties go to the
    earlier window, then the earlier start, then the earlier end. An example with no valid span gets "".
    """
    if len(start_logits) != len(end_logits):
        raise ValueError("start_logits and end_logits differ in length")
    example_ids = _column(examples, "id")
    contexts = dict(zip(example_ids, _column(examples, "context")))
    feat_example_ids = _column(features, "example_id")
    offsets_all = _column(features, "offset_mapping")
    if len(feat_example_ids) != len(start_logits):
        raise ValueError(f"{len(feat_example_ids)} features but {len(start_logits)} rows of logits")

    by_example: dict[str, list[int]] = defaultdict(list)
    for fi, eid in enumerate(feat_example_ids):
        by_example[eid].append(fi)

    answers: dict[str, str] = {}
    for eid in example_ids:
        context = contexts[eid]
        best_score = -np.inf
        best: tuple[int, int] | None = None
        for fi in by_example.get(eid, ()):
            offsets = offsets_all[fi]
            n = len(offsets)
            sl = np.asarray(start_logits[fi], dtype=np.float64)[:n]
            el = np.asarray(end_logits[fi], dtype=np.float64)[:n]
            in_ctx = np.array([o is not None and len(o) >= 2 for o in offsets[: len(sl)]], dtype=bool)
            k = min(n_best, len(sl))
            # top-k indices, highest first; stable so equal logits keep position order
            s_idx = np.argsort(-sl, kind="stable")[:k]
            e_idx = np.argsort(-el, kind="stable")[:k]
            length = e_idx[None, :] - s_idx[:, None] + 1
            valid = in_ctx[s_idx][:, None] & in_ctx[e_idx][None, :] & (length >= 1) & (length <= max_answer_length)
            if not valid.any():
                continue
            scores = np.where(valid, sl[s_idx][:, None] + el[e_idx][None, :], -np.inf)
            flat = int(np.argmax(scores))
            score = scores.flat[flat]
            if score > best_score:
                best_score = score
                s, e = int(s_idx[flat // k]), int(e_idx[flat % k])
                best = (offsets[s][0], offsets[e][1])
        answers[eid] = context[best[0] : best[1]] if best is not None else ""
    return answers
