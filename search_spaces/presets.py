"""``preset: reference`` -- every knob at the value the reference implementation's code runs with (llyx97/TAMT,
whose IMP and fine-tuning come from BERT-Tickets). A preset fills keys a space leaves unset; keys the space sets
win. docs/fidelity.md's table lists each knob: the reference's code, the paper's text where it differs, our default.
"""

from __future__ import annotations

import copy
from typing import Any

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "reference": {
        "ticket": {
            "dense_decoder": True,        # its tied MLM decoder keeps the dense embedding (module swap)
            "reset_at_init": False,       # tau = 0.01 until the first reset
            "count_rule": "floor",        # k = int(n * s) at a threshold reset
            "teacher_train_mode": True,   # KD teacher left in train mode (dropout 0.1)
            "optimizer": "bertadam",      # no bias correction, eps 1e-6, per-tensor clipping at 1.0
            "weight_decay": 0.01,         # BertAdam's weight decay, on the scores too
            "prune_first": True,          # IMP prunes before each interval: 0.7 costs 6 intervals
            "rewind": "none",             # IMP's rewind copies the trained weights onto themselves; head never
        },
        "eval": {
            "dense_decoder": True,        # eval_mlm with the dense decoder
            "mlm_eval": {"seed": 42, "reduction": "batch_mean"},           # eval_mlm: seed 42, mean of batch means
            "kd_eval": {"exclude_padding": False, "reduction": "batch_mean"},  # eval_kd: padding in, batch means
        },
        "transfer": {
            "select_split": "mismatched",  # MNLI: its evaluate loop's mismatched accuracy overwrites matched
            "eval_every": "auto",         # 500 steps for MNLI/QQP/QNLI, 50 for the other GLUE tasks, 1000 SQuAD
            "stride_mode": "step",        # SQuAD doc_stride 128 as the step between window starts
            "eval_at_end": False,         # best dev over the periodic evaluations only
        },
    },
}


def apply_preset(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with its ``preset``'s values filled in where the space sets none. Raises KeyError for an unknown
    preset name (the loader turns it into a SpaceError naming the key)."""
    name = raw.get("preset")
    if name is None:
        return raw
    if name not in PRESETS:
        raise KeyError(name)
    out = copy.deepcopy(raw)
    for section, values in PRESETS[name].items():
        if section == "transfer" and out.get("stage", "transfer") != "transfer":
            continue
        if values:
            out[section] = {**values, **(out.get(section) or {})}
    if name == "reference":  # TAMT-KD trains on the reference's pre-generated KD paragraphs
        from sparsebert.text.data import REFERENCE_KD_TEXT

        if out.get("ticket") is None:
            out["ticket"] = {}
        ticket = out["ticket"]
        for variant in out.get("variants") or [ticket]:
            merged = {**ticket, **variant}
            if merged.get("method") == "tamt" and merged.get("objective", "kd") == "kd":
                text = dict(merged.get("text") or {})
                variant["text"] = {**REFERENCE_KD_TEXT, **text}  # a space's own text keys win
    return out
