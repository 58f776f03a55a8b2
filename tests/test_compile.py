"""Issue 23: the ``compile`` knob (space key, runtime field) and compiled training steps on the CPU: the same losses
as eager, and one compilation per batch shape. Small on purpose (compiling is slow on this CPU)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters
from transformers import AutoModel

from sparsebert.transfer.finetune import FineTune, FinetuneConfig
from sparsebert.tickets.pruning import omp_ticket
from sparsebert.engine.runtime import Runtime, Switch, RuntimeConfig, resolve_runtime
from sparsebert.engine.training import TrainConfig, train
from search_spaces.loader import SpaceError, load_space


def test_compile_knob_resolves_auto_off_on_the_cpu_and_is_validated(tmp_path):
    assert resolve_runtime(RuntimeConfig(device="cpu")).compile is False  # auto: CUDA only
    assert resolve_runtime(RuntimeConfig(device="cpu", compile=True)).compile is True  # YAML booleans
    assert resolve_runtime({"device": "cpu", "compile": "false"}).compile is False
    assert RuntimeConfig(compile="TRUE").as_dict()["compile"] == "true"
    assert RuntimeConfig().compile is Switch.AUTO
    with pytest.raises(ValueError, match="compile: must be auto, true or false"):
        RuntimeConfig(compile="sometimes")
    space = tmp_path / "s.yaml"
    space.write_text("stage: transfer\ncompile: true\ntransfer: {task: rte}\n")
    assert load_space(space).runtime["compile"] == "true"
    space.write_text("stage: transfer\ncompile: fast\ntransfer: {task: rte}\n")
    with pytest.raises(SpaceError, match="compile"):
        load_space(space)


def _losses(ft, steps: int) -> list[float]:
    losses: list[float] = []
    step_loss = ft.loss

    def loss(batch, step):
        out = step_loss(batch, step)
        losses.append(float(out[0].detach()))
        return out

    ft.loss = loss
    train(ft, TrainConfig(steps=steps, lr=1e-3, weight_decay=0.01, eval_every=0, log_every=0))
    return losses


@pytest.fixture(scope="module")
def tiny_no_dropout(tiny, tmp_path_factory):
    """The tiny model without dropout (compiled dropout draws from inductor's own RNG: other masks than eager)."""
    import json
    import shutil

    d = tmp_path_factory.mktemp("nodrop") / "tiny"
    shutil.copytree(tiny, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def test_compiled_finetuning_step_gives_the_eager_losses(tiny_no_dropout, tok, shared_data):
    """Inductor on the CPU, one batch shape (widths padded to max_length 32), no dropout: losses within 1e-4 of
    eager (fp32; inductor fuses and reorders float math, so not bit-equal), pruned weights exactly zero."""
    tiny = tiny_no_dropout
    ticket = omp_ticket(AutoModel.from_pretrained(tiny), tiny, 0.5)
    kw = dict(task="sst2", data_dir=str(shared_data / "glue"), subset_size=32, max_eval_examples=8, batch_size=8,
              max_length=32, static_shapes=True)
    eager = _losses(FineTune(tiny, FinetuneConfig(**kw), tok, ticket=ticket), 6)
    torch._dynamo.reset()
    compiled_rt = Runtime(torch.device("cpu"), torch.float32, compile=True)
    ft = FineTune(tiny, FinetuneConfig(**kw), tok, ticket=ticket, runtime=compiled_rt)
    assert ft.step_model is not ft.model
    comp = _losses(ft, 6)
    assert max(abs(a - b) for a, b in zip(eager, comp)) < 1e-4, (eager, comp)
    for key, w in ft.model.state_dict().items():
        k = key.removeprefix("bert.")
        if k in ticket.masks:
            assert torch.all(w[~ticket.masks[k]] == 0), key


def test_a_three_epoch_compiled_run_compiles_once_per_batch_shape(tiny, tok, shared_data):
    """dynamo's own counters over 3 epochs of real SST-2 rows (the quick aot_eager backend: the recompiles are
    dynamo's, whatever the backend): one graph per distinct (rows, width), none per step."""
    ticket = omp_ticket(AutoModel.from_pretrained(tiny), tiny, 0.5)
    cfg = FinetuneConfig(task="sst2", data_dir=str(shared_data / "glue"), subset_size=40, max_eval_examples=8,
                         batch_size=8, max_length=64, epochs=3, static_shapes=True, pad_multiple=16)
    rt = Runtime(torch.device("cpu"), torch.float32, compile=True, compile_backend="aot_eager")
    torch._dynamo.reset()
    counters.clear()
    ft = FineTune(tiny, cfg, tok, ticket=ticket, runtime=rt)
    shapes = []
    step_loss = ft.loss
    ft.loss = lambda b, s: (shapes.append(tuple(b["input_ids"].shape)), step_loss(b, s))[1]
    train(ft, TrainConfig(steps=ft.num_steps(), lr=1e-3, eval_every=0, log_every=0))
    assert len(shapes) == 15 and len(set(shapes)) >= 2  # 3 epochs of 5 full batches, more than one width
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == len(set(shapes)), (graphs, sorted(set(shapes)))
    assert counters["stats"]["calls_captured"] > 0 and not counters["graph_break"]
