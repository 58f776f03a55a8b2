"""``run_search.py export`` (a ticket as a Hugging Face model dir, masks baked) and ``run_search.py tickets``."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import run_search
from search_spaces.smoke import smoke_model_dir
from sparsebert.tickets.finders import finder_spec
from sparsebert.tickets.masking import apply_masks
from sparsebert.models.loading import load_pretraining_model
from sparsebert.tickets.pipeline import EvalSpec, SharedText, TicketStore
from sparsebert.models.registry import prunable_weights


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A store holding one OMP ticket of the smoke model: (store dir, model dir, ticket id, ticket)."""
    tmp = tmp_path_factory.mktemp("store")
    model = str(smoke_model_dir())
    spec = finder_spec({"method": "omp", "sparsity": 0.5, "model": model})
    t, _ = TicketStore(tmp).get_or_make(
        spec, EvalSpec(eval_blocks=4, head_steps=2, text={"source": "embedded", "block_size": 32, "max_blocks": 64}),
        SharedText(), log=lambda m: None)
    return tmp, model, spec.ticket_id, t


def test_export_loads_with_transformers_and_matches_the_masked_model(stored, tmp_path):
    from transformers import AutoModel, AutoModelForSequenceClassification

    store, model, tid, ticket = stored
    out = tmp_path / "out"
    assert run_search.main(["export", tid, "--store", str(store), "--out", str(out)]) == 0
    for f in ("README.md", "ticket.json", "mask.safetensors", "config.json", "model.safetensors",
              "tokenizer_config.json"):
        assert (out / f).is_file(), f
    card = (out / "README.md").read_text()
    assert "OMP" in card and tid in card and model in card and "decoder" in card

    ref = load_pretraining_model(model)
    apply_masks(ref.base, ticket)
    exported = AutoModel.from_pretrained(out).eval()
    ids = torch.randint(5, ref.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref.base(ids).last_hidden_state
        got = exported(ids).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5)

    weights = prunable_weights(exported)
    assert set(weights) == set(ticket.masks)
    for name, w in weights.items():
        mask = ticket.masks[name]
        assert torch.equal(w.detach() == 0, ~mask), name
        assert abs(float((w == 0).float().mean()) - 0.5) < 1e-3, name

    clf = AutoModelForSequenceClassification.from_pretrained(out, num_labels=2)
    assert clf.config.num_labels == 2


def test_export_refuses_a_non_empty_out_and_an_unknown_id(stored, tmp_path, capsys):
    store, _, tid, _ = stored
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert run_search.main(["export", tid, "--store", str(store), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").is_file()
    assert run_search.main(["export", "0123deadbeef4567", "--store", str(store), "--out", str(tmp_path / "o")]) == 2
    assert "0123deadbeef4567" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_export_takes_a_ticket_directory(stored, tmp_path):
    store, _, tid, _ = stored
    out = tmp_path / "bydir"
    assert run_search.main(["export", str(store / "tickets" / tid), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "ticket.json").is_file()


def test_tickets_lists_the_store_and_the_experiments_using_it(stored, tmp_path, capsys):
    store, model, tid, _ = stored
    assert run_search.main(["tickets", str(store)]) == 0
    out = capsys.readouterr().out
    assert tid in out and "OMP" in out

    exp = store / "my-experiment"
    exp.mkdir(exist_ok=True)
    pd.DataFrame({"ticket_id": [tid, "other"], "score": [0.5, 0.6]}).to_csv(exp / "results.csv", index=False)
    (store / "unrelated").mkdir(exist_ok=True)
    pd.DataFrame({"ticket_id": ["other"]}).to_csv(store / "unrelated" / "results.csv", index=False)
    try:
        from search.tickets import ticket_table

        df = ticket_table(store)
        row = df[df["id"] == tid].iloc[0]
        assert row["experiments"] == "my-experiment"
        assert row["method"] == "OMP" and abs(row["sparsity"] - 0.5) < 1e-3 and row["size_bytes"] > 0
        assert run_search.main(["tickets", str(store)]) == 0
        assert "my-experiment" in capsys.readouterr().out
    finally:
        import shutil

        shutil.rmtree(exp)
        shutil.rmtree(store / "unrelated")


def test_tickets_empty_store_and_bad_path(tmp_path, capsys):
    assert run_search.main(["tickets", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and "no tickets" in out
    missing = tmp_path / "nope"
    assert run_search.main(["tickets", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def test_tickets_leaves_out_quarantined_tickets(stored):
    import shutil

    from search.tickets import ticket_table

    store, _, tid, _ = stored
    aside = store / "tickets" / f"{tid}.corrupt-20261125T000000Z"
    shutil.copytree(store / "tickets" / tid, aside)
    try:
        ids = list(ticket_table(store)["id"])
        assert tid in ids and not any(".corrupt-" in str(i) for i in ids) and len(ids) == len(set(ids))
    finally:
        shutil.rmtree(aside)
