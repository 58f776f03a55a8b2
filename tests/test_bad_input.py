"""Bad input is refused before anything is created (issue 15): a model that is not there, damaged or missing GLUE
files, IMP at sparsity 0, an empty variants list. Exit code 2, one line naming the file and the key, nothing under
--storage. No Ray: the executor is replaced by a stub that only records that the run got that far."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

import run_search
from conftest import REPO
from search import experiment
from sparsebert.tickets.finders import finder_spec
from sparsebert.transfer.task_data import load_task

MISSING_HUB = "no-such-org/no-such-bert"


@pytest.fixture
def executed(monkeypatch):
    """Replaces the executor: a run that passes every check lands here (and computes nothing)."""
    calls = []
    monkeypatch.setattr(experiment, "_execute", lambda space, *a, **k: calls.append(space) or run_search.EXIT_OK)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SPARSEBERT_DATA_DIR", raising=False)
    return calls


def _space(tmp_path: Path, **changes) -> Path:
    d = yaml.safe_load((REPO / "search_spaces/demo.yaml").read_text())
    d.update(changes)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def _run(tmp_path: Path, space: Path, *extra: str) -> tuple[int, Path]:
    storage = tmp_path / "storage"
    return run_search.main(["run", str(space), "--storage", str(storage), *extra]), storage


def _refused(capsys, code: int, storage: Path, *parts: str) -> str:
    """Exit 2, one line on stderr naming the space file and containing every part, nothing written."""
    err = capsys.readouterr().err
    assert code == run_search.EXIT_BAD_INPUT, err
    assert err.startswith("error: bad.yaml: ") and len(err.strip().splitlines()) == 1, err
    for part in parts:
        assert part in err, err
    assert not storage.exists()
    return err


# ---------------------------------------------------------------------------------------------------- 1. the model

def test_a_hub_model_not_in_the_cache_offline_is_refused_and_a_rerun_under_the_name_works(tmp_path, capsys, executed):
    code, storage = _run(tmp_path, _space(tmp_path, model=MISSING_HUB))
    _refused(capsys, code, storage, f"bad.yaml: model: '{MISSING_HUB}' not found", "not a local directory",
             "not in the Hugging Face cache", "HF_HUB_OFFLINE=1")
    assert not executed
    # the experiment was not created, so the same name runs once the model is fixed
    code, storage = _run(tmp_path, _space(tmp_path, model="embedded-minilm"))
    assert code == 0 and len(executed) == 1 and (storage / "bad" / "space.json").is_file()


def test_a_missing_local_model_dir_is_refused(tmp_path, capsys, executed):
    missing = tmp_path / "models" / "nope"
    code, storage = _run(tmp_path, _space(tmp_path, model=str(missing)))
    _refused(capsys, code, storage, f"bad.yaml: model: '{missing}': no such directory")
    (tmp_path / "empty_model").mkdir()
    code, storage = _run(tmp_path, _space(tmp_path, model=str(tmp_path / "empty_model")))
    _refused(capsys, code, storage, "bad.yaml: model: ", "empty_model: a directory without config.json")
    assert not executed


def test_the_key_named_is_where_the_model_is_set(tmp_path, capsys, executed):
    variants = [{"method": "omp"}, {"method": "omp", "model": MISSING_HUB}]
    code, storage = _run(tmp_path, _space(tmp_path, variants=variants))
    _refused(capsys, code, storage, f"bad.yaml: variants[1].model: '{MISSING_HUB}' not found")
    ticket = {**yaml.safe_load((REPO / "search_spaces/demo.yaml").read_text())["ticket"], "model": MISSING_HUB}
    code, storage = _run(tmp_path, _space(tmp_path, ticket=ticket))
    _refused(capsys, code, storage, f"bad.yaml: ticket.model: '{MISSING_HUB}' not found")


def _fake_hub_cache(root: Path, repo: str) -> Path:
    """The Hugging Face cache layout holding only a config.json of ``repo`` (what an earlier download leaves)."""
    from transformers import BertConfig

    sha = "0" * 40
    d = root / f"models--{repo.replace('/', '--')}"
    (d / "refs").mkdir(parents=True)
    (d / "refs" / "main").write_text(sha)
    snap = d / "snapshots" / sha
    snap.mkdir(parents=True)
    BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64).to_json_file(
        snap / "config.json")
    return root


def test_models_that_are_there_pass(tmp_path, capsys, executed, monkeypatch):
    import huggingface_hub.constants

    local = tmp_path / "local_model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (local / "model.safetensors").write_bytes(b"")  # a model dir needs weights and a tokenizer too (issue 20)
    (local / "vocab.txt").write_text("[PAD]\n")
    cache = _fake_hub_cache(tmp_path / "hf", "acme/cached-bert")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    for i, model in enumerate(("embedded-minilm", str(local), "acme/cached-bert")):
        code, _ = _run(tmp_path, _space(tmp_path, model=model), "--name", f"ok{i}")
        assert code == 0, capsys.readouterr().err
    assert len(executed) == 3


def test_with_address_hub_names_are_not_checked_and_a_note_says_so(tmp_path, capsys, executed):
    code, _ = _run(tmp_path, _space(tmp_path, model=MISSING_HUB), "--address", "127.0.0.1:1")
    out = capsys.readouterr().out
    assert code == 0 and len(executed) == 1
    assert f"note: bad.yaml: model: '{MISSING_HUB}' is a hub name: not checked here (--address" in out


def test_smoke_replaces_the_model_and_dry_run_only_notes(tmp_path, capsys, executed):
    code, _ = _run(tmp_path, _space(tmp_path, model=MISSING_HUB), "--smoke")
    assert code == 0 and len(executed) == 1, capsys.readouterr().err
    code, storage = _run(tmp_path, _space(tmp_path, model=MISSING_HUB), "--dry-run", "--name", "dry")
    out = capsys.readouterr().out
    assert code == 0 and f"note (a real run stops here): bad.yaml: model: '{MISSING_HUB}' not found" in out
    assert not (storage / "dry").exists()


# ---------------------------------------------------------------------------------------------------- 2. GLUE files

@pytest.fixture
def rte(shared_data, tmp_path) -> Path:
    """A writable copy of the real GLUE RTE files: <tmp>/glue/RTE/{train,dev}.tsv."""
    d = tmp_path / "glue" / "RTE"
    d.mkdir(parents=True)
    for f in ("train.tsv", "dev.tsv"):
        shutil.copyfile(shared_data / "glue" / "RTE" / f, d / f)
    return d


def _not_utf8_at(path: Path, offset: int, bom: bool = False) -> int:
    """Damage a byte (0xff is never UTF-8); return the 1-based line it is on."""
    data = bytearray(path.read_bytes())
    data[offset] = 0xFF
    if bom:
        data[:0] = b"\xef\xbb\xbf"
        offset += 3
    path.write_bytes(bytes(data))
    return bytes(data[:offset]).count(b"\n") + 1


def test_a_header_only_glue_tsv_names_the_file(rte):
    dev = rte / "dev.tsv"
    dev.write_text(dev.read_text().split("\n", 1)[0] + "\n")
    with pytest.raises(ValueError, match="no data rows: line 1 is the header") as e:
        load_task("rte", rte.parent)
    from sparsebert.transfer.tasks import TaskDataError

    assert str(dev) in str(e.value) and isinstance(e.value, TaskDataError)
    dev.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        load_task("rte", rte.parent, splits="validation")


def test_a_non_utf8_glue_tsv_names_the_file_and_the_line(rte):
    dev = rte / "dev.tsv"
    line = _not_utf8_at(dev, 23100)
    assert line == 70
    msg = f"{dev}: line {line}: not UTF-8 (byte 0xff at file offset 23100"
    with pytest.raises(ValueError) as e:
        load_task("rte", rte.parent)
    assert msg in str(e.value)
    from sparsebert.transfer.task_data import check_task_files

    with pytest.raises(ValueError) as e:
        check_task_files("rte", rte.parent)  # the streaming check before a run finds the same byte
    assert msg in str(e.value)
    train = rte / "train.tsv"
    line = _not_utf8_at(train, 500_000, bom=True)  # a BOM shifts offsets, not lines
    with pytest.raises(ValueError, match=rf"{train}: line {line}: not UTF-8 \(byte 0xff at file offset 500003"):
        load_task("rte", rte.parent, splits="train")


def test_a_missing_dev_file_is_refused_before_anything_is_created(rte, tmp_path, capsys, executed):
    (rte / "dev.tsv").unlink()
    code, storage = _run(tmp_path, _space(tmp_path, transfer={"task": "rte", "data_dir": str(rte.parent)}))
    _refused(capsys, code, storage, "bad.yaml: transfer.data_dir: rte: validation split not found",
             str(rte / "dev.tsv"))
    assert not executed


def test_a_missing_train_file_in_the_shared_glue_is_refused(shared_data, tmp_path, capsys, executed):
    glue = shared_data / "glue"  # QNLI there has dev.tsv and test.tsv only
    code, storage = _run(tmp_path, _space(tmp_path, transfer={"task": {"grid": ["rte", "qnli"]},
                                                              "data_dir": str(glue)}))
    _refused(capsys, code, storage, "transfer.data_dir: qnli: train split not found", str(glue / "QNLI/train.tsv"))


@pytest.mark.parametrize("damage,parts", [
    ("header_only", ["dev.tsv: no data rows: line 1 is the header"]),
    ("not_utf8", ["dev.tsv: line 70: not UTF-8"]),
    ("other_task", ["dev.tsv: line 1: header", "does not look like a GLUE RTE file"]),
])
def test_a_damaged_dev_file_is_refused_naming_it(damage, parts, rte, tmp_path, capsys, executed):
    dev = rte / "dev.tsv"
    if damage == "header_only":
        dev.write_text(dev.read_text().split("\n", 1)[0] + "\n")
    elif damage == "not_utf8":
        _not_utf8_at(dev, 23100)
    else:
        dev.write_text("index\tquestion\tsentence\tlabel\n0\ta\tb\tentailment\n")
    code, storage = _run(tmp_path, _space(tmp_path, transfer={"task": "rte", "data_dir": str(rte.parent)}))
    _refused(capsys, code, storage, "bad.yaml: transfer.data_dir: ", str(rte), *parts)


def test_data_from_the_environment_is_checked_too(rte, tmp_path, capsys, executed, monkeypatch):
    (rte / "dev.tsv").write_text("")
    monkeypatch.setenv("SPARSEBERT_DATA_DIR", str(rte.parent))
    code, storage = _run(tmp_path, _space(tmp_path, transfer={"task": "rte"}))
    _refused(capsys, code, storage, "bad.yaml: transfer.task: ", "dev.tsv: empty file",
             f"$SPARSEBERT_DATA_DIR={rte.parent}")


def test_good_local_data_passes(rte, shared_data, tmp_path, capsys, executed):
    for i, d in enumerate((rte.parent, rte, shared_data, shared_data / "glue")):
        code, _ = _run(tmp_path, _space(tmp_path, transfer={"task": "rte", "data_dir": str(d)}), "--name", f"ok{i}")
        assert code == 0, capsys.readouterr().err
    assert len(executed) == 4


def test_squad_json_errors_name_the_file_and_line(tmp_path):
    d = tmp_path / "squad"
    d.mkdir()
    (d / "train-v1.1.json").write_text('{"data": [\n  {"title": "t", "paragraphs": [}\n]}')
    (d / "dev-v1.1.json").write_text('{"data": []}')
    with pytest.raises(ValueError, match=r"train-v1\.1\.json: line 2, column \d+: not valid JSON"):
        load_task("squad", tmp_path, splits="train")
    with pytest.raises(ValueError, match=r"dev-v1\.1\.json: no questions"):
        load_task("squad", tmp_path, splits="validation")


# ---------------------------------------------------------------------------------------------------- 3. IMP at 0

def test_imp_at_sparsity_zero_is_refused_naming_ticket_sparsity(tmp_path, capsys, executed):
    with pytest.raises(ValueError, match="IMP needs a sparsity > 0"):
        finder_spec({"method": "imp", "sparsity": 0.0})
    ticket = {"sparsity": 0.0, "imp_interval": 100}
    code, storage = _run(tmp_path, _space(tmp_path, ticket=ticket, variants=[{"method": "imp"}]))
    _refused(capsys, code, storage, "bad.yaml: ticket.sparsity: IMP needs a sparsity > 0")
    code, storage = _run(tmp_path, _space(tmp_path, ticket={"sparsity": {"grid": [0.0, 0.5]}, "method": "imp"},
                                          variants=None))
    _refused(capsys, code, storage, "bad.yaml: ticket.sparsity: IMP needs a sparsity > 0")
    code, storage = _run(tmp_path, _space(tmp_path, ticket={"sparsity": 0.5},
                                          variants=[{"method": "dense", "sparsity": 0.0},
                                                    {"method": "imp", "sparsity": 0.0}]))
    _refused(capsys, code, storage, "bad.yaml: variants[1].sparsity: IMP needs a sparsity > 0")
    assert not executed
    # what IMP can make is unchanged: multiples of its 0.1 step, the first one also with prune_first
    assert finder_spec({"method": "imp", "sparsity": 0.1, "prune_first": True}).run_steps() == 0
    assert finder_spec({"method": "imp", "sparsity": 0.9}).run_steps() == 9 * 2792


# ---------------------------------------------------------------------------------------------------- 4. variants: []

@pytest.mark.parametrize("smoke", [False, True])
def test_an_empty_variants_list_is_refused(smoke, tmp_path, capsys, executed):
    code, storage = _run(tmp_path, _space(tmp_path, variants=[]), *(["--smoke"] if smoke else []))
    _refused(capsys, code, storage, "bad.yaml: variants: an empty list; omit the key for a single ticket")
    assert not executed


# ---------------------------------------------------------------------------------------------------- 5. every value
# issue 20 item 4: each value is checked once, by type and range (its knob's one definition), before anything is
# created; each of these passed validation (or --dry-run) before and failed inside a trial, or never

def _set(section: str, **values):
    def change(d: dict) -> None:
        d[section] = {**(d.get(section) or {}), **values}
    return change


def _variants(*variants):
    def change(d: dict) -> None:
        d["variants"] = [{"method": "omp"}, *variants]
    return change


BAD_VALUES = [
    ("reset_every", _set("ticket", reset_every=0), "ticket.reset_every: reset_every must be >= 1, got 0"),
    ("imp_interval", lambda d: (_set("ticket", imp_interval=0)(d), _variants({"method": "imp"})(d)),
     "ticket.imp_interval: imp_interval must be >= 1, got 0"),
    ("transfer_batch_size", _set("transfer", batch_size=0), "transfer.batch_size: batch_size must be >= 1, got 0"),
    ("transfer_lr_negative", _set("transfer", lr=-1), "transfer.lr: lr must be > 0, got -1"),
    ("transfer_lr_text", _set("transfer", lr="abc"), "transfer.lr: lr must be a number, got 'abc'"),
    ("ticket_lr_text", _set("ticket", lr="banana"), "ticket.lr: lr must be a number, got 'banana'"),
    ("max_steps", _set("transfer", max_steps=-3), "transfer.max_steps: max_steps must be >= 0, got -3"),
    ("metric", _set("tune", metric="scroe"), "tune.metric: 'scroe' is not reported by a transfer trial; valid: "),
    ("ticket_batch_size", _set("ticket", batch_size=0), "ticket.batch_size: batch_size must be >= 1, got 0"),
    ("eval_blocks", _set("eval", eval_blocks=0), "eval.eval_blocks: eval_blocks must be >= 1, got 0"),
    ("max_length", _set("transfer", max_length=0), "transfer.max_length: max_length must be >= 1, got 0"),
    ("weight_decay", _set("ticket", weight_decay="x"), "ticket.weight_decay: weight_decay must be a number, got 'x'"),
    ("transfer_lr_grid", _set("transfer", lr={"grid": [1.0e-4, -1.0e-4]}), "transfer.lr: lr must be > 0"),
    ("cpu", _set("resources", cpu=100), "resources.cpu: 100 per trial, but this machine has "),
    ("omp_lr", _variants({"method": "omp", "lr": 1}), "variants[1].lr: method 'omp' does not use it; its keys: "
                                                      "['method', 'model', 'scope', 'sparsity']"),
    ("imp_steps", _variants({"method": "imp", "steps": 5000}), "variants[1].steps: method 'imp' does not use it"),
    ("dense_imp_interval", _variants({"method": "dense", "sparsity": 0.0, "imp_interval": 7}),
     "variants[1].imp_interval: method 'dense' does not use it; its keys: ['method', 'model', 'sparsity']"),
]


@pytest.mark.parametrize("change,message", [c[1:] for c in BAD_VALUES], ids=[c[0] for c in BAD_VALUES])
def test_a_bad_value_is_refused_before_anything_is_created(change, message, tmp_path, capsys, executed):
    d = yaml.safe_load((REPO / "search_spaces/demo.yaml").read_text())
    change(d)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    code, storage = _run(tmp_path, p)
    _refused(capsys, code, storage, f"bad.yaml: {message}")
    if not message.startswith("resources."):  # a dry run refuses it too (the machine check only notes there)
        code, storage = _run(tmp_path, p, "--dry-run")
        _refused(capsys, code, storage, f"bad.yaml: {message}")
    assert not executed


def test_the_metric_names_are_what_trials_report():
    from search_spaces.checks import task_metrics
    from sparsebert.transfer.finetune import FinetuneConfig
    from sparsebert.transfer.tasks import get_task

    assert {"accuracy", "f1"} <= task_metrics("mrpc") and "matthews_correlation" in task_metrics("cola")
    assert {"validation_matched/accuracy", "validation_mismatched/accuracy"} <= task_metrics("mnli")
    assert task_metrics("squad") == {"exact_match", "f1"}
    assert get_task(FinetuneConfig().task).main_metric in task_metrics(FinetuneConfig().task)


def test_a_shared_ticket_section_may_hold_keys_for_its_other_variants(tmp_path, capsys, executed):
    code, _ = _run(tmp_path, _space(tmp_path, variants=[{"method": "omp"}, {"method": "tamt", "objective": "kd"}]))
    assert code == 0, capsys.readouterr().err  # demo's ticket: lr, steps, reset_every: TAMT's, not OMP's


def test_a_duplicate_yaml_key_is_refused_naming_key_and_line(tmp_path, capsys, executed):
    text = (REPO / "search_spaces/demo.yaml").read_text().replace("  max_steps: 60\n", "  max_steps: 60\n  lr: 1.0e-4\n")
    lines = text.splitlines()
    first, second = [i + 1 for i, line in enumerate(lines) if line.startswith("  lr: ")][-2:]
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    code, storage = _run(tmp_path, p)
    _refused(capsys, code, storage, f"bad.yaml: line {second}: malformed YAML: duplicate key 'lr' (first on line "
                                    f"{first})")
    assert not executed


def test_a_model_dir_without_weights_or_tokenizer_is_refused_before_space_json(tmp_path, capsys, executed):
    model = tmp_path / "only_config"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    code, storage = _run(tmp_path, _space(tmp_path, model=str(model)))
    _refused(capsys, code, storage, f"bad.yaml: model: {model}: a directory without weights (none of "
                                    "model.safetensors, pytorch_model.bin")
    (model / "model.safetensors").write_bytes(b"")
    code, storage = _run(tmp_path, _space(tmp_path, model=str(model)))
    _refused(capsys, code, storage, f"bad.yaml: model: {model}: a directory without tokenizer (none of tokenizer.json")
    (model / "vocab.txt").write_text("[PAD]\n")
    code, storage = _run(tmp_path, _space(tmp_path, model=str(model)))
    assert code == 0 and len(executed) == 1, capsys.readouterr().err
