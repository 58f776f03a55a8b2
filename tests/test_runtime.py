"""Device and precision: resolution, the bf16/fp16 autocast paths (run on CPU: CI has no GPU), checkpoints that
change precision on resume, dynamic padding, and the checks run before Ray starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.nn.utils import parametrize
from transformers import AutoModel

from sparsebert.text.data import TextDataConfig, tokenized_blocks
from sparsebert.transfer.finetune import FineTune, FinetuneConfig
from sparsebert.tickets.imp import IMP, IMPSpec
from sparsebert.tickets.masking import mask_params
from sparsebert.models.loading import load_pretraining_model
from sparsebert.tickets.pruning import omp_ticket
from sparsebert.models.registry import prunable_weights
from sparsebert.engine.runtime import (CPU, DeviceUnavailable, Runtime, RuntimeConfig, prefetch, resolve_runtime,
                                resolve_device)
from sparsebert.tickets.tamt import TAMT, TAMTSpec
from sparsebert.transfer.task_tensors import epoch_batches
from sparsebert.engine.training import TrainConfig, load_checkpoint, train

from conftest import REPO

BF16 = Runtime(torch.device("cpu"), torch.bfloat16)
FP16 = Runtime(torch.device("cpu"), torch.float16)


@pytest.fixture(scope="module")
def blocks(tok):
    cfg = TextDataConfig(source="embedded", block_size=32)
    return tokenized_blocks(cfg, tok, "train")[:256], tokenized_blocks(cfg, tok, "validation")[:16]


def make_tamt(tiny, tok, blocks, runtime, objective="mlm_kd", **kw):
    spec = TAMTSpec(model=tiny, objective=objective, sparsity=0.5, batch_size=4, reset_every=2, **kw)
    return TAMT(load_pretraining_model(tiny), spec, tok, blocks[0], blocks[1][:8], runtime=runtime)


# ---- resolution -------------------------------------------------------------------------------------------------

def test_auto_is_the_cpu_in_fp32_here_and_explicit_precisions_resolve():
    assert not torch.cuda.is_available()  # CI and this machine: the CPU path is what these tests pin down
    rt = resolve_runtime()
    assert rt.device.type == "cpu" and rt.dtype == torch.float32 and not rt.mixed
    assert resolve_runtime({"precision": "bf16"}).dtype == torch.bfloat16
    assert resolve_runtime(RuntimeConfig(device="cpu", precision="fp16")).grad_scaler() is not None
    assert resolve_runtime({"precision": "bf16"}).grad_scaler() is None  # bf16 has fp32's range: no loss scaling


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_asking_for_a_missing_gpu_names_the_key(device):
    with pytest.raises(DeviceUnavailable, match=r"^device: .*no CUDA device"):
        resolve_device(device)


@pytest.mark.parametrize("bad", [{"device": "gpu"}, {"device": "cuda:x"}, {"precision": "half"}, {"dtype": "bf16"}])
def test_bad_runtime_values_are_rejected(bad):
    with pytest.raises(ValueError, match=next(iter(bad)) if "dtype" not in bad else "unknown runtime keys"):
        RuntimeConfig.from_dict(bad)


def test_prefetch_on_cpu_passes_batches_through():
    batches = [{"input_ids": torch.arange(4)}, {"input_ids": torch.arange(4, 8)}]
    out = list(prefetch(iter(batches), CPU))
    assert [b["input_ids"].tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7]]


# ---- the mixed-precision paths, on CPU ----------------------------------------------------------------------------

@pytest.mark.parametrize("objective", ["mlm", "kd", "mlm_kd"])
def test_tamt_in_bf16_keeps_scores_and_optimizer_fp32_and_computes_masked_weights_in_bf16(objective, tiny, tok,
                                                                                          blocks):
    t = make_tamt(tiny, tok, blocks, BF16, objective=objective)
    batch = next(t.batches(0))
    with BF16.autocast(), parametrize.cached():
        emb = t.model.base.embeddings.word_embeddings
        assert emb.weight.dtype == torch.bfloat16  # the masked weight, once per step, in the compute dtype
        assert emb.parametrizations.weight.original.dtype == torch.float32
    out = train(t, TrainConfig(steps=4, lr=1e-2, eval_every=2, log_every=0))
    assert all(s.scores.dtype == torch.float32 for s in t.scores.values())
    ticket = t.ticket(4)
    assert abs(ticket.sparsity() - 0.5) < 1e-3
    assert torch.isfinite(torch.tensor(out["train_loss"]))
    if objective != "mlm":
        assert 0 <= out["kd_loss"] < 1
    if objective != "kd":
        assert out["mlm_loss"] > 0
    assert set(batch) == ({"input_ids"} if objective == "kd" else {"input_ids", "positions", "targets"})


def test_bf16_and_fp32_tamt_agree_closely_and_fp16_runs_with_a_grad_scaler(tiny, tok, blocks):
    losses = {}
    for name, rt in (("fp32", CPU), ("bf16", BF16), ("fp16", FP16)):
        t = make_tamt(tiny, tok, blocks, rt, objective="kd")
        with torch.no_grad():
            loss, _ = t.loss(next(t.batches(0)), 0) if rt is CPU else _autocast_loss(t, rt)
        losses[name] = float(loss)
        out = train(t, TrainConfig(steps=3, lr=1e-2, eval_every=0, log_every=0))
        assert out["step"] == 3
    assert abs(losses["bf16"] - losses["fp32"]) < 0.05 * max(losses["fp32"], 1e-3) + 1e-3, losses
    assert abs(losses["fp16"] - losses["fp32"]) < 0.02 * max(losses["fp32"], 1e-3) + 1e-3, losses


def _autocast_loss(t, rt):
    with rt.autocast():
        return t.loss(next(t.batches(0)), 0)


def test_imp_in_bf16_prunes_and_rewinds(tiny, tok, blocks):
    model = load_pretraining_model(tiny)
    model.head_pretrained = True  # a tiny model's random head stands in for a pre-trained one
    imp = IMP(model, IMPSpec(model=tiny, imp_interval=2, sparsity=0.2, batch_size=4), tok, blocks[0],
              blocks[1][:8], runtime=BF16)
    out = train(imp, TrainConfig(steps=4, lr=1e-3, eval_every=2, log_every=0))
    assert sorted(imp.tickets) == [0.1, 0.2] and out["mlm_loss"] > 0
    assert all(p.mask.dtype == torch.float32 for p in mask_params(model.base).values())


def test_finetuning_in_bf16_learns_and_keeps_pruned_weights_zero(tiny, tok, shared_data):
    ticket = omp_ticket(AutoModel.from_pretrained(tiny), tiny, 0.5)
    cfg = FinetuneConfig(task="sst2", data_dir=str(shared_data / "glue"), subset_size=64, max_eval_examples=32,
                         batch_size=8, max_length=64)
    ft = FineTune(tiny, cfg, tok, ticket=ticket, runtime=BF16)
    out = train(ft, TrainConfig(steps=6, lr=1e-3, eval_every=3, log_every=0))
    assert 0 <= out["score"] <= 1 and out["best_step"] in (3, 6)
    assert all(p.dtype == torch.float32 for p in ft.model.parameters())  # weights and AdamW state stay fp32
    for key, w in prunable_weights(ft.model).items():
        assert torch.all(w[~ticket.masks[key]] == 0), key


def crash_after(step: int, directory):
    """A report callback that writes a checkpoint at ``step`` and then "crashes"."""
    def report(metrics, write):
        if metrics["step"] == step:
            write(directory)
            raise KeyboardInterrupt

    return report


# ---- checkpoints across precisions --------------------------------------------------------------------------------

@pytest.mark.parametrize("first,second", [(BF16, CPU), (CPU, BF16)])
def test_a_checkpoint_written_in_one_precision_resumes_in_another(first, second, tiny, tok, blocks, tmp_path):
    tc = TrainConfig(steps=6, lr=1e-2, eval_every=3, log_every=0, seed=1)
    with pytest.raises(KeyboardInterrupt):
        train(make_tamt(tiny, tok, blocks, first), tc, report=crash_after(3, tmp_path / "ck"))
    state = load_checkpoint(tmp_path / "ck")
    assert state["precision"] == first.precision
    assert all(v.device.type == "cpu" for v in state["method"]["scores"].values())
    resumed = make_tamt(tiny, tok, blocks, second)
    out = train(resumed, tc, resume_from=tmp_path / "ck")
    assert out["step"] == 6 and out["resumed_at"] == 3
    assert abs(resumed.ticket(6).sparsity() - 0.5) < 1e-3


def test_bf16_resume_on_cpu_is_exact(tiny, tok, blocks, tmp_path):
    tc = TrainConfig(steps=6, lr=1e-2, eval_every=3, log_every=0, seed=2)
    full = make_tamt(tiny, tok, blocks, BF16)
    train(full, tc)
    with pytest.raises(KeyboardInterrupt):
        train(make_tamt(tiny, tok, blocks, BF16), tc, report=crash_after(3, tmp_path / "ck"))
    resumed = make_tamt(tiny, tok, blocks, BF16)
    train(resumed, tc, resume_from=tmp_path / "ck")
    for k, s in full.scores.items():
        assert torch.equal(s.scores, resumed.scores[k].scores), k


# ---- dynamic padding ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["cola", "mrpc"])
def test_dynamically_padded_batches_predict_what_fully_padded_ones_do(task, tiny, tok, shared_data):
    cfg = FinetuneConfig(task=task, data_dir=str(shared_data / "glue"), subset_size=32, max_eval_examples=48,
                         batch_size=8, eval_batch_size=16, max_length=128)
    ft = FineTune(tiny, cfg, tok)
    dynamic = ft._predict("validation")
    data = ft.eval_t["validation"]
    ft.model.eval()
    with torch.no_grad():  # every row padded to max_length (128), in the split's order: the fixed-shape way
        full = {k: torch.nn.functional.pad(v, (0, 128 - v.shape[1]), value=tok.pad_token_id if k == "input_ids"
                                           else 0) for k, v in data.inputs.items()}
        padded = ft.model(**full).logits.numpy()
    assert dynamic.shape == padded.shape == (48, ft.spec.num_labels)
    assert abs(dynamic - padded).max() < 1e-4
    # what the dynamic batches save: bucketed training batches carry far less padding than max_length ones
    plain = epoch_batches(ft.train_t.lengths, 8, 0, 0, buckets=1)
    assert ft.train_t.padding_fraction(epoch_batches(ft.train_t.lengths, 8, 0, 0, buckets=4)) <= \
        ft.train_t.padding_fraction(plain)
    assert max(int(ft.train_t.lengths[b].max()) for b in plain) < 128


# ---- before Ray starts ----------------------------------------------------------------------------------------------

def _run(args, tmp_path):
    return subprocess.run([sys.executable, str(REPO / "run_search.py"), "run", *args, "--storage", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_cuda_without_a_gpu_exits_2_naming_the_key_before_ray_starts(tmp_path):
    space = tmp_path / "cuda.yaml"
    space.write_text("stage: evaluate\nmodel: embedded-minilm\nticket: {method: omp, sparsity: 0.5}\n"
                     "device: cuda\nresources: {cpu: 1, gpu: 1}\n")
    r = _run([str(space)], tmp_path / "out")
    assert r.returncode == 2 and "error: cuda.yaml: device: 'cuda' requested but torch sees no CUDA" in r.stderr
    assert not (tmp_path / "out" / "cuda").exists()
    space.write_text("stage: evaluate\nmodel: embedded-minilm\nticket: {method: omp, sparsity: 0.5}\n"
                     "device: cuda\nresources: {cpu: 1, gpu: 1}\n")
    r = _run([str(space), "--gpus", "1"], tmp_path / "out")
    assert r.returncode == 2 and "error: cuda.yaml: device: 'cuda' requested but torch sees no CUDA" in r.stderr
    space.write_text("stage: evaluate\nmodel: embedded-minilm\nticket: {method: omp, sparsity: 0.5}\n"
                     "device: cuda\n")
    r = _run([str(space)], tmp_path / "out")
    assert r.returncode == 2 and "error: cuda.yaml: device: 'cuda' needs resources.gpu > 0" in r.stderr
    space.write_text("stage: evaluate\nmodel: embedded-minilm\nticket: {method: omp, sparsity: 0.5}\n"
                     "precision: fp8\n")
    r = _run([str(space)], tmp_path / "out")
    assert r.returncode == 2 and "error: cuda.yaml: precision: must be one of" in r.stderr


def test_gpu_spaces_dry_run_with_a_note_and_smoke_runs_on_the_cpu():
    from search_spaces.loader import load_space

    space = load_space("main_table", smoke=True)
    assert space.resources == {"cpu": 1} and space.runtime["device"] == "auto"
    full = load_space("main_table")
    assert full.resources["gpu"] == 1
    assert full.runtime["device"] == "cuda"
    r = subprocess.run([sys.executable, str(REPO / "run_search.py"), "run", "main_table", "--dry-run"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0 and "note (a real run stops here): main_table.yaml: device: 'cuda'" in r.stdout
    r = subprocess.run([sys.executable, str(REPO / "run_search.py"), "run", "demo", "--dry-run"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0 and "demo.yaml: resources.gpu: 0.25 per trial, but this machine has no GPU: trials run " \
        "on the CPU" in r.stdout, r.stdout
