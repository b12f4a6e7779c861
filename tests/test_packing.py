"""Token-budget batches (train.tokens_per_batch): plans that pack whole features into rows and resume exactly, packed
rows that give the logits, loss and gradients of padded batches (BERT and ALBERT, token and word level, R-Drop's
doubled batch), training and inference on them, and the combinations that are refused with a message."""

from __future__ import annotations

import json
import random
import re
import shutil
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file

from conftest import QUICKSTART, tiny_run_config
from mrc_cli.attention import packing_refusal
from mrc_cli.batching import (FeatureTensors, doubled, epoch_plan, inference_batch_size, inference_batches, pack_rows,
                              remaining_steps, token_budget)
from mrc_cli.config import ConfigError, DataConfig, ModelConfig, TrainConfig, check_train_config
from mrc_cli.inference import OneProcess, eval_token_budget, predict_logits
from mrc_cli.model import build_model
from mrc_cli.splits import featurize_file
from mrc_cli.tokenizer import load_tokenizer
from mrc_cli.training import _token_budget, _why_unpacked, train
from mrc_cli.tricks import rdrop_loss

CUDA = SimpleNamespace(type="cuda")  # token_budget reads only the device type


def _features(plan):
    return [f for step in plan for row in step for f in row]


# --- plans ---------------------------------------------------------------------------------------------------------


def test_rows_hold_whole_features_within_the_budget_and_waste_less_than_one_feature():
    rng = random.Random(0)
    lengths = [rng.randint(40, 384) for _ in range(500)]
    order = list(range(500))
    rng.shuffle(order)
    rows = pack_rows(order, lengths, 1000)
    assert [f for row in rows for f in row] == order  # every feature once, in order
    assert all(sum(lengths[f] for f in row) <= 1000 for row in rows)
    # next fit: a row is closed only when the next feature does not fit
    assert all(sum(lengths[f] for f in row) + lengths[nxt[0]] > 1000 for row, nxt in zip(rows, rows[1:]))


@pytest.mark.parametrize("group", [1, 4, 8])
def test_a_packed_epoch_trains_every_feature_once_and_is_a_pure_function(group):
    rng = random.Random(1)
    lengths = [rng.randint(40, 384) for _ in range(2000)]
    for grouped in (False, True):
        plan = epoch_plan(lengths, 16, group, seed=1, epoch=0, group_by_length=grouped, tokens_per_batch=3000)
        assert all(len(step) == group and all(step) for step in plan)
        assert all(sum(lengths[f] for f in row) <= 3000 for step in plan for row in step)
        seen = _features(plan)
        # every one: a last step of fewer rows than the group is spread over the group's rows, not left out (the
        # shortest features of a length-sorted epoch, every epoch)
        assert len(seen) == len(set(seen)) and set(seen) == set(range(2000))
        assert plan == epoch_plan(lengths, 16, group, 1, 0, grouped, tokens_per_batch=3000)
        assert plan != epoch_plan(lengths, 16, group, 1, 1, grouped, tokens_per_batch=3000)
    # a one-row epoch on 8 micro-batches: spread over 8 rows; fewer features than micro-batches: no step
    assert sorted(len(row) for row in epoch_plan([50] * 10, 16, 8, 0, 0, True, tokens_per_batch=3000)[0]) == [
        1, 1, 1, 1, 1, 1, 2, 2]
    assert epoch_plan([50] * 7, 16, 8, 0, 0, True, tokens_per_batch=3000) == []
    # grouped rows of similar lengths fill the budget: >= 90 % of the computed tokens are real
    plan = epoch_plan(lengths, 16, group, 1, 0, True, tokens_per_batch=3000)
    assert sum(lengths[f] for f in _features(plan)) >= 0.9 * 3000 * sum(len(step) for step in plan)


@pytest.mark.parametrize("segments, group", [([[2, 20]], 2), ([[2, 20]], 1), ([[1, 9], [2, 3]], 4)])
def test_a_resumed_packed_plan_continues_or_repeats_and_skips_nothing(segments, group):
    lengths = [random.Random(2).randint(40, 384) for _ in range(1000)]
    budget = 2000
    if segments == [[group, 20]]:
        plan = epoch_plan(lengths, 8, group, 0, 0, True, tokens_per_batch=budget)
        assert remaining_steps(lengths, 8, group, 0, 0, True, segments, budget) == plan[20:]
        return
    done, seen = set(), []
    for earlier, steps in segments:
        plan = epoch_plan(lengths, 8, earlier, 0, 0, True, done, budget)[:steps]
        seen += _features(plan)
        done.update(_features(plan))
    rest = remaining_steps(lengths, 8, group, 0, 0, True, segments, budget)
    seen += _features(rest)
    assert all(len(step) == group for step in rest)
    assert len(seen) == len(set(seen))
    assert len(set(range(1000)) - set(seen)) < 2 * group * budget / 40  # at most a last step too small is left out


def test_the_budget_auto_matches_the_batch_size_on_cuda_and_is_off_on_cpu():
    lengths = [100, 200, 300, 384]
    assert token_budget("auto", 16, lengths, torch.device("cpu")) == 0
    assert token_budget("auto", 16, lengths, CUDA) == 3968  # 16 x 246 = 3936, up to a multiple of 64
    assert token_budget("auto", 1, lengths, CUDA) == 384  # never below the longest feature
    assert token_budget(5000, 16, lengths, torch.device("cpu")) == 5000
    assert token_budget(0, 16, lengths, CUDA) == 0
    with pytest.raises(ConfigError, match=r"tokens_per_batch 300 is below the longest feature \(384 tokens\).*at least 384"):
        token_budget(300, 16, lengths, CUDA)


def test_the_inference_batch_auto_is_wide_on_cuda_and_narrow_on_cpu_and_scales_a_token_budget():

    assert inference_batch_size("auto", torch.device("cpu")) == 16
    assert inference_batch_size("auto", CUDA) == 64
    assert inference_batch_size(128, torch.device("cpu")) == 128
    assert TrainConfig().eval_batch_size == "auto"
    # a training budget of 16 features is scaled to the features of an inference batch on that device
    budget = TrainConfig(batch_size=16, tokens_per_batch=4096)
    assert eval_token_budget(budget, 384, torch.device("cpu")) == 4096
    assert eval_token_budget(budget, 384, CUDA) == 4 * 4096
    assert eval_token_budget(TrainConfig(tokens_per_batch="auto"), 384, CUDA) == "auto"


@pytest.mark.parametrize(("value", "problem"), [
    ("many", "train.eval_batch_size is auto or a number of features, at least 1 (got 'many')"),
    (0, "train.eval_batch_size is auto or a number of features, at least 1 (got 0)"),
])
def test_bad_inference_batches_are_refused_up_front(value, problem):
    from mrc_cli.config import TrainConfig

    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        check_train_config(TrainConfig(eval_batch_size=value))


@pytest.mark.parametrize(("value", "problem"), [
    ("many", "train.tokens_per_batch is auto, 0 (feature batches) or a number of tokens (got 'many')"),
    (-1, "got -1"),
])
def test_bad_budgets_are_refused_up_front(value, problem):
    from mrc_cli.config import TrainConfig

    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        check_train_config(TrainConfig(tokens_per_batch=value))


# --- packed rows -----------------------------------------------------------------------------------------------------


def test_a_packed_row_puts_whole_features_back_to_back():
    rows = [{"input_ids": [1, 2, 3], "token_type_ids": [0, 1, 1], "start_positions": 1, "end_positions": 2},
            {"input_ids": [4], "token_type_ids": [0], "start_positions": 0, "end_positions": 0},
            {"input_ids": [5, 6, 7, 8, 9], "token_type_ids": [0, 0, 1, 1, 1], "start_positions": 3, "end_positions": 4}]
    store = FeatureTensors(Dataset.from_list(rows), torch.device("cpu"), pad_token_id=99, tokens_per_batch=12)
    batch = store.batch([2, 0, 1])
    packing = batch.pop("packing")
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 1, 2, 3, 4, 99, 99, 99]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1, 1, 1, 0, 1, 1, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 0, 0, 0, 0]]
    assert packing.cu_seqlens.tolist() == [0, 5, 8, 9, 12]  # the three features, then the row's tail
    assert packing.max_seqlen == 5 and packing.tokens == 12
    assert packing.present.tolist() == [[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4]
    unpacked = batch["input_ids"].reshape(-1)[packing.unpack]
    assert torch.where(packing.present, unpacked, 0).tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 0, 0], [4, 0, 0, 0, 0]]
    assert batch["start_positions"].tolist() == [3, 1, 0]  # labels stay per feature, in the feature's positions
    full = FeatureTensors(Dataset.from_list(rows), torch.device("cpu"), pad_token_id=99, tokens_per_batch=9)
    assert full.batch([2, 0, 1])["packing"].cu_seqlens.tolist() == [0, 5, 8, 9]  # a full row: no empty tail segment
    twice = doubled({"packing": packing, "input_ids": batch["input_ids"]})
    assert twice["input_ids"].shape == (2, 12)
    assert twice["packing"].cu_seqlens.tolist() == [0, 5, 8, 9, 12, 17, 20, 21, 24]
    assert twice["packing"].unpack[3:].tolist() == (packing.unpack + 12).tolist()


@pytest.fixture(scope="module")
def windows(request):
    """The first `count` training windows of the quickstart data (all 344 for None) for each tiny model, 128 tokens
    at most."""
    def make(model_dir: str, cache, count: int | None = 12):
        tokenizer = load_tokenizer(model_dir)
        data = DataConfig(max_seq_length=128, doc_stride=32, max_query_length=32, cache_dir=str(cache))
        features = featurize_file(str(QUICKSTART / "en_train.json"), tokenizer, data, "train").features
        return tokenizer, features if count is None else features.select(range(count))
    return make


@pytest.mark.parametrize("model_dir", ["tiny_bert_dir", "tiny_albert_dir"])
@pytest.mark.parametrize("span_level", ["token", "word"])
def test_packed_rows_give_the_logits_loss_and_gradients_of_padded_batches(model_dir, span_level, request, windows,
                                                                        tmp_path):
    folder = request.getfixturevalue(model_dir)
    tokenizer, rows = windows(folder, tmp_path)
    index = list(range(12))
    padded = FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id).batch(index)
    packed = FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id, tokens_per_batch=1600).batch(index)
    assert packed["input_ids"].shape == (1, 1600)
    segments = packed["packing"].cu_seqlens.diff()  # the 12 features, then the tail in pieces no wider than they are
    assert segments[:12].tolist() == padded["attention_mask"].sum(1).tolist() and segments.sum() == 1600
    assert (segments[12:] > 0).all() and segments.max() <= packed["packing"].max_seqlen == padded["input_ids"].shape[1]
    torch.manual_seed(0)
    model = build_model(ModelConfig(name_or_path=folder, dropout=0.0, span_level=span_level), 128)
    results = []
    for batch in (padded, packed):
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, grads_a), (b, grads_b) = results
    assert a.start_logits.shape == b.start_logits.shape
    assert torch.allclose(a.start_logits, b.start_logits, atol=1e-5) and torch.allclose(a.end_logits, b.end_logits, atol=1e-5)
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    assert all(torch.allclose(grads_a[n], grads_b[n], atol=1e-5) for n in grads_a)
    # R-Drop's one forward of the batch twice: both halves as the plain batch (no dropout: the KL term is 0)
    model.eval()
    assert torch.allclose(rdrop_loss(model, packed, 1.0), rdrop_loss(model, padded, 1.0), atol=1e-6)


@pytest.mark.parametrize("model_type", ["roberta", "xlm-roberta", "camembert", "electra"])
def test_the_other_bert_family_encoders_give_the_logits_of_padded_batches_on_packed_rows(model_type, tiny_encoder_dir,
                                                                                         windows, tmp_path):
    """RoBERTa's family counts positions from pad_token_id + 1: a packed row's positions restart there per feature."""
    folder = tiny_encoder_dir(model_type)
    tokenizer, rows = windows(folder, tmp_path)
    model = build_model(ModelConfig(name_or_path=folder, dropout=0.0), 128).eval()
    assert model.packs
    padded, packed = (FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id, tokens_per_batch=budget)
                      .batch(list(range(12))) for budget in (0, 1600))
    a, b = model(**padded), model(**packed)
    assert torch.allclose(a.start_logits, b.start_logits, atol=1e-5) and torch.allclose(a.end_logits, b.end_logits, atol=1e-5)




def test_auto_packs_only_where_varlen_attention_runs(monkeypatch):
    """Elsewhere packed rows take the gathered-SDPA path (feature batches' work and two gathers a layer): auto then
    gives feature batches and says why; a number given is kept."""
    from mrc_cli import attention
    from mrc_cli.attention import varlen_missing

    assert varlen_missing(CUDA, "bf16") is None and varlen_missing(CUDA, "fp16") is None
    assert varlen_missing(torch.device("cpu"), "bf16") == "varlen attention runs on CUDA only"
    assert varlen_missing(CUDA, "no") == "varlen attention runs in bf16 or fp16, and this run is in fp32"
    assert varlen_missing(CUDA, "bf16", 0.1) == "varlen attention has no dropout, and the attention dropout is 0.1"
    from transformers import BertConfig

    notes, bert = [], BertConfig(attention_probs_dropout_prob=0.0)
    auto, given = TrainConfig(batch_size=16, tokens_per_batch="auto"), TrainConfig(batch_size=16, tokens_per_batch=4000)

    def budget(train_cfg, precision):
        return _token_budget(train_cfg, _why_unpacked(train_cfg, bert, CUDA, precision), [100, 384], CUDA, notes.append)

    assert budget(auto, "no") == 0
    assert notes == ["train.tokens_per_batch auto: feature batches, as varlen attention runs in bf16 or fp16, and this "
                     "run is in fp32"]
    assert budget(given, "no") == 4000
    monkeypatch.setattr(attention, "_HAS_VARLEN", True)  # as on torch >= 2.11: the budget itself
    assert budget(auto, "bf16") == 3904  # 16 x 242, up to a multiple of 64
    monkeypatch.setattr(attention, "_HAS_VARLEN", False)
    assert "has no varlen attention with a scale (torch 2.11 and later have)" in varlen_missing(CUDA, "bf16")


@pytest.mark.parametrize("model_type", ["mpnet", "deberta-v2"])
def test_encoders_with_attention_of_their_own_refuse_a_token_budget_and_infer_on_feature_batches(
        model_type, tiny_encoder_dir, windows, tmp_path):
    """MPNet and DeBERTa compute attention in their own code with positions relative over the whole row: packed,
    their features would see each other. Training refuses a budget by name; inference keeps feature batches."""
    folder = tiny_encoder_dir(model_type)
    tokenizer, rows = windows(folder, tmp_path)
    model = build_model(ModelConfig(name_or_path=folder, dropout=0.0), 128).eval()
    assert not model.packs
    padded = predict_logits(model, rows, OneProcess(torch.device("cpu")), 4, "no", 128)
    asked = predict_logits(model, rows, OneProcess(torch.device("cpu")), 4, "no", 128, tokens_per_batch=600)
    assert np.array_equal(padded.start, asked.start)
    cfg = tiny_run_config(folder, tmp_path / "run", max_steps=1, tokens_per_batch=600)
    with pytest.raises(ConfigError, match=f"train.tokens_per_batch 600: {model_type} is not among .*--init-from"):
        train(cfg)
    cfg.train.tokens_per_batch = "auto"
    unpacked = _why_unpacked(cfg.train, model.config, CUDA, "bf16")
    assert unpacked == packing_refusal(model.config) and _token_budget(cfg.train, unpacked, [100, 120], CUDA) == 0


@pytest.mark.parametrize("kind", ["fgm", "pgd"])
def test_adversarial_training_perturbs_each_packed_feature_as_in_a_padded_batch(tiny_bert_dir, windows, tmp_path, kind):
    """Per feature epsilon (fgm) or the projected climb (pgd), also when the features share a row: the same gradients
    as from the padded batch."""
    from mrc_cli.tricks import Adversary

    tokenizer, rows = windows(tiny_bert_dir, tmp_path)
    grads = []
    for budget in (0, 1600):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name_or_path=tiny_bert_dir, dropout=0.0), 128)
        batch = FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id, tokens_per_batch=budget).batch(list(range(12)))
        adversary = Adversary(model, kind, epsilon=0.5, alpha=0.2, steps=3)
        seen = []
        model.encoder.get_input_embeddings().register_forward_hook(lambda m, i, out: seen.append(out.detach().clone()))
        adversary.backward(lambda: model(**batch).loss, lambda loss: loss.backward(), torch.enable_grad,
                           torch.enable_grad(), batch.get("packing"))
        if budget:  # epsilon per feature, measured over its own tokens of the row
            moved = (seen[-1] - seen[0]).flatten(0, 1)[batch["packing"].unpack] * batch["packing"].present[..., None]
            norms = moved.flatten(1).norm(dim=1)
            assert (norms <= 0.5 + 1e-4).all() and (norms > (0.49 if kind == "fgm" else 0.39)).all()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-5) for n in grads[0])


def test_a_feature_attends_only_to_itself_in_a_packed_row(tiny_bert_dir, windows, tmp_path):
    """A feature's logits do not depend on its row mates: the same feature packed beside others or alone."""
    tokenizer, rows = windows(tiny_bert_dir, tmp_path)
    store = FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id, tokens_per_batch=1600)
    model = build_model(ModelConfig(name_or_path=tiny_bert_dir), 128).eval()
    alone = model(**store.batch([5])).start_logits[0]
    among = model(**store.batch([3, 5, 7, 0])).start_logits[1]
    width = int(store.lengths[5])
    assert torch.allclose(alone[:width], among[:width], atol=1e-5)


# --- fixed shapes (train.cuda_graphs) ---------------------------------------------------------------------------


def _layouts(rows, pad_token_id: int) -> dict[str, FeatureTensors]:
    """Feature batches, packed rows as the features need, and packed rows of fixed shapes, rows of 1600 tokens."""
    fixed = FeatureTensors(rows, torch.device("cpu"), pad_token_id, tokens_per_batch=1600)
    fixed.fix_shapes()
    return {"padded": FeatureTensors(rows, torch.device("cpu"), pad_token_id),
            "packed": FeatureTensors(rows, torch.device("cpu"), pad_token_id, tokens_per_batch=1600), "fixed": fixed}


def test_a_compiled_step_over_feature_batches_always_gets_a_mask(tiny_bert_dir, windows, tmp_path):
    """A batch without padding drops its attention mask (a host wait saved in eager steps); compiled (cuda_graphs on,
    feature batches) it must keep one, or the step is compiled again for a mask of None."""
    _, rows = windows(tiny_bert_dir, tmp_path)
    store = FeatureTensors(rows, torch.device("cpu"), 0)
    same = [i for i in range(len(store)) if store.lengths[i] == store.lengths.max()][:1]  # no padding in it
    assert "attention_mask" not in store.batch(same)
    store.always_masked = True
    assert store.batch(same)["attention_mask"].all()


def _two_masks(model):
    """R-Drop's two passes made to differ without dropout (whose masks would differ from layout to layout): the
    second half's start logits shifted by 0.01 x the position (masked ones stay at finfo.min)."""
    def forward(**batch):
        out = model(**batch)
        n, width = out.start_logits.shape[0] // 2, out.start_logits.shape[1]
        out.start_logits = torch.cat([out.start_logits[:n], out.start_logits[n:] + 0.01 * torch.arange(width)])
        return out
    return forward


def _loss_and_grads(folder: str, span_level: str, batch: dict, trick: str):
    """The loss of `batch` and the gradients it leaves, with R-Drop (two passes made to differ), FGM or both."""
    from mrc_cli.tricks import Adversary

    torch.manual_seed(0)
    model = build_model(ModelConfig(name_or_path=folder, dropout=0.0, span_level=span_level), 128)
    loss_fn = (lambda: rdrop_loss(_two_masks(model), batch, 1.0)) if "rdrop" in trick else lambda: model(**batch).loss
    if "fgm" in trick:  # R-Drop's forward holds the rows twice: FGM's norms per feature of both halves
        loss = Adversary(model, "fgm", epsilon=0.5, alpha=0.2, steps=1).backward(
            loss_fn, lambda loss: loss.backward(), torch.enable_grad, torch.enable_grad(), batch.get("packing"))
    else:
        loss = loss_fn()
        loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("span_level", ["token", "word"])
@pytest.mark.parametrize("trick", ["none", "rdrop", "fgm", "rdrop_fgm"])
def test_fixed_shapes_leave_empty_slots_out_of_the_loss_and_gradients(tiny_bert_dir, windows, tmp_path, span_level,
                                                                       trick):
    """7 features in a row of 12+ slots: the loss (R-Drop's KL mean, FGM's per-feature epsilon included) and the
    gradients of packed rows as the features need them and of feature batches."""
    tokenizer, rows = windows(tiny_bert_dir, tmp_path)
    index = [5, 0, 9, 3, 11, 2, 7]
    batches = {name: store.batch(index) for name, store in _layouts(rows, tokenizer.pad_token_id).items()}
    fixed = batches["fixed"]["packing"]
    assert fixed.present.shape[0] > 7 and fixed.filled.tolist() == [True] * 7 + [False] * (fixed.present.shape[0] - 7)
    assert (batches["fixed"]["start_positions"][7:] == -100).all()
    results = {name: _loss_and_grads(tiny_bert_dir, span_level, batch, trick) for name, batch in batches.items()}
    (loss, grads) = results["padded"]
    for name in ("packed", "fixed"):
        assert torch.allclose(results[name][0], loss, atol=1e-6), name
        assert results[name][1].keys() == grads.keys()
        assert all(torch.allclose(results[name][1][n], grads[n], atol=1e-5) for n in grads), name
    if "rdrop" in trick:  # the two passes differ: a KL term that counts
        assert loss > _loss_and_grads(tiny_bert_dir, span_level, batches["padded"], "none")[0] + 1e-3


def test_fixed_shapes_leave_empty_slots_out_of_the_distillation_term(tiny_bert_dir, windows, tmp_path):
    """The teacher term's mean over windows counts the row's features only (the empty slots' targets hold no mass)."""
    from mrc_cli.distillation import TARGETS, DistilTask, TeacherTerm

    tokenizer, rows = windows(tiny_bert_dir, tmp_path)
    task = DistilTask()
    lengths = torch.tensor(FeatureTensors(rows, torch.device("cpu"), 0).lengths)
    inside = torch.arange(128) < lengths[:, None, None]  # (12, 1, 128)
    mass = torch.rand(12, 2, 128, generator=torch.Generator().manual_seed(0)) * inside
    task.targets = mass / mass.sum(-1, keepdim=True)  # a distribution over each window's tokens
    index = [5, 0, 9, 3, 11, 2, 7]
    results = []
    for store in _layouts(rows, tokenizer.pad_token_id).values():
        batch = task.batch(store, index, torch.tensor(index), 0)
        torch.manual_seed(0)
        model = build_model(ModelConfig(name_or_path=tiny_bert_dir, dropout=0.0), 128)
        TeacherTerm(alpha=0.5, temperature=2.0).install(model)
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    assert batch[TARGETS].shape[0] > 7 and (batch[TARGETS][7:] == 0).all()  # the fixed layout's empty slots
    (loss, grads), *others = results
    for other_loss, other_grads in others:
        assert torch.allclose(other_loss, loss, atol=1e-6)
        assert all(torch.allclose(other_grads[n], grads[n], atol=1e-5) for n in grads)


def _shapes(batch: dict) -> tuple:
    """The shapes of a batch's tensors and of its Packing's, and its host numbers (num_units, max_seqlen, tokens)."""
    packing = batch["packing"]
    return (tuple((key, tuple(value.shape) if torch.is_tensor(value) else value) for key, value in batch.items()
                  if key != "packing"),
            tuple(tuple(getattr(packing, f).shape) for f in ("unpack", "present", "repack", "cu_seqlens")),
            packing.max_seqlen, packing.tokens)


def test_every_row_of_an_epoch_has_the_same_shapes_with_fixed_shapes(tiny_bert_dir, windows, tmp_path):
    """All 344 quickstart windows in rows of 600 tokens: rows of varying feature counts, one set of tensor shapes,
    word level's number of units included."""
    tokenizer, rows = windows(tiny_bert_dir, tmp_path, None)
    store = FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id, tokens_per_batch=600)
    plan = [step[0] for step in epoch_plan(store.lengths.tolist(), 8, 1, seed=0, epoch=0, group_by_length=True,
                                           tokens_per_batch=600)]
    assert len({len(row) for row in plan}) > 3  # feature counts vary from row to row
    assert len({_shapes(store.batch(row)) for row in plan}) > 3  # and so do the shapes, as the features need them
    store.fix_shapes()
    shapes = {_shapes(store.batch(row)) for row in plan}
    assert len(shapes) == 1, shapes
    assert max(map(len, plan)) <= store.slots  # no row of the plan holds more than the slots
    assert dict(next(iter(shapes))[0])["num_units"] == int(store.units.max())


@pytest.mark.slow
def test_packed_rows_of_fixed_shapes_are_compiled_once(tiny_bert_dir, windows, tmp_path):
    """Forward and backward through torch.compile (static shapes, as the training step with train.cuda_graphs on)
    over rows of different feature counts: one compilation, and no recompilation (torch raises on one); the same rows
    as the features need them recompile at the second row."""
    import torch._dynamo
    from torch._dynamo.exc import RecompileError
    from torch._dynamo.utils import counters

    tokenizer, rows = windows(tiny_bert_dir, tmp_path, None)
    store = FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id, tokens_per_batch=600)
    plan = [step[0] for step in epoch_plan(store.lengths.tolist(), 8, 1, seed=0, epoch=0, group_by_length=True,
                                           tokens_per_batch=600)]
    plan = list({len(row): row for row in plan}.values())[:4]  # rows of 4 different feature counts
    model = build_model(ModelConfig(name_or_path=tiny_bert_dir, dropout=0.0), 128)
    torch._dynamo.reset()
    counters.clear()
    store.fix_shapes()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
        for row in plan:
            compiled(**store.batch(row)).loss.backward()
        assert counters["stats"]["unique_graphs"] == 1 and counters["frames"]["ok"] == 1, dict(counters)
        torch._dynamo.reset()
        store = FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id, tokens_per_batch=600)  # as needed
        compiled = torch.compile(model, mode="reduce-overhead", dynamic=False)
        compiled(**store.batch(plan[0])).loss.backward()
        with pytest.raises(RecompileError):
            compiled(**store.batch(plan[1]))
    torch._dynamo.reset()


def test_inference_on_packed_rows_gives_the_logits_of_feature_batches(tiny_bert_dir, windows, tmp_path):
    from mrc_cli.inference import OneProcess

    tokenizer, rows = windows(tiny_bert_dir, tmp_path)
    model = build_model(ModelConfig(name_or_path=tiny_bert_dir), 128)
    place = OneProcess(torch.device("cpu"))
    padded = predict_logits(model, rows, place, 4, "no", 128)
    packed = predict_logits(model, rows, place, 4, "no", 128, tokens_per_batch=400)
    assert len(inference_batches(FeatureTensors(rows, torch.device("cpu"), 0).lengths.tolist(), 4, 400)) == 3  # rows
    assert torch.allclose(torch.from_numpy(padded.start), torch.from_numpy(packed.start), atol=1e-5)
    assert abs(padded.loss - packed.loss) < 1e-6
    # a row ends with its features, not at the budget: one short question (a Reader call) pays for its own tokens
    widths = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                           with_kwargs=True)
    one = rows.select([0])
    alone = predict_logits(model, one, place, 4, "no", 128, tokens_per_batch=400)
    hook.remove()
    assert widths == [len(one[0]["input_ids"])] and widths[0] < 400
    assert torch.allclose(torch.from_numpy(alone.start[0]), torch.from_numpy(padded.start[0]), atol=1e-5)


# --- training ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def packed_run(tmp_path_factory, tiny_bert_dir):
    run_dir = tmp_path_factory.mktemp("packed") / "A"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=6, save_steps=3, keep_last=5, tokens_per_batch=600)
    return run_dir, train(cfg)


def test_packed_epochs_end_on_the_epoch_boundary(tiny_bert_dir, tmp_path):
    """Packed rows hold other features each epoch, so epochs differ in steps: --epochs 2 trains every feature twice
    and no step of a third epoch (the first epoch's length taken for both ran over or stopped short)."""
    from mrc_cli.batching import epoch_plan
    from mrc_cli.features import feature_lengths
    from mrc_cli.splits import featurize_file

    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", epochs=2, tokens_per_batch=300)
    cfg.data.dev_file = None
    train(cfg)
    lengths = feature_lengths(featurize_file(cfg.data.train_file, load_tokenizer(tiny_bert_dir), cfg.data,
                                             "train").features)
    plans = [len(epoch_plan(lengths, 8, 1, cfg.train.seed, epoch, True, tokens_per_batch=300)) for epoch in (0, 1)]
    assert plans[0] != plans[1]  # the case the first epoch's length got wrong
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = Counter(r["epoch"] for r in rows if "loss" in r)  # a log line per step
    assert sorted(epochs.items()) == [(0, plans[0]), (1, plans[1])], (epochs, plans)


def test_a_packed_run_logs_its_budget_and_trains_only_real_tokens(packed_run):
    run_dir, result = packed_run
    assert result.steps == 6 and result.metrics["f1"] >= 0
    log = (run_dir / "train.log").read_text()
    assert "token-budget batches: rows of 600 tokens" in log
    assert "effective batch 1 row = a row of 600 tokens per process x 1 accumulation x 1" in log  # not batch_size's 8
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shares = [r["real_token_share"] for r in rows if "real_token_share" in r]
    assert shares and min(shares) > 0.6  # padding is only the row's tail (feature batches of 8: 0.5-0.9 here)
    assert "tokens_per_batch: 600" in (run_dir / "config.yaml").read_text()


def test_a_resumed_packed_run_is_bitwise_the_uninterrupted_run(packed_run, tiny_bert_dir, tmp_path):
    run_dir_a, _ = packed_run
    run_dir_b = tmp_path / "B"
    (run_dir_b / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_dir_a / "checkpoints" / "step-000003", run_dir_b / "checkpoints" / "step-000003")
    # the checkpoint's budget wins over the command line's (the plan depends on it)
    cfg = tiny_run_config(tiny_bert_dir, run_dir_b, max_steps=6, save_steps=3, keep_last=5, resume="auto",
                          tokens_per_batch="auto")
    train(cfg)
    final_a = load_file(str(run_dir_a / "checkpoints" / "step-000006" / "model.safetensors"))
    final_b = load_file(str(run_dir_b / "checkpoints" / "step-000006" / "model.safetensors"))
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    state = lambda d: json.loads((d / "checkpoints" / "step-000006" / "trainer_state.json").read_text())  # noqa: E731
    assert state(run_dir_a) == state(run_dir_b)


def test_pretraining_refuses_a_token_budget(tiny_bert_dir, tmp_path):
    from typer.testing import CliRunner

    from mrc_cli.cli import app
    from mrc_cli.pretraining import pretrain

    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "pre", max_steps=2, tokens_per_batch=600)
    cfg.pretrain.data_files = [str(QUICKSTART / "en_train.json")]
    with pytest.raises(ConfigError, match="tokens_per_batch 600: this task cannot be trained on packed rows"):
        pretrain(cfg)
    # and so does its --dry-run, which is refused where the run would be
    result = CliRunner().invoke(app, ["pretrain", "--model", tiny_bert_dir, "--data", str(QUICKSTART / "en_train.json"),
                                      "--out", str(tmp_path / "pre2"), "--set", "train.tokens_per_batch=600",
                                      "--dry-run"])
    assert result.exit_code == 1 and "this task cannot be trained on packed rows" in result.stderr


def test_distillation_refuses_a_budget_below_the_longest_feature_before_the_teacher_runs(tiny_bert_dir, tmp_path,
                                                                                          monkeypatch):
    from typer.testing import CliRunner

    import mrc_cli.distillation
    from mrc_cli.cli import app
    from mrc_cli.distillation import distil

    teacher = tmp_path / "teacher"
    teacher.mkdir()
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "student", max_steps=2, tokens_per_batch=100)
    cfg.distil.teacher = str(teacher)
    monkeypatch.setattr(mrc_cli.distillation, "check_teacher", lambda cfg: None)
    monkeypatch.setattr(mrc_cli.distillation, "load_model", lambda path: pytest.fail("the teacher ran first"))
    with pytest.raises(ConfigError, match="tokens_per_batch 100 is below the longest feature"):
        distil(cfg)
    result = CliRunner().invoke(app, ["distil", "--teacher", str(teacher), "--student", tiny_bert_dir, "--train",
                                      str(QUICKSTART / "en_train.json"), "--output-dir", str(tmp_path / "s2"),
                                      "--set", "train.tokens_per_batch=100", "--set", "data.max_seq_length=128",
                                      "--set", "data.doc_stride=32", "--set", "data.max_query_length=32", "--dry-run"])
    assert result.exit_code == 1 and "tokens_per_batch 100 is below the longest feature" in result.stderr


def test_dry_run_says_how_many_features_a_step_holds(tiny_bert_dir, tmp_path):
    from typer.testing import CliRunner

    from mrc_cli.cli import app

    args = ["train", "--dry-run", "--model", tiny_bert_dir, "--train", str(QUICKSTART / "en_train.json"),
            "--max-seq-length", "128", "--doc-stride", "32", "--batch-size", "8", "--set",
            f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.max_query_length=32"]
    packed = CliRunner().invoke(app, [*args, "--set", "train.tokens_per_batch=600"])
    assert packed.exit_code == 0, packed.output
    line = packed.stdout.strip().splitlines()[-1]
    assert line.startswith("# 344 training features on cpu: micro-batches of rows of 600 tokens; ")
    per_step = float(line.split("; ")[1].split()[0])
    steps = int(line.split(", ")[-1].split()[0])
    assert 5 < per_step < 8 and per_step == round(344 / steps, 1)  # fewer than 8 a step: 600 tokens hold ~5.5
    plain = CliRunner().invoke(app, args)
    assert ("micro-batches of 8 features padded to the longest (train.tokens_per_batch auto: feature batches, as "
            "varlen attention runs on CUDA only); 8.0 features per optimizer step on average, 43 steps") in plain.stdout
    # rows of 128 tokens, 3 a step: the last 2 features cannot make a step's 3 rows
    accumulated = CliRunner().invoke(app, [*args, "--set", "train.grad_accum=3", "--set", "train.tokens_per_batch=128"])
    assert "97 steps per epoch (2 left over each epoch: fewer than a step's 3 micro-batches)" in accumulated.stdout
    huge = CliRunner().invoke(app, [*args, "--set", "train.tokens_per_batch=100000"])
    assert "warning: train.tokens_per_batch 100000 holds about" in huge.stdout and "8 x the mean length is" in huge.stdout


@pytest.mark.slow
def test_a_compiled_step_trains_as_the_eager_one(tiny_bert_dir, tmp_path):
    """train.cuda_graphs on: the step through torch.compile (on CPU without graphs, said in the log) gives the eager
    run's losses and weights, packed rows of varying feature counts in fixed shapes, compiled once (torch raises on a
    recompilation; no dropout: compiled code draws its own random numbers)."""
    import torch._dynamo

    torch._dynamo.reset()
    runs = {}
    for graphs in ("off", "on"):
        runs[graphs] = cfg = tiny_run_config(tiny_bert_dir, tmp_path / graphs, max_steps=4, save_steps=0,
                                             tokens_per_batch=600, cuda_graphs=graphs)
        cfg.model.dropout, cfg.data.dev_file = 0.0, None
        with torch._dynamo.config.patch(error_on_recompile=True):
            train(cfg)
    log = (tmp_path / "on" / "train.log").read_text()
    assert "CUDA graphs need a CUDA device; the step is compiled without them" in log
    assert re.search(r"every row has \d+ feature slots of 128 tokens", log)
    losses = [{r["step"]: r["loss"] for r in map(json.loads, (tmp_path / g / "metrics.jsonl").read_text().splitlines())
               if "loss" in r} for g in runs]
    # steps 2-4 start from the weights the earlier steps made (Adam moves near-zero gradients by ~lr whatever their
    # size, so the weights themselves differ by float noise of that order: compared through the losses)
    assert losses[0].keys() == losses[1].keys() and all(abs(losses[0][k] - losses[1][k]) < 1e-4 for k in losses[0])


def test_a_step_over_packed_rows_of_different_counts_weighs_every_feature_alike(tiny_bert_dir, windows, tmp_path):
    """2 processes x grad_accum 2: a step's 4 packed rows hold different numbers of features. Each micro-batch's
    share makes the step's loss, averaged over the ranks as DDP averages gradients, the mean over all the step's
    features: what one padded batch of them gives."""
    from mrc_cli.config import RunConfig
    from mrc_cli.training import TrainerState, _step_stream

    tokenizer, rows = windows(tiny_bert_dir, tmp_path, 40)
    store = FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id, tokens_per_batch=400)
    cfg = RunConfig()
    cfg.train.batch_size, cfg.train.grad_accum, cfg.train.group_by_length = 4, 2, False  # rows of mixed lengths
    task = SimpleNamespace(batch=lambda store, index, device_rows, epoch: {**store.batch(index, device_rows),
                                                                           "index": index},
                           loss_terms=lambda index, epoch: len(index))
    ranks = [next(_step_stream(task, store, cfg, TrainerState(), SimpleNamespace(
        process_index=rank, num_processes=2, device=torch.device("cpu")))) for rank in range(2)]
    counts = [len(batch["index"]) for _, batches, _, _ in ranks for batch in batches]
    assert len(counts) == 4 and len(set(counts)) > 1, counts
    torch.manual_seed(0)
    model = build_model(ModelConfig(name_or_path=tiny_bert_dir, dropout=0.0), 128).eval()

    def loss(batch):
        return model(**{key: value for key, value in batch.items() if key != "index"}).loss

    step_loss = sum(share * loss(batch) for _, batches, shares, _ in ranks
                    for batch, share in zip(batches, shares)) / 2
    every = [f for _, batches, _, _ in ranks for batch in batches for f in batch["index"]]
    assert torch.allclose(step_loss, loss(FeatureTensors(rows, torch.device("cpu"), tokenizer.pad_token_id).batch(every)),
                          atol=1e-5)
    # the rows' plain mean, which the step took before, weighs a feature by how few share its row
    plain = sum(loss(batch) for _, batches, _, _ in ranks for batch in batches) / 4
    assert not torch.allclose(plain, step_loss, atol=1e-3)


def test_a_packed_run_resumed_on_another_process_count_counts_its_batch_in_rows():
    """batch_size plays no part in packed rows: the resume note counts rows of the budget, not batch_size x rows."""
    from mrc_cli.config import RunConfig
    from mrc_cli.training import TrainerState, _keep_effective_batch

    cfg = RunConfig()
    cfg.train.tokens_per_batch, cfg.train.grad_accum = 2500, 1
    kept = _keep_effective_batch(cfg, TrainerState(processes=2), 1, cfg.train.batch_size)
    assert "train.grad_accum 1 -> 2 keeps the effective batch of 2 rows of 2500 tokens" in kept[0]
    cfg.train.grad_accum = 1
    changed = _keep_effective_batch(cfg, TrainerState(processes=2), 3, cfg.train.batch_size)
    assert "the effective batch changes from 2 rows of 2500 tokens to 3 rows of 2500 tokens" in changed[0]
