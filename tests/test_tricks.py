"""The training tricks (mrc_cli/tricks.py, multi-sample dropout in model.py): each does what it says, none is a
silent no-op, each resumes bitwise and runs on two processes."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig

from conftest import QUICKSTART, tiny_run_config
from mrc_cli.batching import FeatureTensors
from mrc_cli.compute import forward_flops
from mrc_cli.config import DataConfig, ModelConfig, TrainConfig, check_pretrain_config, check_train_config
from mrc_cli.errors import ConfigError
from mrc_cli.model import build_model
from mrc_cli.reader import evaluate_file
from mrc_cli.splits import featurize_file
from mrc_cli.tokenizer import load_tokenizer
from mrc_cli.tracking import read_metrics
from mrc_cli.training import train
from mrc_cli.tricks import EMA, Adversary, layer_lr_scales, rdrop_loss


@pytest.fixture(scope="module")
def batch(tiny_bert_dir, tmp_path_factory) -> dict:
    """8 labelled training windows of the quickstart data, tokenized for the tiny BERT."""
    tokenizer = load_tokenizer(tiny_bert_dir)
    data = DataConfig(max_seq_length=128, doc_stride=32, max_query_length=32, cache_dir=str(tmp_path_factory.mktemp("c")))
    split = featurize_file(str(QUICKSTART / "en_train.json"), tokenizer, data, "train")
    return FeatureTensors(split.features.select(range(8)), torch.device("cpu"), tokenizer.pad_token_id or 0).batch(list(range(8)))


def _model(folder: str, **model_cfg):
    """The tiny model with its own dropout (0.1) unless `model_cfg` says otherwise."""
    torch.manual_seed(0)
    return build_model(ModelConfig(name_or_path=folder, **{"dropout": None, **model_cfg}), max_seq_length=128)


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step-{step:06d}" / "model.safetensors"))


# --- layer-wise lr decay ------------------------------------------------------------------------------------------


def test_llrd_gives_each_depth_its_factor_bert_and_albert(tiny_bert_dir, tiny_albert_dir, tiny_encoder_dir):
    def factors(model, decay):
        names = {id(p): n for n, p in model.named_parameters()}
        return {names[id(p)]: scale for scale, params in layer_lr_scales(model, decay) for p in params}

    bert = factors(_model(tiny_bert_dir), 0.5)  # 2 layers: head 1, layer 1 0.5, layer 0 0.25, embeddings 0.125
    assert bert["qa_outputs.weight"] == 1
    assert bert["encoder.encoder.layer.1.output.dense.weight"] == 0.5
    assert bert["encoder.encoder.layer.0.attention.self.query.weight"] == 0.25
    assert bert["encoder.embeddings.word_embeddings.weight"] == bert["encoder.embeddings.LayerNorm.bias"] == 0.125
    assert len(bert) == len(list(_model(tiny_bert_dir).parameters()))

    albert = factors(_model(tiny_albert_dir), 0.5)  # one shared layer group: head 1, the group 0.5, embeddings 0.25
    assert albert["qa_outputs.bias"] == 1
    assert {v for k, v in albert.items() if "albert_layer_groups" in k} == {0.5}
    assert albert["encoder.embeddings.word_embeddings.weight"] == 0.25
    assert albert["encoder.encoder.embedding_hidden_mapping_in.weight"] == 0.25  # the factorised embedding's projection

    assert [scale for scale, _ in layer_lr_scales(_model(tiny_bert_dir), 1.0)] == [1.0]  # off: one group

    # ELECTRA's projection of its narrower embeddings is an embedding's, not the head's; MPNet's relative position
    # table, which every layer reads, goes with the lowest layer
    electra = factors(_model(tiny_encoder_dir("electra")), 0.5)
    assert electra["encoder.embeddings_project.weight"] == electra["encoder.embeddings.word_embeddings.weight"] == 0.125
    mpnet = factors(_model(tiny_encoder_dir("mpnet")), 0.5)
    assert mpnet["encoder.encoder.relative_attention_bias.weight"] == 0.25


def test_llrd_first_step_moves_each_depth_by_its_lr(tiny_bert_dir, tmp_path):
    """Adam's first step moves every weight by about lr (its update is g/|g|): the largest move per depth follows
    the decay."""
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=1, save_steps=1, warmup=0.0, llrd=0.5,
                          weight_decay=0.0)
    cfg.data.dev_file = None
    train(cfg)
    before, after = load_file(str(Path(tiny_bert_dir) / "model.safetensors")), _weights(tmp_path / "run", 1)
    move = {k: (after[f"encoder.{k}"] - before[k]).abs().max().item() for k in before if f"encoder.{k}" in after}
    lr = cfg.train.lr
    assert move["encoder.layer.1.output.dense.weight"] == pytest.approx(lr * 0.5, rel=0.02)
    assert move["encoder.layer.0.output.dense.weight"] == pytest.approx(lr * 0.25, rel=0.02)
    assert move["embeddings.word_embeddings.weight"] == pytest.approx(lr * 0.125, rel=0.02)
    assert "layer-wise lr decay 0.5: 4 depths" in (tmp_path / "run" / "train.log").read_text()


# --- R-Drop -------------------------------------------------------------------------------------------------------


def test_rdrop_adds_the_kl_of_two_dropout_masks(tiny_bert_dir, batch):
    model = _model(tiny_bert_dir, dropout=0.1).train()
    twice = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in batch.items()}
    torch.manual_seed(1)
    plain = model(**twice).loss  # the same two dropout masks as rdrop_loss draws below
    torch.manual_seed(1)
    regularised = rdrop_loss(model, batch, alpha=4.0)
    assert regularised > plain + 1e-3  # a KL term > 0: the two halves saw different masks
    model.eval()  # no dropout: the two halves agree, the KL is 0 and the loss is the plain one
    assert torch.allclose(rdrop_loss(model, batch, alpha=4.0), model(**batch).loss, atol=1e-6)


def test_rdrop_at_the_default_dropout_is_refused(tiny_bert_dir, tmp_path):
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=1, rdrop_alpha=1.0)
    cfg.model.dropout = ModelConfig().dropout  # mrc-cli's default: 0
    with pytest.raises(ConfigError, match=r"rdrop_alpha 1 does nothing: the encoder has no dropout \(model.dropout is 0 "
                                          r"by default\); set model.dropout above 0 \(e.g. --set model.dropout=0.1\)"):
        train(cfg)
    # ALBERT v2's dropout is all 0 but its classifier's, a head AutoModel does not build: no masks to compare either
    from transformers import AlbertConfig

    from mrc_cli.model import check_dropout_tricks

    albert_v2 = AlbertConfig(hidden_dropout_prob=0, attention_probs_dropout_prob=0, classifier_dropout_prob=0.1)
    with pytest.raises(ConfigError, match="rdrop_alpha 1 does nothing"):
        check_dropout_tricks(albert_v2, 1.0, 0)
    check_dropout_tricks(AlbertConfig(hidden_dropout_prob=0.1), 1.0, 4)


# --- adversarial training -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fgm", "pgd"])
def test_adversary_moves_each_features_embeddings_inside_epsilon(tiny_bert_dir, batch, kind):
    model = _model(tiny_bert_dir, dropout=0.0).train()
    adversary = Adversary(model, kind, epsilon=0.5, alpha=0.2, steps=3)
    seen = []  # embedding outputs of every forward pass, after the adversary's hook
    model.encoder.get_input_embeddings().register_forward_hook(lambda m, i, out: seen.append(out.detach().clone()))
    loss = adversary.backward(lambda: model(**batch).loss, lambda l: l.backward(), torch.enable_grad, torch.enable_grad())
    assert len(seen) == (2 if kind == "fgm" else 4)  # clean, (pgd: 2 climbing steps,) the adversarial pass
    norms = [(s - seen[0]).flatten(1).norm(dim=1) for s in seen[1:]]
    if kind == "fgm":
        assert torch.allclose(norms[-1], torch.full((8,), 0.5), atol=1e-4)  # epsilon along the gradient, per feature
    else:
        assert torch.allclose(norms[0], torch.full((8,), 0.2), atol=1e-4)  # the first step: alpha
        assert (norms[-1] <= 0.5 + 1e-4).all() and (norms[-1] > 0.39).all()  # 3 steps of 0.2, projected onto 0.5

    adversarial_grad = model.qa_outputs.weight.grad.clone()
    model.zero_grad()
    assert torch.equal(model(**batch).loss, loss)  # the clean loss is what the step reports
    model(**batch).loss.backward()
    assert not torch.allclose(model.qa_outputs.weight.grad, adversarial_grad)  # the adversarial loss was added
    assert adversary._delta is None  # no perturbation is left on for evaluation


# --- EMA ----------------------------------------------------------------------------------------------------------


def test_ema_averages_with_a_warm_up_and_swaps_exactly():
    layer = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.0)
    ema = EMA(layer, decay=0.99)
    for value in (1.0, 2.0):
        with torch.no_grad():
            layer.weight.fill_(value)
        ema.update()
    # decays min(0.99, 1/10) then min(0.99, 2/11): 0 -> 0.9 -> 0.9 * 2/11 + 2 * 9/11
    expected = 0.9 * 2 / 11 + 2 * 9 / 11
    assert torch.allclose(ema.shadow[0], torch.full((1, 2), expected))
    with ema.applied_to_model():
        assert torch.allclose(layer.weight, torch.full((1, 2), expected))
        state = ema.state_dict()
    assert torch.equal(layer.weight, torch.full((1, 2), 2.0))  # training weights back
    assert torch.equal(state["training_weights"]["weight"], torch.full((1, 2), 2.0)) and state["updates"] == 2
    with pytest.raises(RuntimeError, match="inside applied_to_model"):
        ema.state_dict()


def test_ema_weights_are_what_the_run_evaluates_and_saves(tiny_bert_dir, tmp_path):
    run_dir = tmp_path / "ema"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=4, eval_steps=4, save_steps=4, ema_decay=0.5)
    result = train(cfg)
    checkpoint = run_dir / "checkpoints" / "step-000004"
    training = torch.load(checkpoint / "training_state.pt", weights_only=True)["ema"]
    saved = _weights(run_dir, 4)
    assert training["updates"] == 4
    assert not torch.equal(saved["qa_outputs.weight"], training["training_weights"]["qa_outputs.weight"])
    # `mrc eval` of the checkpoint gives what the run gave: the run evaluated the shadow weights it saved (null odds
    # are continuous scores: they differ as soon as the weights do, where EM/F1 of a tiny model may not)
    again = evaluate_file(str(checkpoint), cfg.data.dev_file, str(tmp_path / "eval"))
    assert (again["exact"], again["f1"]) == (result.metrics["exact"], result.metrics["f1"])
    odds_run, odds_eval = (json.loads((folder / "null_odds.json").read_text()) for folder in (run_dir, tmp_path / "eval"))
    assert odds_run.keys() == odds_eval.keys()
    assert all(odds_run[k] == pytest.approx(odds_eval[k], abs=1e-5) for k in odds_run)


# --- multi-sample dropout ------------------------------------------------------------------------------------------


def test_multi_sample_dropout_averages_masks_in_training_only(tiny_bert_dir, batch):
    plain, sampled = _model(tiny_bert_dir), _model(tiny_bert_dir, multi_sample_dropout=4)
    calls = []
    sampled.head_dropout.register_forward_hook(lambda *a: calls.append(1))
    sampled.train()
    torch.manual_seed(0)
    out = sampled(**batch)
    assert len(calls) == 4
    plain.train()
    torch.manual_seed(0)
    assert not torch.allclose(plain(**batch).loss, out.loss)  # four masks on the head, not the plain loss
    plain.eval(), sampled.eval()
    assert torch.equal(plain(**batch).start_logits, sampled(**batch).start_logits) and len(calls) == 4


def test_multi_sample_dropout_at_the_default_dropout_is_refused(tiny_bert_dir):
    with pytest.raises(ConfigError, match="multi_sample_dropout 4 does nothing"):
        build_model(ModelConfig(name_or_path=tiny_bert_dir, multi_sample_dropout=4), max_seq_length=128)


def test_the_default_model_trains_without_dropout(tiny_bert_dir):
    """model.dropout's default 0 reaches every dropout of the encoder (the tiny config has 0.1 hidden dropout), and
    null keeps the model's."""
    rates = lambda model: {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}  # noqa: E731
    assert rates(build_model(ModelConfig(name_or_path=tiny_bert_dir), max_seq_length=128)) == {0.0}
    assert 0.1 in rates(_model(tiny_bert_dir))


# --- head warm-up ------------------------------------------------------------------------------------------------


def _encoder_and_head(weights: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    return ({k: v for k, v in weights.items() if k.startswith("encoder.")},
            {k: v for k, v in weights.items() if not k.startswith("encoder.")})


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _pretrained_encoder(folder: str) -> dict[str, torch.Tensor]:
    from transformers import AutoModel

    return {f"encoder.{k}": v for k, v in AutoModel.from_pretrained(folder).state_dict().items()
            if not k.startswith("pooler.")}  # the span model drops the pooler


def _assert_head_alone_then_everything(run_dir: Path, pretrained: str, warmup_steps: int, steps: int) -> None:
    """The checkpoints of every step: the encoder bitwise the pretrained one up to `warmup_steps`, the head moving
    at each step; both moving after it."""
    start = _pretrained_encoder(pretrained)
    before = None
    for step in range(1, steps + 1):
        encoder, head = _encoder_and_head(_weights(run_dir, step))
        assert _same(encoder, start) == (step <= warmup_steps), step
        assert before is None or not _same(head, before[1]), step
        assert before is None or step <= warmup_steps or not _same(encoder, before[0]), step
        before = encoder, head


def test_head_warmup_trains_the_head_alone_then_everything(tiny_bert_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=6, save_steps=1, keep_last=10, head_warmup=0.5,
                          grad_accum=2)
    cfg.data.dev_file = None
    train(cfg)
    _assert_head_alone_then_everything(run_dir, tiny_bert_dir, 3, 6)
    log = (run_dir / "train.log").read_text()
    assert "head warm-up: steps 1-3 train the head only; the encoder is frozen" in log
    assert "head warm-up: steps 1-3 trained the head only; the encoder trains from step 4" in log
    # the warm-up's backward ends at the head: counted as forward passes only
    compute = {r["step"]: r["compute"] for r in read_metrics(run_dir / "metrics.jsonl") if "compute" in r}
    state = [json.loads((run_dir / f"checkpoints/step-00000{s}/trainer_state.json").read_text()) for s in (3, 6)]
    assert state[0]["head_only"] == [state[0]["samples"], state[0]["tokens"], state[0]["token_pairs"]] and state[0]["samples"] > 0
    assert state[1]["head_only"] == state[0]["head_only"]
    assert compute[3]["backward_passes"] == 0 and compute[3]["forward_passes"] == state[0]["samples"]
    assert compute[6]["backward_passes"] == state[1]["samples"] - state[0]["samples"]
    config = AutoConfig.from_pretrained(tiny_bert_dir)
    assert compute[3]["flops"] == forward_flops(config, state[0]["tokens"], state[0]["token_pairs"])
    # made 4x longer, the warm-up stays its 3 steps: 24 x 0.5 = 12 would freeze the encoder again for steps 7-12
    cfg.train.resume, cfg.train.max_steps = "auto", 24
    train(cfg)
    again = (run_dir / "train.log").read_text()[len(log):]
    assert "head warm-up" not in again and "24 optimizer steps" in again


def test_a_run_resumed_inside_the_head_warmup_is_bitwise_the_uninterrupted_one(tiny_bert_dir, tmp_path):
    def run(name: str, **extra):
        cfg = tiny_run_config(tiny_bert_dir, tmp_path / name, max_steps=6, save_steps=2, keep_last=5, head_warmup=0.5,
                              llrd=0.8, ema_decay=0.5, **extra)
        cfg.data.dev_file = None
        return train(cfg)

    run("whole")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "whole/checkpoints/step-000002", tmp_path / "resumed/checkpoints/step-000002")
    run("resumed", resume="auto")
    assert _same(_weights(tmp_path / "whole", 6), _weights(tmp_path / "resumed", 6))
    states = [json.loads((tmp_path / n / "checkpoints/step-000006/trainer_state.json").read_text())
              for n in ("whole", "resumed")]
    assert states[0] == states[1]
    # EMA's shadow (model.safetensors) of a frozen encoder is that encoder: unchanged over the warm-up
    assert _same(_encoder_and_head(_weights(tmp_path / "whole", 2))[0], _pretrained_encoder(tiny_bert_dir))
    assert "head warm-up: steps 3-3 train the head only" in (tmp_path / "resumed" / "train.log").read_text()


@pytest.mark.slow
def test_two_processes_warm_the_head_up_with_the_encoder_s_gradients_dropped(tiny_bert_dir, tmp_path):
    """DDP fails a step after one where a parameter it wrapped had no gradient: there the encoder keeps requiring
    gradients, which are dropped before the optimizer step."""
    from test_training import _assert_two_ranks_trained, _torchrun

    run_dir = tmp_path / "ddp"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=4, save_steps=1, keep_last=10, head_warmup=0.5)
    cfg.data.dev_file = None
    done = _torchrun(cfg, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    _assert_two_ranks_trained(run_dir, 4)
    _assert_head_alone_then_everything(run_dir, tiny_bert_dir, 2, 4)
    assert "under 2 processes DDP needs the encoder's gradients" in (run_dir / "train.log").read_text()
    state = json.loads((run_dir / "checkpoints/step-000004/trainer_state.json").read_text())
    assert state["head_only"] == [0, 0, 0]  # the encoder's backward ran: full steps


@pytest.mark.parametrize("settings, problem", [
    ({"head_warmup": -0.1}, "train.head_warmup is a fraction of the steps in \\[0, 1\\)"),
    ({"head_warmup": 1.0}, "train.head_warmup is a fraction of the steps in \\[0, 1\\)"),
    ({"head_warmup": 0.1, "adversarial": "fgm"}, "train.head_warmup: train.adversarial fgm moves the embeddings"),
])
def test_bad_head_warmup_settings_are_refused(settings, problem):
    with pytest.raises(ConfigError, match=problem):
        check_train_config(TrainConfig(**settings))


def test_a_head_warmup_of_no_step_and_one_in_pretraining_are_refused(tiny_bert_dir, tmp_path):
    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=6, head_warmup=0.1)
    with pytest.raises(ConfigError, match="train.head_warmup 0.1 of 6 steps is no step: raise it to at least 0.167"):
        train(cfg)
    cfg.pretrain.text_files = ["corpus.txt"]
    with pytest.raises(ConfigError, match="train.head_warmup 0.1 belongs to span fine-tuning"):
        check_pretrain_config(cfg)


# --- every trick: config checks, exact resume, two processes ------------------------------------------------------


@pytest.mark.parametrize("settings, problem", [
    ({"llrd": 0.0}, "train.llrd is a factor in \\(0, 1\\]"), ({"llrd": 1.5}, "train.llrd is a factor"),
    ({"ema_decay": 1.0}, "train.ema_decay must be in \\[0, 1\\)"),
    ({"rdrop_alpha": -1.0}, "rdrop_alpha must be a finite number, 0 or more"),
    ({"rdrop_alpha": math.inf}, "train.rdrop_alpha must be a finite number, 0 or more \\(got inf\\)"),
    ({"adversarial": "fgm", "adv_epsilon": math.inf}, "train.adv_epsilon and adv_alpha must be finite and > 0"),
    ({"adversarial": "pgd", "adv_alpha": math.nan}, "train.adv_epsilon and adv_alpha must be finite and > 0"),
])
def test_bad_trick_settings_are_refused(settings, problem):
    with pytest.raises(ConfigError, match=problem):
        check_train_config(TrainConfig(**settings))


ALL_TRICKS = {"llrd": 0.8, "adversarial": "fgm", "ema_decay": 0.9, "rdrop_alpha": 1.0}


@pytest.mark.parametrize("tricks", [ALL_TRICKS, {"adversarial": "pgd", "grad_accum": 2}], ids=["fgm+llrd+ema+rdrop+msd", "pgd"])
def test_a_resumed_run_with_tricks_is_bitwise_the_uninterrupted_one(tiny_bert_dir, tmp_path, tricks):
    def run(name: str, **extra):
        cfg = tiny_run_config(tiny_bert_dir, tmp_path / name, max_steps=4, save_steps=2, keep_last=5, **tricks, **extra)
        cfg.data.dev_file = None
        cfg.model.multi_sample_dropout = 2
        return train(cfg)

    run("whole")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "whole/checkpoints/step-000002", tmp_path / "resumed/checkpoints/step-000002")
    run("resumed", resume="auto")
    whole, resumed = _weights(tmp_path / "whole", 4), _weights(tmp_path / "resumed", 4)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    if "ema_decay" in tricks:
        states = [torch.load(tmp_path / n / "checkpoints/step-000004/training_state.pt", weights_only=True)["ema"]
                  for n in ("whole", "resumed")]
        assert all(torch.equal(v, states[1]["training_weights"][k]) for k, v in states[0]["training_weights"].items())
    assert not torch.equal(_weights(tmp_path / "whole", 2)["qa_outputs.weight"], resumed["qa_outputs.weight"])


@pytest.mark.slow
def test_two_processes_train_with_every_trick(tiny_bert_dir, tmp_path):
    from test_training import _assert_two_ranks_trained, _torchrun

    run_dir = tmp_path / "ddp"
    cfg = tiny_run_config(tiny_bert_dir, run_dir, max_steps=4, save_steps=2, **ALL_TRICKS)
    cfg.data.dev_file = None
    cfg.model.multi_sample_dropout = 2
    done = _torchrun(cfg, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    _assert_two_ranks_trained(run_dir, 4)
    assert torch.load(run_dir / "checkpoints/step-000004/training_state.pt", weights_only=True)["ema"]["updates"] == 4
