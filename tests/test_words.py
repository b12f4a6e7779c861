"""Whole-word units: pooling equals a slow per-word reference, labels map to words, answers never cut a word."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import QUICKSTART, shared_file, tiny_run_config, write_squad
from mrc_cli.cli import app
from mrc_cli.config import DataConfig
from mrc_cli.features import build_features
from mrc_cli.validate import load_examples
from mrc_cli.words import pool_words, token_to_unit_labels, unit_index, unit_offsets


def _random_word_ids(rng, batch, seq):
    """CLS, a question (-1), SEP, then context words of 1-4 tokens with a random first id, padding (-1)."""
    rows = []
    for _ in range(batch):
        question = rng.integers(1, 6)
        row = [-1] * (1 + question + 1)
        word = int(rng.integers(0, 50))
        while len(row) < seq - rng.integers(1, 8):
            row += [word] * int(rng.integers(1, 5))
            word += int(rng.integers(1, 3))  # sometimes skips an id: pooling must not rely on consecutive ids
        rows.append((row + [-1] * seq)[:seq])
    return torch.tensor(rows)


def test_pooling_equals_a_slow_per_word_reference():
    rng = np.random.default_rng(0)
    for trial in range(20):
        word_ids = _random_word_ids(rng, batch=4, seq=int(rng.integers(20, 60)))
        states = torch.randn(*word_ids.shape, 8, generator=torch.Generator().manual_seed(trial))
        units = unit_index(word_ids)
        pooled, present = pool_words(states, units)
        for b in range(word_ids.shape[0]):
            for u in range(pooled.shape[1]):
                tokens = [t for t in range(word_ids.shape[1]) if units[b, t] == u]
                assert bool(present[b, u]) == bool(tokens)
                expected = torch.stack([states[b, t] for t in tokens]).mean(0) if tokens else torch.zeros(8)
                assert torch.allclose(pooled[b, u], expected, atol=1e-6)
        assert torch.equal(units[:, 0], torch.zeros(4, dtype=units.dtype))  # CLS is unit 0
        assert present[:, 0].all()


def test_token_labels_become_the_units_of_their_words():
    word_ids = torch.tensor([[-1, -1, -1, 5, 5, 6, 7, 7, -1]])
    units = unit_index(word_ids)
    assert units.tolist() == [[0, -1, -1, 1, 1, 2, 3, 3, -1]]
    positions = torch.tensor([4, 0, -100, 7])
    assert token_to_unit_labels(positions, units.expand(4, -1)).tolist() == [1, 0, -100, 3]


def test_a_word_cut_by_the_window_edge_decodes_whole(wordpiece_tokenizer, tmp_path):
    word = "antidisestablishmentarianism"  # many word pieces
    context = " ".join(["river"] * 40 + [word] + ["stone"] * 40)
    path = write_squad(tmp_path / "d.json", [(context, [{"id": "q", "question": "Which?", "answers": []}])])
    examples, _, _ = load_examples(str(path), "predict")
    data = DataConfig(max_seq_length=48, max_query_length=8, doc_stride=8, cache_dir=str(tmp_path))
    features, _ = build_features(examples, wordpiece_tokenizer, data, labels=False)
    spans = unit_offsets(list(features["example_id"]), features["offset_mapping"], features["word_ids"], 48)
    cut = 0
    for f, (offsets, words) in enumerate(zip(features["offset_mapping"], features["word_ids"])):
        units = unit_index(torch.tensor([words]))[0]
        for t, (start, end) in enumerate(offsets):
            if start >= 0 and context[start:end] in word and len(context[start:end]) < len(word):
                u = int(units[t])
                assert context[spans[f, u, 0]:spans[f, u, 1]] == word
                pieces_here = sum(1 for s, e in offsets if s >= 0 and context[s:e] in word)
                cut += pieces_here < len(wordpiece_tokenizer.tokenize(word))
    assert cut > 0  # some window really held only part of the word
    assert (spans[:, 0] == -1).all()  # CLS has no span


@pytest.mark.parametrize("segmenter", ["chars", "jieba"])
def test_a_window_never_holds_more_words_than_tokens(segmenter, wordpiece_tokenizer, tmp_path):
    """One [UNK] covers a run of symbols that `chars` and jieba cut into a word each: numbered by the segmenter, the
    words of a window outran its tokens and the feature width (an IndexError in decoding)."""
    context = "开始" + "\U0001F600" * 90 + "结束了。北京大学创办于1898年。"
    path = write_squad(tmp_path / "d.json", [(context, [{"id": "q", "question": "什么?", "answers": []}])])
    examples, _, _ = load_examples(str(path), "predict")
    data = DataConfig(max_seq_length=64, max_query_length=16, doc_stride=16, word_segmenter=segmenter,
                      cache_dir=str(tmp_path))
    features, _ = build_features(examples, wordpiece_tokenizer, data, labels=False)
    words = [w for f in features["word_ids"] for w in f if w >= 0]
    assert sorted(set(words)) == list(range(max(words) + 1))  # no word without a token
    for f in features["word_ids"]:
        context_words = [w for w in f if w >= 0]
        assert max(context_words) - min(context_words) + 1 <= len(context_words)
    spans = unit_offsets(list(features["example_id"]), features["offset_mapping"], features["word_ids"], 64)
    assert context[spans[0, 1, 0]:spans[0, 1, 1]] == ("开" if segmenter == "chars" else "开始")


def test_answers_inside_a_word_are_counted(wordpiece_tokenizer, tmp_path):
    from mrc_cli.words import answers_inside_words, answers_longer_than

    context = "这个工艺共有七十二道工序，北京大学创办于1898年。"
    qas = [{"id": "inside", "question": "有几道？", "answers": [{"text": "七十二道", "answer_start": 6}]},
           {"id": "whole", "question": "哪所大学？", "answers": [{"text": "北京大学", "answer_start": 13}]}]
    path = write_squad(tmp_path / "d.json", [(context, qas)])
    examples, _, _ = load_examples(str(path), "train")
    for segmenter, inside, words in (("jieba", 1, [2, 1]), ("chars", 0, [4, 4])):  # jieba: 七十二|道工序
        features, _ = build_features(examples, wordpiece_tokenizer, DataConfig(word_segmenter=segmenter,
                                                                               cache_dir=str(tmp_path)), labels=True)
        assert answers_inside_words(features) == (inside, 2), segmenter
        # as decode.max_answer_length counts them: 4 tokens (a character each), in words as the segmenter cuts them
        assert [answers_longer_than(features, limit, "token") for limit in (3, 4)] == [(2, 2), (0, 2)]
        assert [answers_longer_than(features, limit, "word")[0] for limit in range(4)] == [
            sum(length > limit for length in words) for limit in range(4)], segmenter


@pytest.mark.parametrize("tokenizer_name", ["chinese_albert_tokenizer", "albert_tokenizer"])
def test_sentencepiece_words_on_real_cmrc_never_cut_a_jieba_word(tokenizer_name, request, tmp_path):
    """SentencePiece tokens cross jieba's words: pieces such as 学的 over 大学|的 (a Chinese vocabulary), or a whole
    run of Chinese as one unknown token (the English one). A word unit is every jieba word its tokens touch, so
    word-level spans and answers begin and end at jieba words; by a token's first character alone, the token after
    学的 began a word inside 的's word."""
    import jieba

    from mrc_cli.words import answers_inside_words

    tokenizer = request.getfixturevalue(tokenizer_name)
    articles = json.loads(shared_file("cmrc2018_dev.json").read_text(encoding="utf-8"))["data"][:10]
    path = tmp_path / "cmrc.json"
    path.write_text(json.dumps({"version": "slice", "data": articles}, ensure_ascii=False), encoding="utf-8")
    examples, _, _ = load_examples(str(path), "train")
    data = DataConfig(max_seq_length=128, doc_stride=32, word_segmenter="jieba", cache_dir=str(tmp_path))
    features, _ = build_features(examples, tokenizer, data, labels=True)
    spans = unit_offsets(list(features["example_id"]), features["offset_mapping"], features["word_ids"], 128)
    by_id = {ex["id"]: ex for ex in examples}
    jieba_words = {context: [(s, e) for w, s, e in jieba.tokenize(context) if w.strip()]
                   for context in set(examples["context"])}
    crossed = wider = 0
    inside = set()
    for f, feature in enumerate(features):
        ex = by_id[feature["example_id"]]
        starts, ends = map(set, zip(*jieba_words[ex["context"]]))
        units = unit_index(torch.tensor([feature["word_ids"]]))[0].tolist()
        for (start, end), unit in zip(feature["offset_mapping"], units):
            if start >= 0:
                word_start, word_end = spans[f, unit]
                assert word_start <= start and end <= word_end  # a token lies in its word
                assert word_start in starts and word_end in ends, (ex["context"][word_start:word_end], start, end)
                crossed += any(s in starts for s in range(start + 1, end))
        first, last = feature["start_positions"], feature["end_positions"]
        if first > 0:
            answer_start = ex["answers"]["answer_start"][0]
            answer_end = answer_start + len(ex["answers"]["text"][0])
            (word_start, _), (_, word_end) = spans[f, units[first]], spans[f, units[last]]
            assert word_start <= answer_start and answer_end <= word_end, ex["id"]
            # wider than its tokens where the answer starts or ends inside a word: what answers_inside_words counts
            tokens = feature["offset_mapping"][first][0], feature["offset_mapping"][last][1]
            if (word_start, word_end) != tokens:
                inside.add(ex["id"])
            wider += (word_start, word_end) != (answer_start, answer_end)
    assert crossed > 100  # tokens that cross a jieba word boundary are common here
    inside_words, labelled = answers_inside_words(features)
    assert labelled >= 15 and wider > 0  # some answers begin or end inside a word: labelled as the whole word
    # answers_inside_words also counts an answer whose first token follows a lone "▁" of its word (the same start)
    assert len(inside) <= inside_words


def test_a_run_warns_where_many_training_answers_are_longer_than_the_decoder_gives(tiny_bert_dir, tmp_path):
    from mrc_cli.training import train

    cfg = tiny_run_config(tiny_bert_dir, tmp_path / "run", max_steps=1, eval_steps=0, save_steps=0)
    cfg.decode.max_answer_length = 1
    train(cfg)
    warning = next(line for line in (tmp_path / "run" / "train.log").read_text().splitlines() if "warning:" in line)
    assert re.search(r"warning: \d+ of \d+ training answers \(\d+\.\d%\) are longer than "
                     r"decode.max_answer_length 1 tokens", warning)
    train(tiny_run_config(tiny_bert_dir, tmp_path / "default", max_steps=1, eval_steps=0, save_steps=0))
    assert "max_answer_length" not in (tmp_path / "default" / "train.log").read_text()  # 30: every answer fits


@pytest.fixture(scope="module")
def word_runs(tiny_bert_dir, tmp_path_factory):
    """Word-level runs on English (the tokenizer's words) and Chinese (jieba words), a few steps each."""
    from mrc_cli.training import train

    root = tmp_path_factory.mktemp("word_runs")
    runs = {}
    for lang, segmenter in (("en", "tokenizer"), ("zh", "jieba")):
        cfg = tiny_run_config(tiny_bert_dir, root / lang, max_steps=6, eval_steps=0, save_steps=0)
        cfg.model.span_level = "word"
        cfg.data.word_segmenter = segmenter
        cfg.data.train_file = str(QUICKSTART / f"{lang}_train.json")
        cfg.data.dev_file = str(QUICKSTART / f"{lang}_dev.json")
        cfg.data.max_seq_length = 256 if lang == "zh" else 128
        runs[lang] = (cfg, train(cfg))
    return runs


def _words(context: str, segmenter: str, tokenizer) -> tuple[set[int], set[int]]:
    """Start and end characters of the context's words as the segmenter sees them."""
    if segmenter == "jieba":
        import jieba

        spans = [(s, e) for w, s, e in jieba.tokenize(context) if w.strip()]
    else:
        spans = [span for _, span in tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(context)]
    return {s for s, _ in spans}, {e for _, e in spans}


def test_word_level_predictions_never_cut_a_word(word_runs, wordpiece_tokenizer):
    for lang, (cfg, result) in word_runs.items():
        predictions = json.loads((result.run_dir / "nbest.json").read_text())
        data = json.loads(open(cfg.data.dev_file, encoding="utf-8").read())["data"]
        contexts = {qa["id"]: p["context"] for a in data for p in a["paragraphs"] for qa in p["qas"]}
        checked = 0
        for qid, nbest in predictions.items():
            starts, ends = _words(contexts[qid], cfg.data.word_segmenter, wordpiece_tokenizer)
            for candidate in nbest:
                if candidate["start"] >= 0:
                    assert candidate["start"] in starts and candidate["end"] in ends, (lang, candidate)
                    checked += 1
        assert checked > 100


def test_word_level_runs_score_with_the_right_metric_and_predict(word_runs, tmp_path):
    en_cfg, en = word_runs["en"]
    zh_cfg, zh = word_runs["zh"]
    assert "HasAns_f1" in en.metrics  # the English dev set has unanswerable questions: SQuAD v2 rules
    assert {"EM", "F1", "AVERAGE", "SKIP"} <= set(zh.metrics)  # Chinese: the CMRC 2018 metric
    log = (zh.run_dir / "train.log").read_text(encoding="utf-8")
    assert "span level word: " in log and "answers start or end inside a word of data.word_segmenter jieba" in log
    runner = CliRunner()
    result = runner.invoke(app, ["predict", "--checkpoint", str(zh.run_dir), "--data", zh_cfg.data.dev_file,
                                 "--out", str(tmp_path / "cmrc_submission.json")])
    assert result.exit_code == 0, result.output
    submission = json.loads((tmp_path / "cmrc_submission.json").read_text(encoding="utf-8"))
    data = json.loads(open(zh_cfg.data.dev_file, encoding="utf-8").read())["data"]
    ids = [qa["id"] for a in data for p in a["paragraphs"] for qa in p["qas"]]
    assert sorted(submission) == sorted(ids) and all(isinstance(v, str) for v in submission.values())
    result = runner.invoke(app, ["eval", "--checkpoint", str(zh.run_dir), "--data", zh_cfg.data.dev_file,
                                 "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["F1"] == pytest.approx(zh.metrics["F1"]) and figures["TOTAL"] == len(ids)


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_words_that_are_whole_clauses_are_refused_for_word_spans_and_whole_word_masking(command, tiny_albert_dir,
                                                                                        tmp_path):
    """SentencePiece's pre-tokenizer makes each run of unspaced Chinese one word (19 tokens a word on the quickstart
    data, against 2.2 for English with this tiny vocabulary): taken whole, it would be the answer or the mask."""
    data = str(QUICKSTART / "zh_train.json")
    args = (["train", "--train", data, "--dev", str(QUICKSTART / "zh_dev.json"), "--output-dir", str(tmp_path / "run"),
             "--set", "model.span_level=word"] if command == "train" else
            ["pretrain", "--data", data, "--out", str(tmp_path / "run")])
    result = CliRunner().invoke(app, [*args, "--model", tiny_albert_dir, "--set", f"data.cache_dir={tmp_path / 'c'}",
                                      "--set", "train.cpu=true"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "data.word_segmenter tokenizer: its words are 1" in result.stderr
    assert "set data.word_segmenter=jieba (Chinese words) or chars" in result.stderr
    result = CliRunner().invoke(app, [*args, "--model", tiny_albert_dir, "--set", f"data.cache_dir={tmp_path / 'c'}",
                                      "--set", "train.cpu=true", "--set", "data.word_segmenter=chars",
                                      "--set", "train.max_steps=1",
                                      *(["--set", "train.eval_steps=0"] if command == "train" else [])])
    assert result.exit_code == 0, result.output  # one word a character: taken
