"""Span decoding: hand-built windows for each rule, then agreement with the Hugging Face recipe's loop."""

import math
import re
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest

from bench.bench_decoding import synthetic_batch, to_datasets
from bench.hf_recipe import classic_postprocess, recipe_postprocess
from mrc_cli.config import DecodeConfig
from mrc_cli.decoding import Prediction, decode, pad_offsets, predictions_to_json
from mrc_cli.errors import ConfigError

CONTEXT = "alpha beta gamma delta epsilon zeta eta theta"
WORD_SPANS = [[m.start(), m.end()] for m in re.finditer(r"\S+", CONTEXT)]
NOT_CONTEXT = [-1, -1]
PREFIX = 3  # [CLS] question [SEP]: the first context word is token 3


def _window(words: range) -> list[list[int]]:
    """Offsets of `[CLS] question [SEP] words... [SEP]`."""
    return [NOT_CONTEXT] * PREFIX + [WORD_SPANS[w] for w in words] + [NOT_CONTEXT]


def _logits(width: int, peaks: dict[int, float] | None = None) -> np.ndarray:
    """(width,) low, slightly decreasing background (no ties) with `peaks` {token: logit}."""
    row = (-5.0 - 0.01 * np.arange(width)).astype(np.float32)
    for token, value in (peaks or {}).items():
        row[token] = value
    return row


def _decode_windows(windows, starts, ends, cfg=DecodeConfig(), context=CONTEXT):
    """Decode one example ("q") from its windows' offsets and per-window {token: logit} peaks."""
    width = max(len(w) for w in windows)
    start_logits = np.stack([_logits(width, peaks) for peaks in starts])  # (F, L)
    end_logits = np.stack([_logits(width, peaks) for peaks in ends])  # (F, L)
    offsets = pad_offsets(windows, width)
    return decode(["q"] * len(windows), offsets, start_logits, end_logits, {"q": context}, cfg)["q"]


def _token(word: int, first: int = 0) -> int:
    """Token index of context word `word` in a window whose context starts at word `first`."""
    return PREFIX + word - first


def test_best_span_wins():
    starts = {_token(0): 3.0, _token(2): 6.0}
    ends = {_token(1): 3.0, _token(3): 5.0}
    prediction = _decode_windows([_window(range(8))], [starts], [ends])
    assert prediction.text == "gamma delta"
    assert (prediction.start, prediction.end) == (WORD_SPANS[2][0], WORD_SPANS[3][1])
    assert prediction.score == pytest.approx(11.0)
    assert prediction.nbest[0]["text"] == "gamma delta"
    assert [c["text"] for c in prediction.nbest[1:3]] == ["alpha beta gamma delta", "alpha beta"]  # 8, then 6


def test_end_before_start_is_rejected():
    # The two highest logits form a reversed span (start at epsilon, end at beta).
    starts = {_token(4): 8.0, _token(0): 2.0}
    ends = {_token(1): 8.0, _token(2): 2.0}
    prediction = _decode_windows([_window(range(8))], [starts], [ends])
    assert prediction.text == "alpha beta"
    assert prediction.score == pytest.approx(10.0)  # not the reversed pair's 16
    assert all(c["start"] < c["end"] for c in prediction.nbest)


def test_too_long_span_is_rejected():
    starts = {_token(0): 8.0, _token(3): 1.0}
    ends = {_token(4): 8.0}
    cfg = DecodeConfig(max_answer_length=2)
    prediction = _decode_windows([_window(range(8))], [starts], [ends], cfg)
    assert prediction.text == "delta epsilon"  # alpha..epsilon scores 16 but is 5 tokens long
    assert all(len(c["text"].split()) <= 2 for c in prediction.nbest)


def test_question_special_and_padding_tokens_are_never_chosen():
    short, long = _window(range(0, 3)), _window(range(0, 8))
    width = len(long)
    high = 100.0
    # Every non-context token of the short window, padding included, outscores its context.
    start_logits = np.stack([_logits(width), _logits(width)])  # (2, L)
    end_logits = np.stack([_logits(width), _logits(width)])  # (2, L)
    for row in (start_logits, end_logits):
        row[:, :PREFIX] = high
        row[0, len(short) - 1 :] = high
        row[1, len(long) - 1] = high
    offsets = pad_offsets([short, long], width)
    predictions = decode(["a", "b"], offsets, start_logits, end_logits, {"a": CONTEXT, "b": CONTEXT}, DecodeConfig())
    for prediction in predictions.values():
        assert prediction.text and prediction.score < 0
        assert all(c["start"] >= 0 for c in prediction.nbest)
    assert predictions["a"].text == predictions["b"].text == "alpha"  # the best background start and end


@pytest.mark.parametrize("winner", [0, 1])
def test_best_span_over_two_windows(winner):
    windows = [_window(range(0, 5)), _window(range(3, 8))]
    heights = [6.0, 5.0] if winner == 0 else [5.0, 6.0]
    starts = [{_token(1): heights[0]}, {_token(6, first=3): heights[1]}]
    ends = [{_token(2): heights[0]}, {_token(7, first=3): heights[1]}]
    prediction = _decode_windows(windows, starts, ends)
    assert prediction.text == ("beta gamma" if winner == 0 else "eta theta")
    assert {c["text"] for c in prediction.nbest[:2]} == {"beta gamma", "eta theta"}


def _null_case(cls_logits: list[float], cfg: DecodeConfig):
    """Span alpha..beta scores 10; window w has CLS start and end logits cls_logits[w]."""
    windows = [_window(range(0, 5)), _window(range(3, 8))]
    starts = [{0: cls_logits[0], _token(0): 5.0}, {0: cls_logits[1]}]
    ends = [{0: cls_logits[0], _token(1): 5.0}, {0: cls_logits[1]}]
    return _decode_windows(windows, starts, ends, cfg)


def test_null_answer_needs_allow_null_and_a_margin():
    null_wins = _null_case([6.0, 7.0], DecodeConfig(allow_null=True))
    assert null_wins.text == "" and (null_wins.start, null_wins.end) == (-1, -1)
    assert null_wins.null_score == pytest.approx(12.0)  # the lower of the two windows' CLS scores
    assert null_wins.null_odds == pytest.approx(2.0)
    assert null_wins.score == pytest.approx(10.0)

    assert _null_case([6.0, 7.0], DecodeConfig(allow_null=False)).text == "alpha beta"
    # One window that does not want the null answer is enough: null score 2 * 4 < 10.
    assert _null_case([6.0, 4.0], DecodeConfig(allow_null=True)).text == "alpha beta"


@pytest.mark.parametrize(("threshold", "text"), [(1.0, ""), (1.99, ""), (2.01, "alpha beta"), (3.0, "alpha beta")])
def test_threshold_moves_the_null_decision(threshold, text):
    cfg = DecodeConfig(allow_null=True, null_score_diff_threshold=threshold)
    assert _null_case([6.0, 7.0], cfg).text == text  # null_odds is 2


def test_text_is_cut_from_the_context_by_offsets():
    context = "An unbelievable result."
    subwords = [[3, 5], [5, 11], [11, 15], [16, 22], [22, 23]]  # un | believ | able | result | .
    window = [NOT_CONTEXT] * PREFIX + subwords + [NOT_CONTEXT]
    prediction = _decode_windows([window], [{_token(1): 5.0}], [{_token(2): 5.0}], context=context)
    assert (prediction.text, prediction.start, prediction.end) == ("believable", 5, 15)
    assert all(c["text"] == context[c["start"] : c["end"]] for c in prediction.nbest)


@pytest.mark.parametrize("allow_null", [False, True])
def test_nbest_probabilities_sum_to_one(allow_null):
    cfg = DecodeConfig(n_best_size=5, allow_null=allow_null)
    prediction = _null_case([4.0, 4.5], cfg)
    nbest = prediction.nbest
    assert sum(c["probability"] for c in nbest) == pytest.approx(1.0)
    assert [c["score"] for c in nbest] == sorted((c["score"] for c in nbest), reverse=True)
    assert len(nbest) == 5 + allow_null
    null_entries = [c for c in nbest if c["start"] == -1]
    assert len(null_entries) == allow_null
    if allow_null:
        assert null_entries[0]["text"] == "" and null_entries[0]["score"] == pytest.approx(8.0)


def test_example_without_a_valid_span_gets_empty_text():
    question_only = [NOT_CONTEXT] * 6
    for allow_null in (False, True):
        prediction = _decode_windows([question_only], [{3: 9.0}], [{4: 9.0}], DecodeConfig(allow_null=allow_null))
        assert (prediction.text, prediction.start, prediction.score) == ("", -1, -np.inf)
        assert prediction.null_odds == np.inf
        assert [c["probability"] for c in prediction.nbest] == ([1.0] if allow_null else [])


def test_interleaved_features_decode_like_grouped_ones():
    rng = np.random.default_rng(0)
    windows = [_window(range(0, 5)), _window(range(3, 8))]
    width = len(windows[0])
    ids = ["a", "b", "a", "b", "c"]
    offsets = pad_offsets([windows[0], windows[0], windows[1], windows[1], windows[0]], width)
    start_logits, end_logits = rng.normal(size=(2, len(ids), width)).astype(np.float32)
    contexts = dict.fromkeys("abc", CONTEXT)
    cfg = DecodeConfig(allow_null=True)
    together = decode(ids, offsets, start_logits, end_logits, contexts, cfg)
    assert list(together) == ["a", "b", "c"]  # order of first appearance
    for example_id in "abc":
        rows = [i for i, eid in enumerate(ids) if eid == example_id]
        alone = decode([example_id] * len(rows), offsets[rows], start_logits[rows], end_logits[rows], contexts, cfg)
        assert together[example_id] == alone[example_id]
    reversed_order = decode(ids[::-1], offsets[::-1], start_logits[::-1], end_logits[::-1], contexts, cfg)
    assert {k: v.text for k, v in reversed_order.items()} == {k: v.text for k, v in together.items()}


def test_masked_top_k_finds_spans_the_classic_loop_misses():
    # Question tokens hold the two best logits; with n_best_size=2 the classic loop's top-2 are both question tokens.
    window = _window(range(8))
    starts = _logits(len(window), {1: 9.0, 2: 9.0, _token(2): 3.0})[None]  # (1, L)
    ends = _logits(len(window), {1: 9.0, 2: 9.0, _token(3): 3.0})[None]  # (1, L)
    cfg = DecodeConfig(n_best_size=2)
    answers, _, _ = classic_postprocess(["q"], [window], starts, ends, {"q": CONTEXT}, n_best_size=2)
    prediction = decode(["q"], pad_offsets([window]), starts, ends, {"q": CONTEXT}, cfg)["q"]
    assert answers["q"] == ""
    assert prediction.text == "gamma delta"


def test_pad_offsets_pads_with_minus_one():
    padded = pad_offsets([[[0, 3], [4, 6]], [[-1, -1]]], length=4)
    assert padded.shape == (2, 4, 2)
    assert padded[0, :2].tolist() == [[0, 3], [4, 6]]
    assert (padded[0, 2:] == -1).all() and (padded[1] == -1).all()
    assert pad_offsets([[[0, 1]] * 3, [[0, 1]]]).shape == (2, 3, 2)
    with pytest.raises(ValueError, match="padded to 2"):
        pad_offsets([[[0, 1]] * 3], length=2)


def _pad_offsets_simply(offset_mappings, length):
    """The obvious per-feature loop, as the reference for the flat and Arrow paths."""
    padded = np.full((len(offset_mappings), length, 2), -1, dtype=np.int64)
    for i, offsets in enumerate(offset_mappings):
        if len(offsets):
            padded[i, : len(offsets)] = offsets
    return padded


def test_pad_offsets_equals_the_simple_loop_for_every_input_form():
    batch = synthetic_batch(np.random.default_rng(3), 60, seq_lengths=(20, 120), window_weights=(0.5, 0.5))
    offset_mappings = [*batch.offset_mappings, []]  # a feature without tokens too
    width = max(map(len, offset_mappings)) + 3  # logits padded wider than the longest feature
    expected = _pad_offsets_simply(offset_mappings, width)
    _, features, _ = to_datasets(batch)
    shuffled = features.shuffle(seed=0)  # an indices mapping over the Arrow table: the column must follow it
    forms = {
        "lists": offset_mappings,
        "arrays": [np.asarray(offsets, dtype=np.int64).reshape(-1, 2) for offsets in offset_mappings],
        "arrow int32": pa.array(offset_mappings, type=pa.list_(pa.list_(pa.int32()))),
        "chunked arrow": pa.chunked_array([pa.array(offset_mappings[:7]), pa.array(offset_mappings[7:])]),
    }
    for name, form in forms.items():
        padded = pad_offsets(form, width)
        assert padded.dtype == np.int64 and np.array_equal(padded, expected), name
    column_width = max(map(len, batch.offset_mappings))
    assert np.array_equal(pad_offsets(features["offset_mapping"]), expected[:-1, :column_width])
    shuffled_lists = list(shuffled.with_format(None)["offset_mapping"])
    assert np.array_equal(pad_offsets(shuffled["offset_mapping"]), _pad_offsets_simply(shuffled_lists, column_width))


def test_pad_offsets_rejects_none_and_malformed_pairs():
    with pytest.raises(ValueError, match=r"\[-1, -1\]"):
        pad_offsets(pa.array([[[0, 3], None]]))
    with pytest.raises(ValueError, match="pair per token"):
        pad_offsets([[[0, 3, 4]]])


def test_decode_rejects_offsets_of_another_width():
    offsets = pad_offsets([_window(range(8))])
    logits = np.zeros((1, offsets.shape[1] + 1), dtype=np.float32)
    with pytest.raises(ValueError, match="pad_offsets"):
        decode(["q"], offsets, logits, logits, {"q": CONTEXT}, DecodeConfig())


def test_config_rejects_an_empty_nbest():
    with pytest.raises(ConfigError, match="decode.n_best_size"):
        DecodeConfig(n_best_size=0)


def test_predictions_to_json():
    """The three files' contents, written out by hand from _null_case: the span alpha..beta (chars 0-10) scores
    5 + 5 = 10; the null score is the lower window's CLS 6 + 6 = 12; probabilities are a softmax over the n-best."""
    predictions = {
        "null": _null_case([6.0, 7.0], DecodeConfig(allow_null=True, n_best_size=1)),
        "span": _null_case([6.0, 7.0], DecodeConfig(allow_null=False, n_best_size=1)),
    }
    answers, nbest, null_odds = predictions_to_json(predictions)
    assert answers == {"null": "", "span": "alpha beta"}
    null_wins = 1 / (1 + math.exp(-2))  # e^12 / (e^12 + e^10)
    assert nbest == {
        "null": [{"text": "", "start": -1, "end": -1, "score": 12.0, "probability": pytest.approx(null_wins)},
                 {"text": "alpha beta", "start": 0, "end": 10, "score": 10.0, "probability": pytest.approx(1 - null_wins)}],
        "span": [{"text": "alpha beta", "start": 0, "end": 10, "score": 10.0, "probability": pytest.approx(1.0)}],
    }
    assert null_odds == {"null": pytest.approx(2.0), "span": pytest.approx(2.0)}  # 12 - 10, whether or not null may win


def _shuffled_batch(allow_null: bool):
    """400 questions of 1-4 windows of 50-384 tokens, features in arbitrary order; half unanswerable for v2."""
    # SQuAD v1 models never want the null answer; for v2 half the questions are unanswerable (CLS high).
    null_fraction = 0.5 if allow_null else 0.0
    batch = synthetic_batch(
        np.random.default_rng(7), 400, seq_lengths=(50, 384), window_weights=(0.25,) * 4, null_fraction=null_fraction
    )
    order = np.random.default_rng(8).permutation(len(batch.example_ids))  # features in arbitrary order
    return replace(
        batch,
        example_ids=[batch.example_ids[i] for i in order],
        offset_mappings=[batch.offset_mappings[i] for i in order],
        start_logits=batch.start_logits[order],
        end_logits=batch.end_logits[order],
    )


@pytest.mark.parametrize("allow_null", [False, True])
def test_agrees_with_the_recipe_and_the_classic_loop(allow_null):
    batch = _shuffled_batch(allow_null)
    logits = (batch.start_logits, batch.end_logits)
    width = logits[0].shape[1]
    assert width == max(map(len, batch.offset_mappings)) and min(map(len, batch.offset_mappings)) < 100
    examples, features, recipe_features = to_datasets(batch)
    assert recipe_features[0]["offset_mapping"][0] is None  # the recipe's convention off the context

    loop_args = (20, 30, allow_null)
    recipe_answers, _, recipe_null_odds = recipe_postprocess(examples, recipe_features, *logits, *loop_args)
    answers, _, null_odds = classic_postprocess(batch.example_ids, batch.offset_mappings, *logits, batch.contexts,
                                                *loop_args)
    # End to end from the datasets, as an evaluation runs it: the columns go in as they are.
    offsets = pad_offsets(features["offset_mapping"], width)
    predictions = decode(features["example_id"], offsets, *logits, batch.contexts, DecodeConfig(allow_null=allow_null))

    assert {eid: p.text for eid, p in predictions.items()} == answers == recipe_answers
    assert {eid: p.null_odds for eid, p in predictions.items()} == null_odds == recipe_null_odds
    num_null = sum(text == "" for text in answers.values())
    assert (num_null == 0) if not allow_null else (0.2 < num_null / len(answers) < 0.8)


def test_equal_scores_are_ordered_by_place_in_the_context():
    # Window 1: alpha..beta, alpha..delta and gamma..delta all score 10 (gamma..beta is reversed); window 2, from
    # gamma on, scores gamma..delta 10 as well. Three n-best places for the four ties, in either window order.
    whole, tail = _window(range(8)), _window(range(2, 8))
    whole_peaks = ({_token(0): 5.0, _token(2): 5.0}, {_token(1): 5.0, _token(3): 5.0})
    tail_peaks = ({_token(2, first=2): 5.0}, {_token(3, first=2): 5.0})
    expected = [("alpha beta", 10.0), ("alpha beta gamma delta", 10.0), ("gamma delta", 10.0)]
    for windows, (starts, ends) in (([whole, tail], zip(whole_peaks, tail_peaks)),
                                    ([tail, whole], zip(tail_peaks, whole_peaks))):
        prediction = _decode_windows(windows, starts, ends, DecodeConfig(n_best_size=3))
        assert [(c["text"], c["score"]) for c in prediction.nbest] == expected
        assert prediction.text == "alpha beta"


def test_ties_decode_alike_whatever_the_order_of_the_windows():
    """bf16 logits (as under autocast) tie often: the answers and n-best lists must not depend on the feature order."""
    batch = _shuffled_batch(allow_null=True)
    step = np.float32(2.0**-5)  # bf16's step between 4 and 8
    start_logits, end_logits = (np.round(side / step) * step for side in (batch.start_logits, batch.end_logits))
    offsets = pad_offsets(batch.offset_mappings, start_logits.shape[1])
    cfg = DecodeConfig(allow_null=True)
    forward = decode(batch.example_ids, offsets, start_logits, end_logits, batch.contexts, cfg)
    backward = decode(batch.example_ids[::-1], offsets[::-1], start_logits[::-1], end_logits[::-1], batch.contexts, cfg)
    tied = sum(len({c["score"] for c in p.nbest}) < len(p.nbest) for p in forward.values())
    assert tied > 0.5 * len(forward)
    assert backward == forward


def _examples_with_context_top_k(batch, k: int = 20) -> set[str]:
    """Examples where the classic loop's top-k starts and ends of every window are context tokens (no lost slots)."""
    clean = dict.fromkeys(batch.contexts, True)
    rows = zip(batch.example_ids, batch.offset_mappings, batch.start_logits, batch.end_logits)
    for example_id, offsets, start_logits, end_logits in rows:
        top = np.concatenate([np.argsort(start_logits)[-k:], np.argsort(end_logits)[-k:]])
        clean[example_id] &= all(t < len(offsets) and offsets[t][0] >= 0 for t in top)
    return {example_id for example_id, is_clean in clean.items() if is_clean}


@pytest.mark.parametrize("allow_null", [False, True])
def test_nbest_lists_match_the_classic_loop(allow_null):
    batch = _shuffled_batch(allow_null)
    logits = (batch.start_logits, batch.end_logits)
    offsets = pad_offsets(batch.offset_mappings, logits[0].shape[1])
    predictions = decode(batch.example_ids, offsets, *logits, batch.contexts, DecodeConfig(allow_null=allow_null))
    classic = classic_postprocess(batch.example_ids, batch.offset_mappings, *logits, batch.contexts,
                                  allow_null=allow_null)
    _, nbest, _ = predictions_to_json(predictions)
    # The loop lists a span once per window that offers it; ours once (its best score), so the lists agree where the
    # loop's holds no span twice (no text twice, as its entries keep no offsets).
    once = {example_id for example_id, expected in classic[1].items()
            if len({c["text"] for c in expected if c["text"]}) == sum(bool(c["text"]) for c in expected)}
    comparable = _examples_with_context_top_k(batch) & once
    # With allow_null a high CLS logit takes one of the loop's slots in most unanswerable questions.
    assert len(comparable) > (0.3 if allow_null else 0.5) * len(nbest)
    assert len(once) < len(nbest)  # windows overlap: some spans do come twice

    assert nbest.keys() == classic[1].keys()
    for example_id, candidates in nbest.items():
        context, prediction = batch.contexts[example_id], predictions[example_id]
        assert all(list(c) == ["text", "start", "end", "score", "probability"] for c in candidates)
        assert all(c["text"] == (context[c["start"] : c["end"]] if c["start"] >= 0 else "") for c in candidates)
        assert sum(c["start"] == -1 for c in candidates) == allow_null
        assert sum(c["probability"] for c in candidates) == pytest.approx(1.0)
        assert (prediction.start, prediction.end) in [(c["start"], c["end"]) for c in candidates[: 1 + allow_null]]
        spans = [(c["start"], c["end"]) for c in candidates]
        assert len(set(spans)) == len(spans)  # each span once
        if example_id in comparable:
            expected = classic[1][example_id]
            assert [(c["text"], c["score"]) for c in candidates] == [(c["text"], c["score"]) for c in expected]
            # Ours in float64; the loop's softmax runs in the logits' float32.
            probabilities = [c["probability"] for c in expected]
            assert [c["probability"] for c in candidates] == pytest.approx(probabilities, rel=1e-5, abs=1e-9)


def test_prediction_equality_compares_the_nbest_lists():
    fields = ("q", "alpha", 0, 5, 1.0, 0.5, -0.5)
    one = {"text": "alpha", "start": 0, "end": 5, "score": 1.0, "probability": 1.0}
    assert Prediction(*fields).nbest == []
    assert Prediction(*fields, nbest=[one]) == Prediction(*fields, nbest=[dict(one)])
    assert Prediction(*fields, nbest=[one]) != Prediction(*fields)
    assert "nbest" not in repr(Prediction(*fields, nbest=[one]))  # 20 dicts would drown the answer


def test_features_of_an_example_without_a_context_are_refused_with_its_id():
    offsets = pad_offsets([_window(range(8))], 16)
    with pytest.raises(ValueError, match="contexts has no context for 1 example id.*'b'"):
        decode(["b"], offsets, _logits(16)[None], _logits(16)[None], {"a": CONTEXT}, DecodeConfig())
