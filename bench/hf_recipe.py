"""Reference implementations of the Hugging Face question-answering recipe's post-processing, as benchmark baselines.

Both are our own code for `postprocess_qa_predictions` (transformers, examples/pytorch/question-answering/utils_qa.py):
per window, argsort the start and end logits, take the top n_best_size of ALL tokens, try every (start, end) pair in
Python and skip the invalid ones, then sort the survivors of the example. They share that loop and differ only in how
they reach the data:

- `recipe_postprocess` reads `datasets.Dataset`s the way the recipe does, so it is what users of the recipe run: it
  maps examples to features by iterating over every feature row (each row decoded from Arrow into Python, all
  columns), reads each window's offsets with a row access `features[i]["offset_mapping"]` inside the loop (None for
  non-context tokens) and each context from an example row. The recipe also decodes each feature row a second time
  for its optional `token_is_max_context` column and draws a progress bar; ours does neither, so it is, if anything,
  faster than the recipe.
- `classic_postprocess` starts from Python lists and a {id: context} dict: the same loop with no data access cost,
  an honest lower bound for any loop of this kind.

`mrc_cli.decoding.decode` must give the same answers as both (tests/test_decoding.py). Departures from the recipe,
to match our decoding contract: an example with no valid span gets "" (the recipe invents the text "empty" with score
0); the n-best list is the n_best_size best spans plus, with allow_null, the null candidate (the recipe lets the null
candidate take one of the n slots); null odds are null - (start + end), where the recipe's (null - start) - end may
round differently in the last float32 bit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

# (example_id, context, its windows as (offsets, start_logits, end_logits))
ExampleWindows = tuple[str, str, Iterable[tuple[Sequence, np.ndarray, np.ndarray]]]


def recipe_postprocess(
    examples,
    features,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    allow_null: bool = False,
    null_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
    """Answers, n-best lists and null odds (as `classic_postprocess`) from `datasets.Dataset`s, read as the recipe does.

    `examples` has the columns "id" and "context"; `features` has "example_id" and "offset_mapping" (None for
    non-context tokens, the recipe's convention) and may have more, which every row access decodes too. Logits are
    (F, L) in the features' order.
    """
    example_id_to_index = {example_id: i for i, example_id in enumerate(examples["id"])}
    features_per_example = defaultdict(list)
    for feature_index, feature in enumerate(features):  # decodes every column of every feature row
        features_per_example[example_id_to_index[feature["example_id"]]].append(feature_index)

    def windows(feature_indices: list[int]) -> Iterator:
        for feature_index in feature_indices:
            offsets = features[feature_index]["offset_mapping"]  # a row decode per window, inside the loop
            yield offsets, start_logits[feature_index], end_logits[feature_index]

    per_example = (
        (example["id"], example["context"], windows(features_per_example[example_index]))
        for example_index, example in enumerate(examples)
    )
    return _postprocess(per_example, n_best_size, max_answer_length, allow_null, null_threshold)


def classic_postprocess(
    example_ids: Sequence[str],
    offset_mappings: Sequence[Sequence],
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    contexts: Mapping[str, str],
    n_best_size: int = 20,
    max_answer_length: int = 30,
    allow_null: bool = False,
    null_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
    """Answers {id: text}, n-best lists {id: [{"text", "score", "probability"}]} and null odds {id: float}.

    `offset_mappings` are per-feature lists, unpadded; a non-context token is None (the recipe's convention) or
    [-1, -1] (ours). Logits are (F, L), padded to the longest feature.
    """
    features_per_example = defaultdict(list)
    for feature_index, example_id in enumerate(example_ids):
        features_per_example[example_id].append(feature_index)
    per_example = (
        (example_id, contexts[example_id], ((offset_mappings[f], start_logits[f], end_logits[f]) for f in indices))
        for example_id, indices in features_per_example.items()
    )
    return _postprocess(per_example, n_best_size, max_answer_length, allow_null, null_threshold)


def _postprocess(
    per_example: Iterable[ExampleWindows], n_best_size: int, max_answer_length: int, allow_null: bool, null_threshold
) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
    """The recipe's loop over examples: candidates of all windows, the n best, probabilities, the null decision."""
    answers, all_nbest, null_odds = {}, {}, {}
    for example_id, context, windows in per_example:
        null_prediction, candidates = None, []
        for offsets, window_start, window_end in windows:
            window_null = window_start[0] + window_end[0]
            if null_prediction is None or window_null < null_prediction["score"]:
                null_prediction = {"offsets": (0, 0), "score": window_null}
            candidates += _window_candidates(offsets, window_start, window_end, n_best_size, max_answer_length)
        nbest = sorted(candidates, key=lambda c: c["score"], reverse=True)[:n_best_size]
        best = nbest[0] if nbest else {"text": "", "score": -math.inf}  # its text is filled in below
        if allow_null:
            nbest = sorted([*nbest, null_prediction], key=lambda c: c["score"], reverse=True)

        for prediction in nbest:
            offsets = prediction.pop("offsets")
            prediction["text"] = context[offsets[0] : offsets[1]]
        if nbest:
            scores = np.array([prediction["score"] for prediction in nbest])
            exp_scores = np.exp(scores - np.max(scores))
            for probability, prediction in zip(exp_scores / exp_scores.sum(), nbest):
                prediction["probability"] = probability

        score_diff = null_prediction["score"] - best["score"]
        null_odds[example_id] = float(score_diff)
        answers[example_id] = "" if allow_null and score_diff > null_threshold else best["text"]
        # JSON-ready, as the recipe writes its nbest file: numpy floats become Python floats.
        all_nbest[example_id] = [
            {k: float(v) if isinstance(v, np.floating) else v for k, v in prediction.items()} for prediction in nbest
        ]
    return answers, all_nbest, null_odds


def _window_candidates(offsets, start_logits, end_logits, n_best_size: int, max_answer_length: int) -> list[dict]:
    """Every valid (start, end) pair among the window's top n_best_size starts and ends, as the recipe finds them."""
    start_indexes = np.argsort(start_logits)[-1 : -n_best_size - 1 : -1].tolist()
    end_indexes = np.argsort(end_logits)[-1 : -n_best_size - 1 : -1].tolist()
    candidates = []
    for start_index in start_indexes:
        for end_index in end_indexes:
            # Padding, question and special tokens hold no answer, yet they took their top-k slots above.
            if start_index >= len(offsets) or end_index >= len(offsets):
                continue
            start_offsets, end_offsets = offsets[start_index], offsets[end_index]
            if start_offsets is None or end_offsets is None or start_offsets[0] < 0 or end_offsets[0] < 0:
                continue
            if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                continue
            candidates.append(
                {
                    "offsets": (start_offsets[0], end_offsets[1]),
                    "score": start_logits[start_index] + end_logits[end_index],
                }
            )
    return candidates
