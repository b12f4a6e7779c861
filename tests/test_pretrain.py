"""Pre-training (mrc pretrain): whole-word masks on real SQuAD (WordPiece) and CMRC (jieba) text, BERT's 15 % and
80/10/10, masks as a pure function of (seed, epoch, sequence); the corpus deduplicated, with the eval contexts left
out or kept; sequences cut between words; end to end from the CLI on a tiny BERT: the run's files, the output folder
fine-tuned by `mrc train`, a resumed run bitwise the uninterrupted one; ALBERT with a fresh and with a loaded head."""

from __future__ import annotations

import copy
import json
import re
import shutil
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import QUICKSTART, losses_on_a_fixed_batch, shared_file, write_squad
from mrc_cli.batching import FeatureTensors
from mrc_cli.cli import app
from mrc_cli.config import DataConfig, ModelConfig, PretrainConfig
from mrc_cli.corpus import build_sequences, collect_texts
from mrc_cli.errors import DataError
from mrc_cli.masking import IGNORE_INDEX, MaskingRule
from mrc_cli.model import build_model
from mrc_cli.pretraining import MaskedLMTask, build_masked_lm
from mrc_cli.tracking import read_metrics


def _task(tokenizer, sequences, whole_word: bool = True, seed: int = 0) -> MaskedLMTask:
    task = MaskedLMTask()
    task.use(sequences, MaskingRule(whole_word, 0.15, tokenizer.mask_token_id, len(tokenizer), seed))
    return task


def _masked(sequences, task: MaskedLMTask, index: list[int], epoch: int = 0) -> dict:
    """The training batch of `index` with, beside it, the word ids and original ids it was made from."""
    store = FeatureTensors(sequences, torch.device("cpu"), 0)
    plain = store.batch(index)
    batch = task.batch(store, index, torch.tensor(index), epoch)
    return {**batch, "word_ids": plain["word_ids"], "original": plain["input_ids"]}


def _real_sequences(name: str, tokenizer, segmenter: str):
    corpus = collect_texts(PretrainConfig(data_files=[str(shared_file(name))]), [])
    return build_sequences(corpus.texts, tokenizer, DataConfig(max_seq_length=128, word_segmenter=segmenter))


# --- 1. masks on real text -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "segmenter"), [("squad_v1.1_train_head.json", "tokenizer"),
                                                 ("cmrc2018_dev.json", "jieba")])
def test_whole_word_masks_take_every_sub_token_of_a_word_and_nothing_else(name, segmenter, wordpiece_tokenizer):
    sequences, summary = _real_sequences(name, wordpiece_tokenizer, segmenter)
    index = list(range(len(sequences)))
    shares = {}
    for whole_word in (True, False):
        batch = _masked(sequences, _task(wordpiece_tokenizer, sequences, whole_word), index)
        predicted = batch["labels"] != IGNORE_INDEX
        assert not predicted[batch["word_ids"] < 0].any()  # [CLS], [SEP], padding
        assert torch.equal(batch["labels"][predicted], batch["original"][predicted])
        assert torch.equal(batch["input_ids"][~predicted], batch["original"][~predicted])  # nothing else changed
        tokens_of = defaultdict(list)  # (sequence, word) -> whether each of its tokens is predicted
        word_ids, flags = batch["word_ids"].tolist(), predicted.tolist()
        for row, col in torch.nonzero(batch["word_ids"] >= 0).tolist():
            tokens_of[(row, word_ids[row][col])].append(flags[row][col])
        whole = sum(all(flags) for flags in tokens_of.values() if len(flags) > 1)
        partial = sum(any(flags) and not all(flags) for flags in tokens_of.values())
        if whole_word:
            # every word all or nothing, and the check has teeth: predicted words of several tokens (SQuAD 794,
            # CMRC 18.7k); token masking splits 1.6k and 35k of them
            assert partial == 0 and whole > 300, (partial, whole)
            assert len(tokens_of) == summary.words
            shares["words"] = sum(any(flags) for flags in tokens_of.values()) / len(tokens_of)
            shown = batch["input_ids"][predicted]
            labels = batch["labels"][predicted]
            shares["mask"] = (shown == wordpiece_tokenizer.mask_token_id).float().mean().item()
            shares["unchanged"] = (shown == labels).float().mean().item()
            shares["tokens"] = int(predicted.sum())
        else:  # token masking splits words: the same check fails on it
            assert partial > 300, partial
    # measured: SQuAD 96.6k words (5.2k of several tokens), 15.5k tokens predicted, shares 0.148 / 0.804 / 0.097;
    # CMRC 247k jieba words, 60k tokens, 0.150 / 0.798 / 0.100. The tolerances are 4 standard errors of SQuAD's.
    assert shares["tokens"] > 15_000
    assert shares["words"] == pytest.approx(0.15, abs=0.005)
    assert shares["mask"] == pytest.approx(0.8, abs=0.015)
    assert shares["unchanged"] == pytest.approx(0.1, abs=0.01)
    assert 1 - shares["mask"] - shares["unchanged"] == pytest.approx(0.1, abs=0.01)  # random tokens


def test_masks_are_a_function_of_seed_epoch_and_sequence_only(wordpiece_tokenizer):
    """Whatever batch a sequence is in, and at whatever position, it gets the same masks (a resumed run, another
    process count); another epoch or seed gives others."""
    corpus = collect_texts(PretrainConfig(data_files=[str(QUICKSTART / "en_train.json")]), [])
    sequences, _ = build_sequences(corpus.texts, wordpiece_tokenizer, DataConfig(max_seq_length=128))
    task = _task(wordpiece_tokenizer, sequences)

    def masks(index, epoch=0, seed_task=task):
        batch = _masked(sequences, seed_task, index, epoch)
        lengths = [len(sequences[i]["input_ids"]) for i in index]
        return {i: (batch["input_ids"][row, :n].tolist(), batch["labels"][row, :n].tolist())
                for row, (i, n) in enumerate(zip(index, lengths))}

    everything = masks(list(range(len(sequences))))
    assert masks(list(range(len(sequences)))) == everything  # the same call twice
    mixed = masks([30, 2, 17, 5])  # another batch, order and width
    assert mixed == {i: everything[i] for i in mixed}
    other_epoch = masks(list(range(len(sequences))), epoch=1)
    other_seed = masks(list(range(len(sequences))), seed_task=_task(wordpiece_tokenizer, sequences, seed=1))
    for other in (other_epoch, other_seed):
        assert sum(other[i][1] != everything[i][1] for i in everything) >= 0.9 * len(everything)


# --- 2. the corpus -------------------------------------------------------------------------------------------------


def test_contexts_are_deduplicated_and_eval_contexts_left_out_or_kept(tmp_path):
    c1, c2, c3 = "The first context is here.", "A second context, also asked about in dev.", "Only in dev."
    qa = lambda i: {"id": f"q{i}", "question": "What?", "answers": [{"text": "context", "answer_start": 4}]}
    train = write_squad(tmp_path / "train.json", [(c1, [qa(1), qa(2), qa(3)]), (c2, [qa(4)]),
                                                   ("The  first context\nis here.", [qa(5)]),  # c1, other whitespace
                                                   ("A paragraph nobody asked about.", [])])  # a context all the same
    dev = write_squad(tmp_path / "dev.json", [(c2, [qa(6), qa(7)]), (c3, [qa(8)])])
    notes = tmp_path / "notes.txt"
    # the last document holds a dev context as one of its lines
    notes.write_text(f"Doc one,\nits second line.\n\n\n\nDoc two.\r\n\r\nOnly in dev.\n\nBefore.\n{c2}\nAfter.\n",
                     encoding="utf-8")

    left_out = collect_texts(PretrainConfig(data_files=[str(train)], text_files=[str(notes)]), [str(dev)])
    assert left_out.texts == [c1, "A paragraph nobody asked about.", "Doc one,\nits second line.", "Doc two.",
                              "Before.\nAfter."]
    assert [(s.kind, s.records, s.distinct, s.eval_matches) for s in left_out.sources] == [
        ("contexts", 6, 3, 1), ("text", 4, 4, 2)]
    assert (left_out.duplicates, left_out.eval_contexts, left_out.eval_matches) == (3, 2, 3)
    assert "left out: 3 texts that are contexts of" in "\n".join(left_out.summary())

    kept = collect_texts(PretrainConfig(data_files=[str(train)], text_files=[str(notes)], include_eval_contexts=True),
                         [str(dev)])
    assert kept.texts == [c1, c2, "A paragraph nobody asked about.", "Doc one,\nits second line.", "Doc two.", c3,
                          f"Before.\n{c2}\nAfter."]
    assert "included: 3 texts that are contexts of" in "\n".join(kept.summary())
    # a document repeated is one text: its eval line counted once; text that only begins like JSON is text
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("\n\n".join([f"Before.\n{c2}\nAfter."] * 3) + "\n\n[1]\nA footnote.\n", encoding="utf-8")
    once = collect_texts(PretrainConfig(text_files=[str(repeated)]), [str(dev)])
    assert once.texts == ["Before.\nAfter.", "[1]\nA footnote."] and once.eval_matches == 1
    # the eval file given as text: its questions and answers would be trained on, its contexts not left out
    for given in (dev, tmp_path / "dev.jsonl"):
        if given.suffix == ".jsonl":
            given.write_text(json.dumps({"id": "q", "context": c2, "question": "What?"}) + "\n")
        with pytest.raises(DataError, match=re.escape(f"{given}: JSON, not plain text: give SQuAD-style data as --data")):
            collect_texts(PretrainConfig(text_files=[str(given)]), [str(dev)])


def test_an_eval_context_wrapped_inside_a_document_is_cut_out_and_the_rest_kept(tmp_path):
    import textwrap

    en_dev, zh_dev = QUICKSTART / "en_dev.json", QUICKSTART / "zh_dev.json"
    en = json.loads(en_dev.read_text())["data"][0]["paragraphs"][0]["context"]
    zh = json.loads(zh_dev.read_text())["data"][0]["paragraphs"][0]["context"]
    wrapped = "\n".join(textwrap.wrap(en, 80))
    zh_wrapped = "\n".join(zh[i:i + 30] for i in range(0, len(zh), 30))  # Chinese wraps without spaces
    books = tmp_path / "books.txt"
    books.write_text(f"Chapter 1\n{wrapped}\n\nChapter 2\nNo dev text here.\n\n第三章\n{zh_wrapped}\n完。\n\n"
                     f"Two in a row: {en} {wrapped}\n", encoding="utf-8")
    cfg = PretrainConfig(text_files=[str(books)])

    left_out = collect_texts(cfg, [str(en_dev), str(zh_dev)])
    assert left_out.texts == ["Chapter 1", "Chapter 2\nNo dev text here.", "第三章\n完。", "Two in a row:"]
    assert (left_out.sources[0].eval_matches, left_out.eval_inside) == (4, 4)
    assert f"left out: 4 texts that are contexts of {en_dev}, {zh_dev}, 4 of them cut out of a longer text" in \
        "\n".join(left_out.summary())
    kept = collect_texts(PretrainConfig(text_files=[str(books)], include_eval_contexts=True), [str(en_dev)])
    assert kept.texts[0] == f"Chapter 1\n{wrapped}" and kept.eval_matches == 3
    assert "included: 3 texts that are contexts of" in "\n".join(kept.summary())

def test_long_texts_become_near_equal_sequences_cut_between_words(wordpiece_tokenizer):
    text = " ".join(json.loads((QUICKSTART / "en_train.json").read_text())["data"][0]["paragraphs"][0]["context"]
                    for _ in range(4))
    sequences, summary = build_sequences([text, "Short."], wordpiece_tokenizer, DataConfig(max_seq_length=64))
    full = wordpiece_tokenizer(text, add_special_tokens=False)
    rows = sequences[:]
    inner = [ids[1:-1] for ids in rows["input_ids"]]
    assert all(ids[0] == wordpiece_tokenizer.cls_token_id and ids[-1] == wordpiece_tokenizer.sep_token_id
               for ids in rows["input_ids"])
    assert sum(inner[:-1], []) == full["input_ids"]  # every token once, in order
    assert inner[-1] == wordpiece_tokenizer("Short.", add_special_tokens=False)["input_ids"]  # not packed with others
    lengths = [len(ids) for ids in inner[:-1]]
    assert len(lengths) == -(-len(full["input_ids"]) // 62) and max(lengths) <= 62 and max(lengths) - min(lengths) <= 8
    words = [w[1:-1] for w in rows["word_ids"][:-1]]
    assert all(a[-1] != b[0] for a, b in zip(words, words[1:]))  # no word split across two sequences
    assert summary.sequences == len(inner) and summary.tokens == sum(map(len, inner))


def test_the_sequence_summary_gives_the_share_of_unknown_tokens(wordpiece_tokenizer):
    """As the features' summary does: an English vocabulary reads little of Chinese text."""
    _, english = build_sequences(["Paris is the capital of France."], wordpiece_tokenizer, DataConfig())
    _, chinese = build_sequences(["北京是中国的首都。"], wordpiece_tokenizer, DataConfig())
    assert english.unknown_tokens == 0 and "unknown token" not in str(english)
    assert chinese.unknown_tokens > 0.1 and "of the tokens are the tokenizer's unknown token" in str(chinese)


# --- 3. the model learns -------------------------------------------------------------------------------------------


def test_optimizer_steps_lower_the_masked_lm_loss_on_a_fixed_batch(tiny_bert_dir, wordpiece_tokenizer):
    corpus = collect_texts(PretrainConfig(data_files=[str(QUICKSTART / "en_train.json")]), [])
    sequences, _ = build_sequences(corpus.texts, wordpiece_tokenizer, DataConfig(max_seq_length=128))
    batch = _masked(sequences, _task(wordpiece_tokenizer, sequences), list(range(8)))
    batch = {k: batch[k] for k in ("input_ids", "labels", "masked_positions", "attention_mask") if k in batch}
    torch.manual_seed(0)
    model, missing = build_masked_lm(ModelConfig(name_or_path=tiny_bert_dir, dropout=0.0), 128)
    assert any(k.startswith("cls.predictions") for k in missing)  # the folder has no MLM head: a fresh one
    losses = losses_on_a_fixed_batch(model, batch, lr=3e-3)
    # measured: 10.32 (ln 30522 = 10.33, chance) -> 6.63, falling at every step
    assert losses[0] == pytest.approx(10.33, abs=0.2)
    assert losses[-1] < 0.8 * losses[0] and losses[-1] < min(losses[:10]), losses


# --- 3b. the head scores the predicted positions only --------------------------------------------------------------


def _transformers_loss(lm, batch: dict) -> torch.Tensor:
    """transformers' own forward and loss: logits at every position, the mean over the predicted tokens."""
    mask = batch.get("attention_mask")
    mask = None if mask is None else mask[:, None, None, :].bool()
    return lm(input_ids=batch["input_ids"], attention_mask=mask, labels=batch["labels"]).loss


def _loss_and_grads(loss_fn, model) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_the_head_sees_only_predicted_positions_and_gives_transformers_loss_and_gradients(family, request):
    """On padded batches of real text: the vocabulary projection gets one row per predicted token, and the loss and
    every gradient are those of transformers' forward over all positions; a batch without a predicted token has
    loss 0 and zero gradients, not NaN."""
    model_dir = request.getfixturevalue(f"tiny_{family}_dir")
    tokenizer = request.getfixturevalue("wordpiece_tokenizer" if family == "bert" else "albert_tokenizer")
    corpus = collect_texts(PretrainConfig(data_files=[str(QUICKSTART / "en_train.json")]), [])
    sequences, _ = build_sequences(corpus.texts, tokenizer, DataConfig(max_seq_length=128))
    torch.manual_seed(0)
    model, _ = build_masked_lm(ModelConfig(name_or_path=model_dir), 128)
    model.eval()  # no dropout: the two forwards must see the same network
    projected, decoder = [], model.lm.get_output_embeddings()
    decoder.register_forward_hook(lambda module, args, out: projected.append(args[0].shape))
    keys = ("input_ids", "labels", "masked_positions", "attention_mask")
    batch = {k: v for k, v in _masked(sequences, _task(tokenizer, sequences), [0, 5, 9, 14, 20]).items() if k in keys}
    assert "attention_mask" in batch  # sequences of several lengths: padded
    num_predicted = int((batch["labels"] != IGNORE_INDEX).sum())
    assert num_predicted > 20

    ours, our_grads = _loss_and_grads(lambda: model(**batch).loss, model)
    assert projected == [torch.Size([num_predicted, decoder.in_features])]
    theirs, their_grads = _loss_and_grads(lambda: _transformers_loss(model.lm, batch), model)
    assert projected[-1][:-1] == batch["input_ids"].shape  # transformers projects every position
    assert ours == pytest.approx(theirs.item(), rel=1e-6)
    assert our_grads.keys() == their_grads.keys() and len(our_grads) > 10
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, their_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    rule = MaskingRule(True, 0.0, tokenizer.mask_token_id, len(tokenizer), 0)  # nothing selected
    task = MaskedLMTask()
    task.use(sequences, rule)
    empty = {k: v for k, v in _masked(sequences, task, [0, 5, 9]).items() if k in keys}
    assert empty["masked_positions"].shape == (0,)
    loss, grads = _loss_and_grads(lambda: model(**empty).loss, model)
    assert loss.item() == 0 and all(torch.count_nonzero(g) == 0 for g in grads.values()) and len(grads) > 10


def test_a_step_over_ranks_and_micro_batches_is_the_mean_over_all_its_predicted_tokens(tiny_bert_dir, wordpiece_tokenizer):
    """2 ranks x grad_accum 2 x 4 sequences: each micro-batch's mean loss, weighted by its share of the step's
    predicted tokens and averaged over the ranks as DDP averages gradients, is the loss of the 16 sequences as one
    batch, so any process count and grad_accum train alike (the mean of the micro-batches' means gave 2 x 4
    10.33342 where 1 x 8 gave 10.33351)."""
    from types import SimpleNamespace

    from mrc_cli.config import RunConfig
    from mrc_cli.training import TrainerState, _step_stream

    corpus = collect_texts(PretrainConfig(data_files=[str(QUICKSTART / "en_train.json")]), [])
    sequences, _ = build_sequences(corpus.texts, wordpiece_tokenizer, DataConfig(max_seq_length=128))
    task, store = _task(wordpiece_tokenizer, sequences), FeatureTensors(sequences, torch.device("cpu"), 0)
    batch_of = task.batch
    task.batch = lambda store, index, rows, epoch: {**batch_of(store, index, rows, epoch), "index": index}
    cfg = RunConfig()
    cfg.train.batch_size, cfg.train.grad_accum = 4, 2
    ranks = [next(_step_stream(task, store, cfg, TrainerState(), SimpleNamespace(
        process_index=rank, num_processes=2, device=torch.device("cpu")))) for rank in range(2)]
    predicted = [int((batch["labels"] != IGNORE_INDEX).sum()) for _, batches, _, _ in ranks for batch in batches]
    assert len(predicted) == 4 and len(set(predicted)) > 1, predicted
    torch.manual_seed(0)
    model, _ = build_masked_lm(ModelConfig(name_or_path=tiny_bert_dir), 128)
    model.eval()
    keys = ("input_ids", "labels", "masked_positions", "attention_mask")

    def loss(batch):
        return model(**{key: value for key, value in batch.items() if key in keys}).loss

    with torch.no_grad():
        step_loss = sum(share * loss(batch) for _, batches, shares, _ in ranks
                        for batch, share in zip(batches, shares)) / 2
        every = [f for _, batches, _, _ in ranks for batch in batches for f in batch["index"]]
        whole = loss(_masked(sequences, task, every))
        plain = sum(loss(batch) for _, batches, _, _ in ranks for batch in batches) / 4
    assert step_loss.item() == pytest.approx(whole.item(), rel=1e-6)
    assert plain.item() != pytest.approx(whole.item(), rel=1e-6)  # the micro-batches' plain mean, as before


TINY = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64, "pad_token_id": 0}
FAMILIES = {"bert": {}, "albert": {"embedding_size": 16}, "roberta": {}, "xlm-roberta": {}, "camembert": {},
            "electra": {"embedding_size": 16}, "distilbert": {"dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64},
            "data2vec-text": {}}  # the last has no entry in MLM_HEADS: transformers' forward


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_of_the_head_map_gives_transformers_loss(family):
    from transformers import AutoConfig, AutoModelForMaskedLM

    from mrc_cli.pretraining import MLM_HEADS, MaskedLM

    torch.manual_seed(0)
    lm = AutoModelForMaskedLM.from_config(AutoConfig.for_model(family, **TINY, **FAMILIES[family]),
                                          attn_implementation="sdpa").eval()
    model = MaskedLM(lm)
    assert model.head_modules == MLM_HEADS.get(family)
    input_ids = torch.randint(5, TINY["vocab_size"], (3, 12))
    attention_mask = (torch.arange(12) < torch.tensor([[12], [8], [5]])).long()
    labels = torch.where((torch.rand(3, 12) < 0.3) & attention_mask.bool(), input_ids, IGNORE_INDEX)
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    ours = model(**batch, masked_positions=torch.nonzero(labels.flatten() != IGNORE_INDEX).squeeze(1)).loss
    assert ours.item() == pytest.approx(_transformers_loss(lm, batch).item(), rel=1e-6)


def test_a_family_without_a_known_head_is_named_in_the_log(tmp_path):
    from transformers import AutoConfig

    from mrc_cli.config import RunConfig
    from mrc_cli.tracking import RunLog

    AutoConfig.for_model("data2vec-text", **TINY).save_pretrained(str(tmp_path / "model"))
    cfg = RunConfig()
    cfg.model.name_or_path, cfg.data.max_seq_length = str(tmp_path / "model"), 32
    model = MaskedLMTask().build_model(cfg, pretrained=False, log=RunLog(tmp_path / "run", True))
    assert model.head_modules is None
    assert ("MLM head of model type 'data2vec-text': not among bert, albert" in
            (tmp_path / "run" / "train.log").read_text())


def test_the_host_count_sizes_the_gather_exactly_in_every_epoch(wordpiece_tokenizer):
    """masked_positions is cut to the host's count of each epoch: too few would drop predicted tokens from the loss,
    too many would pad with -1."""
    corpus = collect_texts(PretrainConfig(data_files=[str(QUICKSTART / "en_train.json")]), [])
    sequences, _ = build_sequences(corpus.texts, wordpiece_tokenizer, DataConfig(max_seq_length=128))
    task = _task(wordpiece_tokenizer, sequences)
    for epoch in (0, 1, 0, 3):  # the count cached for an epoch is replaced by the next epoch's
        for index in ([0, 1, 2, 3], [31, 7, 19], list(range(len(sequences)))):
            batch = _masked(sequences, task, index, epoch)
            expected = torch.nonzero(batch["labels"].flatten() != IGNORE_INDEX).squeeze(1)
            assert expected.numel() > 0 and torch.equal(batch["masked_positions"], expected), (epoch, index)


# --- 4. end to end from the CLI ------------------------------------------------------------------------------------


def _pretrain_args(model_dir: str, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--model", model_dir, "--data", str(QUICKSTART / "en_train.json"), "--data",
            str(QUICKSTART / "en_dev.json"), "--eval-data", str(QUICKSTART / "en_dev.json"), "--out", str(out),
            "--set", "train.batch_size=8", "--set", "data.max_seq_length=128", "--set", "train.precision=no",
            "--set", "train.cpu=true", "--set", "train.log_steps=1", *extra]


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tiny_bert_dir) -> Path:
    """6 steps on the quickstart train contexts (its dev contexts left out), checkpoints at 3 and 6."""
    out = tmp_path_factory.mktemp("pretrain") / "A"
    result = _invoke(_pretrain_args(tiny_bert_dir, out, "--max-steps", "6", "--set", "train.save_steps=3",
                                    "--set", "train.keep_last=5", "--set", "train.keep_training_state=all"))
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"model_dir": str(out), "steps": 6}
    return out


def test_pretrain_writes_a_model_folder_and_what_it_was_trained_on(pretrained, tiny_bert_dir):
    out = pretrained
    for name in ("config.json", "model.safetensors", "tokenizer.json", "config.yaml", "pretrain_info.json",
                 "run_info.json", "train.log", "metrics.jsonl", "curves.png"):
        assert (out / name).is_file(), name
    assert int.from_bytes((out / "curves.png").read_bytes()[16:20], "big") == 600  # the loss alone: no dev panel
    info = json.loads((out / "pretrain_info.json").read_text())
    # quickstart: 30 train contexts (177 questions), 10 dev contexts (49 questions), all of them left out
    assert [(s["records"], s["distinct"], s["eval_matches"]) for s in info["sources"]] == [(177, 30, 0), (49, 10, 10)]
    assert (info["texts"], info["eval_contexts"], info["duplicates"], info["include_eval_contexts"]) == (30, 10, 186, False)
    assert info["masking"] == "word" and info["mlm_head"].startswith("fresh (cls.predictions")
    state = json.loads((out / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    assert info["steps"] == 6 and (info["sequences_seen"], info["tokens_seen"]) == (state["samples"], state["tokens"])
    assert 5 * 8 < state["samples"] <= 6 * 8 and 0 < state["tokens"] <= state["samples"] * 128
    predicted = info["predicted_epoch_0"]
    assert predicted["words"] / info["words"] == pytest.approx(0.15, abs=0.03)
    assert predicted["tokens"] == predicted["mask"] + predicted["random"] + predicted["unchanged"]
    log = (out / "train.log").read_text()
    assert "left out: 10 texts that are contexts of" in log and f"{info['sequences']} sequences" in log
    losses = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl")}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6] and all(5 < v < 12 for v in losses.values())

    from transformers import AutoModelForMaskedLM

    lm = AutoModelForMaskedLM.from_pretrained(str(out))
    assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight
    final = load_file(str(out / "checkpoints" / "step-000006" / "model.safetensors"))
    assert all(torch.equal(value, final[f"lm.{key}"]) for key, value in lm.state_dict().items() if f"lm.{key}" in final)
    assert json.loads((out / "config.json").read_text())["attention_probs_dropout_prob"] == 0.1  # the source's, not 0


def test_pretraining_again_from_its_saved_config_gives_the_same_model(pretrained, tmp_path):
    _invoke(["pretrain", "-c", str(pretrained / "config.yaml"), "--out", str(tmp_path / "again")])
    a, b = load_file(str(pretrained / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    source = load_file(str(pretrained / "checkpoints" / "step-000003" / "model.safetensors"))
    assert not torch.equal(source["lm.bert.embeddings.word_embeddings.weight"], b["bert.embeddings.word_embeddings.weight"])


def test_the_pretrained_folder_fine_tunes_with_mrc_train(pretrained, tmp_path):
    encoder = build_model(ModelConfig(name_or_path=str(pretrained)), 128).encoder.state_dict()
    saved = load_file(str(pretrained / "model.safetensors"))
    assert all(torch.equal(value, saved[f"bert.{key}"]) for key, value in encoder.items() if "pooler" not in key)
    result = _invoke(["train", "--model", str(pretrained), "--train", str(QUICKSTART / "en_train.json"),
                      "--output-dir", str(tmp_path / "ft"), "--max-steps", "1", "--max-seq-length", "128",
                      "--doc-stride", "32", "--set", "data.max_query_length=32", "--set", "train.precision=no",
                      "--set", "train.cpu=true", "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    assert json.loads(result.stdout.strip().splitlines()[-1])["steps"] == 1


def test_a_pretraining_checkpoint_starts_fine_tuning_with_init_from_and_a_misfit_is_refused(pretrained, tiny_bert_dir,
                                                                                               tiny_albert_dir, tmp_path):
    """What the refusal of `--model CHECKPOINT` advises: the checkpoint's masked-LM encoder (lm.bert.*) becomes the
    span model's encoder; one whose weights fit nothing had fine-tuned the base model under its name."""
    checkpoint = pretrained / "checkpoints" / "step-000003"
    args = ["train", "--train", str(QUICKSTART / "en_train.json"), "--max-steps", "1", "--max-seq-length", "128",
            "--doc-stride", "32", "--set", "data.max_query_length=32", "--set", "train.precision=no",
            "--set", "train.cpu=true", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.lr=1e-30",
            "--init-from", str(checkpoint)]
    result = _invoke([*args, "--model", tiny_bert_dir, "--output-dir", str(tmp_path / "ft")])
    assert "missing qa_outputs (2 keys); unexpected lm.cls" in (tmp_path / "ft" / "train.log").read_text()
    pretrained_weights = load_file(str(checkpoint / "model.safetensors"))
    tuned = load_file(str(tmp_path / "ft" / "checkpoints" / "step-000001" / "model.safetensors"))
    encoder = [key for key in tuned if key.startswith("encoder.") and "pooler" not in key]
    assert encoder and all(torch.allclose(tuned[key], pretrained_weights[f"lm.bert.{key[8:]}"]) for key in encoder)
    result = CliRunner().invoke(app, [*args, "--model", tiny_albert_dir, "--output-dir", str(tmp_path / "albert")])
    assert result.exit_code == 1 and (f"Error: --init-from {checkpoint / 'model.safetensors'}: none of its weights fit "
                                      "this model (model type albert; the checkpoint holds lm.bert (5 keys), "
                                      "lm.bert.encoder.layer.0-1 (32 keys), lm.cls (5 keys))") in result.stderr
    # the other way, a span checkpoint to pre-train from: its weights fit no masked LM; the advised export works
    span_checkpoint = tmp_path / "ft" / "checkpoints" / "step-000001"
    result = CliRunner().invoke(app, _pretrain_args(str(span_checkpoint), tmp_path / "p", "--max-steps", "1"))
    assert result.exit_code == 1 and result.stderr == (
        f"Error: {span_checkpoint}: an mrc-cli training run or checkpoint, not an encoder folder to start from; `mrc "
        f"export --format hf --out DIR {span_checkpoint}` makes a model folder of it that `mrc pretrain --model DIR` "
        "pre-trains on from (with a fresh masked-LM head)\n")
    _invoke(["export", "--checkpoint", str(span_checkpoint), "--format", "hf", "--out", str(tmp_path / "hf")])
    _invoke(_pretrain_args(str(tmp_path / "hf"), tmp_path / "p", "--max-steps", "1"))


def test_pretraining_goes_on_from_a_middle_checkpoint_on_other_files_with_init_from(pretrained, tiny_bert_dir, tmp_path):
    """--resume takes only the files a run began with; --init-from starts a new run from a pre-training checkpoint,
    its encoder and its trained MLM head (the tiny BERT has none: it would be fresh), on other files."""
    from mrc_cli.config import load_config
    from mrc_cli.tracking import RunLog

    checkpoint, out, notes = pretrained / "checkpoints" / "step-000003", tmp_path / "B", tmp_path / "b.txt"
    notes.write_text("The harbour of Marseille was rebuilt in the 1850s.\n\nLyon lies where two rivers meet. " * 8)
    _invoke(["pretrain", "--model", tiny_bert_dir, "--init-from", str(checkpoint), "--text", str(notes), "--out",
             str(out), "--max-steps", "2", "--set", "train.batch_size=2", "--set", "data.max_seq_length=64",
             "--set", "train.precision=no", "--set", "train.cpu=true", "--set", "train.log_steps=1"])
    log = (out / "train.log").read_text()
    assert f"--init-from {checkpoint / 'model.safetensors'}: missing none; unexpected none" in log
    assert f"MLM head: loaded from {checkpoint}; its decoder is tied to" in log and "fresh MLM head" not in log
    info = json.loads((out / "pretrain_info.json").read_text())
    assert (info["init_from"], info["mlm_head"], [s["file"] for s in info["sources"]]) == (
        str(checkpoint), f"loaded from {checkpoint}", [str(notes)])
    # the run started from the checkpoint's weights, head included: the model it builds from its saved config
    start = MaskedLMTask().build_model(load_config(out / "config.yaml"), True, RunLog(tmp_path / "log", False))
    start = start.state_dict()
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert any(key.startswith("lm.cls.") for key in saved) and all(torch.equal(start[k], saved[k]) for k in saved)
    # and trained from there
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2] and info["steps"] == 2
    trained = load_file(str(out / "checkpoints" / "step-000002" / "model.safetensors"))
    for key in ("lm.cls.predictions.transform.dense.weight", "lm.bert.encoder.layer.0.attention.self.query.weight"):
        assert not torch.equal(trained[key], saved[key]), key
    # a finished run's model folder (bert.*, cls.*) fits as well
    from_folder = load_config(out / "config.yaml")
    from_folder.train.init_from = str(pretrained)
    MaskedLMTask().build_model(from_folder, True, RunLog(tmp_path / "log2", True))
    assert f"--init-from {pretrained / 'model.safetensors'}: missing none; unexpected none" in (
        tmp_path / "log2" / "train.log").read_text()


def test_a_pretrained_folder_and_a_checkpoint_are_told_apart_where_one_is_given_for_the_other(pretrained, tiny_bert_dir,
                                                                                              tmp_path):
    """eval of the pre-trained folder (no span head) and pretrain or train from a checkpoint (a span model, which
    loaded as an encoder had given a tokenizer of 5 tokens and random weights) are refused, saying what to do."""
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--checkpoint", str(pretrained), "--data", str(QUICKSTART / "en_dev.json")])
    assert result.exit_code == 1 and result.stderr == (
        f"Error: {pretrained} is a BertForMaskedLM model folder (mrc pretrain writes one), with no span head to answer "
        f"with: fine-tune it first, mrc train --model {pretrained}\n")
    checkpoint = pretrained / "checkpoints" / "step-000006"
    # each command's advice works: --model of the run folder (here and in test_the_pretrained_folder_fine_tunes_with_
    # mrc_train), --init-from in test_a_pretraining_checkpoint_starts_fine_tuning_with_init_from_... and
    # test_pretraining_goes_on_from_a_middle_checkpoint_on_other_files_with_init_from
    advice = (f"its run folder {pretrained} is a model folder of the run's last weights: `mrc pretrain --model "
              f"{pretrained}` pre-trains on from them, `mrc train --model {pretrained}` fine-tunes them; `mrc pretrain "
              f"--model {tiny_bert_dir} --init-from {checkpoint} --out NEW_DIR --data/--text FILES` pre-trains on from "
              f"this checkpoint (other files too), `mrc train --model {tiny_bert_dir} --init-from {checkpoint}` "
              "fine-tunes its encoder\n")
    for command in (["pretrain", "--data", str(QUICKSTART / "en_dev.json"), "--out", str(tmp_path / "p"), "--model"],
                    ["train", "--train", str(QUICKSTART / "en_dev.json"), "--output-dir", str(tmp_path / "t"), "--model"],
                    ["export", "--format", "hf", "--out", str(tmp_path / "e"), "--checkpoint"]):
        result = runner.invoke(app, [*command, str(checkpoint)] + (["--dry-run"] if command[0] != "export" else []))
        problem = ("a checkpoint of mrc pretrain (a masked-LM), with no span head to answer with or export" if
                   command[0] == "export" else "an mrc pretrain run or checkpoint, not an encoder folder to start from")
        assert result.exit_code == 1 and result.stderr == f"Error: {checkpoint}: {problem}; {advice}", result.output
    _invoke(_pretrain_args(str(pretrained), tmp_path / "again", "--max-steps", "1"))
    # pretrain's dry run checks its inputs as the run does, naming its own flags
    result = runner.invoke(app, ["pretrain", "--model", str(pretrained), "--data", str(tmp_path / "none.json"),
                                 "--text", str(tmp_path / "none.txt"), "--out", str(tmp_path / "p"), "--dry-run"])
    assert result.exit_code == 1 and result.stderr == (f"Error: --data {tmp_path / 'none.json'}: no such file; --text "
                                                       f"{tmp_path / 'none.txt'}: no such file\n")
    (tmp_path / "saved").mkdir()  # a saved dataset folder with its split: read when the run starts, not refused here
    result = runner.invoke(app, ["pretrain", "--model", tiny_bert_dir, "--data", f"{tmp_path / 'saved'}:train", "--out",
                                 str(tmp_path / "p"), "--dry-run"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["pretrain", "--model", tiny_bert_dir, "--data",
                                 str(QUICKSTART / "en_dev.json"), "--out", str(pretrained), "--dry-run"])
    assert "choose another --out" in result.stderr, result.output


def test_a_run_resumes_only_with_the_command_that_made_it(pretrained, tmp_path):
    """mrc train on a pre-training run's folder had failed on a setting mrc pretrain does not read; the other way,
    on its data, which the run would have had to give."""
    train_run = tmp_path / "ft"
    (train_run / "checkpoints").mkdir(parents=True)
    (train_run / "run_info.json").write_text(json.dumps({"train_file_sha256": "x"}))  # as runs before "task" wrote it
    for args, problem in (
            (["train", "--train", str(QUICKSTART / "en_train.json"), "--output-dir", str(pretrained)],
             f"{pretrained} is a run of mrc pretrain: resume it with mrc pretrain --resume auto --out {pretrained}, or "
             "give mrc train another folder"),
            (["pretrain", "--out", str(train_run)], f"{train_run} is a run of mrc train: resume it with mrc train "
                                                     f"--resume auto --output-dir {train_run}, or give mrc pretrain"),
            (["train", "--resume", str(pretrained / "checkpoints" / "step-000003")], "is a run of mrc pretrain")):
        result = CliRunner().invoke(app, [*args, "--resume", "auto"] if "--resume" not in args else args)
        assert result.exit_code == 1 and problem in result.stderr, result.output
    assert json.loads((pretrained / "run_info.json").read_text())["task"] == "pretrain"


def test_resumed_pretraining_is_bitwise_the_uninterrupted_run(pretrained, tiny_bert_dir, tmp_path):
    out = tmp_path / "B"
    shutil.copytree(pretrained / "checkpoints" / "step-000003", out / "checkpoints" / "step-000003")
    shutil.copy(pretrained / "run_info.json", out)  # as the interrupted run wrote it when it began
    # the interrupted part took 1000 s to its checkpoint: wall_seconds had counted only the resumed part
    training_state = out / "checkpoints" / "step-000003" / "training_state.pt"
    torch.save({**torch.load(training_state, weights_only=True), "wall_clock": {"seconds": 1000.0}}, training_state)
    started = time.perf_counter()
    _invoke(_pretrain_args(tiny_bert_dir, out, "--max-steps", "6", "--set", "train.save_steps=3",
                           "--set", "train.keep_last=5", "--resume", "auto"))
    assert 1000 < json.loads((out / "pretrain_info.json").read_text())["wall_seconds"] <= 1000 + time.perf_counter() - started
    assert "resumed from" in (out / "train.log").read_text()
    info = lambda d: json.loads((d / "pretrain_info.json").read_text())
    assert info(out)["mlm_head"] == info(pretrained)["mlm_head"]  # fresh when the run began, not "from the checkpoint"
    for weights in ("checkpoints/step-000006/model.safetensors", "model.safetensors"):
        a, b = load_file(str(pretrained / weights)), load_file(str(out / weights))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), weights
    step3 = load_file(str(pretrained / "checkpoints" / "step-000003" / "model.safetensors"))
    assert not torch.equal(step3["lm.cls.predictions.transform.dense.weight"],
                           load_file(str(out / "checkpoints/step-000006/model.safetensors"))["lm.cls.predictions.transform.dense.weight"])
    losses_a, losses_b = (read_metrics(d / "metrics.jsonl") for d in (pretrained, out))
    assert [(r["step"], r["loss"]) for r in losses_b] == [(r["step"], r["loss"]) for r in losses_a if r["step"] > 3]
    state = lambda d: json.loads((d / "checkpoints" / "step-000006" / "trainer_state.json").read_text())
    assert state(pretrained) == state(out)


def test_a_run_whose_text_changed_is_refused_with_what_starts_pretraining_anew(pretrained, tiny_bert_dir, tmp_path):
    """The refusal names the run's model folder (mrc pretrain --model RUN works: test_a_pretrained_folder_and_a_
    checkpoint_are_told_apart_...) and the full pre-training command from the checkpoint (test_pretraining_goes_on_
    from_a_middle_checkpoint_on_other_files_with_init_from)."""
    out = tmp_path / "B"
    checkpoint = out / "checkpoints" / "step-000003"
    shutil.copytree(pretrained / "checkpoints" / "step-000003", checkpoint)
    info = json.loads((pretrained / "run_info.json").read_text())
    info["files_sha256"][str(QUICKSTART / "en_train.json")] = "0" * 64  # as if the file changed since
    (out / "run_info.json").write_text(json.dumps(info))
    for finished in (False, True):
        if finished:
            shutil.copy(pretrained / "config.json", out)
        result = CliRunner().invoke(app, _pretrain_args(tiny_bert_dir, out, "--max-steps", "6", "--resume", "auto"))
        folder = (f"its run folder {out} is a model folder of the run's last weights: `mrc pretrain --model {out}` "
                  f"pre-trains on from them" if finished else f"its run folder {out} becomes a model folder of the "
                  f"run's last weights when the run finishes (`mrc pretrain --resume auto --out {out}`, on the files "
                  "it began with)")
        assert result.exit_code == 1 and f"{QUICKSTART / 'en_train.json'} is not what the run trained on" in \
            result.stderr and f"restore it to resume, or start anew: {folder}" in result.stderr, result.output
        assert (f"`mrc pretrain --model {tiny_bert_dir} --init-from {checkpoint} --out NEW_DIR --data/--text FILES` "
                "pre-trains on from this checkpoint (other files too)") in result.stderr

def test_a_checkpoint_that_cannot_be_resumed_names_the_pretraining_command_that_starts_from_it(pretrained,
                                                                                               tiny_bert_dir, tmp_path):
    """Both refusals had advised a bare --init-from (span fine-tuning's wording; test_training and
    test_training_options keep it for span runs): for a pre-training checkpoint they give the whole mrc pretrain
    command, which test_pretraining_goes_on_from_a_middle_checkpoint_on_other_files_with_init_from runs."""
    route = lambda checkpoint: (f"`mrc pretrain --model {tiny_bert_dir} --init-from {checkpoint} --out NEW_DIR "  # noqa: E731
                                "--data/--text FILES`")
    for problem in ("weights only", "older trainer"):
        out = tmp_path / problem.replace(" ", "_")
        checkpoint = out / "checkpoints" / "step-000003"
        shutil.copytree(pretrained / "checkpoints" / "step-000003", checkpoint)
        shutil.copy(pretrained / "run_info.json", out)
        if problem == "weights only":  # as a finished run leaves its earlier checkpoints
            (checkpoint / "training_state.pt").unlink()
            expected = f"or start a new run from these weights with {route(checkpoint)}"
        else:
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            state["batch_in_epoch"] = state.pop("epoch_segments")  # the position as mrc-cli up to c62c0a9 kept it
            (checkpoint / "trainer_state.json").write_text(json.dumps(state))
            expected = f"it cannot be resumed, but its weights can start a new run: {route(checkpoint)}"
        result = CliRunner().invoke(app, _pretrain_args(tiny_bert_dir, out, "--max-steps", "6", "--resume", "auto"))
        assert result.exit_code == 1 and expected in result.stderr, result.output


def test_an_ordinary_pretraining_step_never_waits_for_the_device(tiny_bert_dir, tmp_path, monkeypatch):
    """test_gpu_ready's check of the fine-tuning loop, on pre-training: the masks are drawn on the device, the
    predicted positions gathered there in a number the host counted, so only the log steps read from the device."""
    import traceback

    import mrc_cli.training as training
    from bench.common import track_loop_phases
    from mrc_cli.config import load_config
    from mrc_cli.pretraining import pretrain
    from test_gpu_ready import HOST_SYNCS

    phase, syncs = track_loop_phases(training, monkeypatch.setattr), []
    for name in HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            # host tensors on any machine: the epoch's plan, and the epoch's mask counts (once per epoch)
            if not any(frame.name in ("epoch_plan", "_num_predicted") for frame in traceback.extract_stack(limit=4)):
                syncs.append((phase[0], _name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    cfg = load_config(sets=[f"model.name_or_path={tiny_bert_dir}", f"pretrain.data_files=[{QUICKSTART / 'en_train.json'}]",
                            f"train.output_dir={tmp_path / 'run'}", "train.max_steps=8", "train.log_steps=4",
                            "train.save_steps=0", "train.grad_accum=2", "train.batch_size=4", "train.precision=no",
                            "train.cpu=true", "data.max_seq_length=128"])
    pretrain(cfg)
    in_loop = [s for s in syncs if s[0] in ("batches", "step")]
    assert not in_loop, in_loop[:10]
    assert sum(1 for p, _ in syncs if p == "sync point") == 2  # steps 4 and 8


# --- 5. ALBERT, and what is refused --------------------------------------------------------------------------------


def test_albert_pretrains_with_a_fresh_head_or_its_own(tiny_albert_dir, albert_tokenizer, tmp_path):
    from transformers import AlbertForMaskedLM, AutoConfig

    fresh = tmp_path / "fresh"
    _invoke(_pretrain_args(tiny_albert_dir, fresh, "--max-steps", "2", "--set", "pretrain.masking=token"))
    info = json.loads((fresh / "pretrain_info.json").read_text())
    assert info["mlm_head"].startswith("fresh (predictions") and info["tied_decoder"] and info["masking"] == "token"
    fresh_head_warning = "warning: a fresh MLM head's early gradients reach the encoder as noise"
    assert fresh_head_warning in (fresh / "train.log").read_text()

    with_head = tmp_path / "albert_mlm"
    torch.manual_seed(1)
    AlbertForMaskedLM(AutoConfig.from_pretrained(tiny_albert_dir)).save_pretrained(str(with_head))
    albert_tokenizer.save_pretrained(str(with_head))
    loaded = tmp_path / "loaded"
    _invoke(_pretrain_args(str(with_head), loaded, "--max-steps", "1", "--set", "train.lr=1e-9"))
    assert json.loads((loaded / "pretrain_info.json").read_text())["mlm_head"] == f"loaded from {with_head}"
    assert fresh_head_warning not in (loaded / "train.log").read_text()
    before, after = load_file(str(with_head / "model.safetensors")), load_file(str(loaded / "model.safetensors"))
    head = [k for k in before if k.startswith("predictions.")]
    assert head and all(torch.allclose(before[k], after[k], atol=1e-6) for k in head)


@pytest.mark.parametrize(("args", "problem"), [
    ([], "nothing to pre-train on: pass --data FILE"),
    (["--data", "x.json", "--set", "train.rdrop_alpha=1"], "train.rdrop_alpha 1.0 belongs to span fine-tuning"),
    (["--data", "x.json", "--out", "SAME"], "is the model folder pre-training starts from"),
    (["--data", str(QUICKSTART / "en_dev.json"), "--eval-data", str(QUICKSTART / "en_dev.json")],
     f"nothing left to pre-train on in {QUICKSTART / 'en_dev.json'}: every text is made of contexts of the eval files"),
    (["--text", "EMPTY"], "nothing to pre-train on: EMPTY hold no text"),
    (["--text", "TINY"], "nothing to predict: the masks take none of the 3 words (pretrain.mask_prob 0.15"),
    (["--text", "TINY", "--set", "data.max_seq_length=4096"], "or less (--max-seq-length, or --set data.max_seq_length=N)"),
])
def test_pretrain_refuses_what_cannot_work_with_one_line(args, problem, tiny_bert_dir, tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "tiny.txt").write_text("Paris is big\n")  # 15 % of 3 words: none
    args = [a.replace("SAME", tiny_bert_dir).replace("EMPTY", str(tmp_path / "empty.txt"))
            .replace("TINY", str(tmp_path / "tiny.txt")) for a in args]
    problem = problem.replace("EMPTY", str(tmp_path / "empty.txt"))
    out = [] if "--out" in args else ["--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, ["pretrain", "--model", tiny_bert_dir, *out, "--set", "train.cpu=true", *args])
    assert result.exit_code == 1 and problem in result.stderr, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "checkpoints").exists()


def test_pretrain_from_python_checks_settings_changed_by_attribute(tiny_bert_dir, tmp_path):
    """As --set checks them: a mask_prob over 1 had masked every word, masking "span" had masked tokens under that
    name; one text file given as a string had been read letter by letter."""
    from mrc_cli.config import ConfigError, check_values, load_config
    from mrc_cli.pretraining import pretrain

    (tmp_path / "notes.txt").write_text("Paris is the capital of France. " * 20 + "\n\nRome is in Italy. " * 20)
    cfg = load_config(sets=["train.cpu=true", "train.precision=no", "train.max_steps=1", "data.max_seq_length=64",
                            f"data.cache_dir={tmp_path / 'cache'}"])
    cfg.model.name_or_path, cfg.train.output_dir = tiny_bert_dir, str(tmp_path / "run")
    for key, value, problem in (("mask_prob", 1.5, "config: pretrain.mask_prob is a fraction in (0, 1), got 1.5"),
                                ("masking", "span", "config: pretrain.masking: expected one of word, token, got 'span'")):
        wrong = copy.deepcopy(cfg)
        wrong.pretrain.text_files = [str(tmp_path / "notes.txt")]
        setattr(wrong.pretrain, key, value)
        with pytest.raises(ConfigError, match=re.escape(problem)):
            pretrain(wrong)
    tupled = copy.deepcopy(cfg)
    tupled.pretrain.text_files = ("a.txt", "b.txt")  # a tuple where a list belongs: the list
    check_values(tupled)
    assert tupled.pretrain.text_files == ["a.txt", "b.txt"]
    cfg.pretrain.text_files = str(tmp_path / "notes.txt")  # one path alone: a list of one
    pretrain(cfg)
    assert [s["file"] for s in json.loads((tmp_path / "run" / "pretrain_info.json").read_text())["sources"]] == [
        str(tmp_path / "notes.txt")]
