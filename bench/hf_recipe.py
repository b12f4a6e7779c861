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


# ----------------------------------------------------------------------------------------------------------------------
# The recipe's preprocessing, training loop and evaluation loop, as baselines for bench/bench_suite.py.
#
# Our own code for what transformers' examples/pytorch/question-answering/run_qa_no_trainer.py does with its default
# flags: `prepare_train_features` / `prepare_validation_features` (one tokenizer call with overflowing windows, then a
# Python loop over `sequence_ids` and offsets), `DataLoader(shuffle=True)` over the features, AutoModelForQuestionAnswering
# in fp32 under accelerate, AdamW at 5e-5 with weight decay 0 (grouped by parameter name), a linear schedule without
# warm-up, no gradient clipping, then a sequential evaluation loop whose logits are padded with -100 into one float64
# array and handed to the post-processing above. The recipe's `--pad_to_max_length` is a store_true flag, so its default
# is dynamic padding (DataCollatorWithPadding); `pad_to_max_length=True` gives the other mode (default_data_collator
# over features padded to max_seq_length, the default of the Trainer version run_qa.py).


def recipe_prepare_train_features(
    examples: dict,
    tokenizer,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    pad_to_max_length: bool = False,
    keep_example_id: bool = False,
) -> dict:
    """The recipe's training features of a batch of examples: windows labelled with the first answer's tokens.

    A batched `Dataset.map` function over examples with "question", "context" and "answers" ({text, answer_start}).
    As in the recipe, the first answer is taken as given (answer_start unchecked, surrounding whitespace included)
    and a window that does not hold all of it is labelled with the CLS index. `keep_example_id` adds an "example_id"
    column (the recipe drops it), so that labels can be compared feature by feature.
    """
    tokenized, sample_mapping, context_index = _recipe_tokenize(examples, tokenizer, max_seq_length, doc_stride,
                                                                pad_to_max_length)
    offset_mapping = tokenized.pop("offset_mapping")
    tokenized["start_positions"], tokenized["end_positions"] = [], []
    if keep_example_id:
        tokenized["example_id"] = []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        answers = examples["answers"][sample_mapping[i]]
        start, end = _recipe_label(offsets, tokenized.sequence_ids(i), answers, _cls_index(input_ids, tokenizer),
                                   context_index)
        tokenized["start_positions"].append(start)
        tokenized["end_positions"].append(end)
        if keep_example_id:
            tokenized["example_id"].append(examples["id"][sample_mapping[i]])
    return tokenized


def recipe_prepare_validation_features(
    examples: dict, tokenizer, max_seq_length: int = 384, doc_stride: int = 128, pad_to_max_length: bool = False
) -> dict:
    """The recipe's evaluation features: windows with their example id and offsets, None off the context."""
    tokenized, sample_mapping, context_index = _recipe_tokenize(examples, tokenizer, max_seq_length, doc_stride,
                                                                pad_to_max_length)
    tokenized["example_id"] = []
    for i in range(len(tokenized["input_ids"])):
        sequence_ids = tokenized.sequence_ids(i)
        tokenized["example_id"].append(examples["id"][sample_mapping[i]])
        tokenized["offset_mapping"][i] = [
            offsets if sequence_ids[k] == context_index else None for k, offsets in enumerate(tokenized["offset_mapping"][i])
        ]
    return tokenized


def _recipe_tokenize(examples: dict, tokenizer, max_seq_length: int, doc_stride: int, pad_to_max_length: bool):
    """(BatchEncoding, overflow_to_sample_mapping, index of the context sequence): the recipe's one tokenizer call."""
    pad_on_right = tokenizer.padding_side == "right"  # (question, context), else (context, question)
    # Leading whitespace of a question would take room from the context in every window.
    questions = [q.lstrip() for q in examples["question"]]
    tokenized = tokenizer(
        questions if pad_on_right else examples["context"],
        examples["context"] if pad_on_right else questions,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=min(max_seq_length, tokenizer.model_max_length),
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False,
    )
    return tokenized, tokenized.pop("overflow_to_sample_mapping"), 1 if pad_on_right else 0


def _cls_index(input_ids: list[int], tokenizer) -> int:
    if tokenizer.cls_token_id in input_ids:
        return input_ids.index(tokenizer.cls_token_id)
    if tokenizer.bos_token_id in input_ids:
        return input_ids.index(tokenizer.bos_token_id)
    return 0


def _recipe_label(offsets, sequence_ids, answers: dict, cls_index: int, context_index: int) -> tuple[int, int]:
    """The recipe's walk over one window: first and last context token, then inwards to the answer's tokens."""
    if len(answers["answer_start"]) == 0:
        return cls_index, cls_index
    start_char = answers["answer_start"][0]
    end_char = start_char + len(answers["text"][0])
    token_start = 0
    while sequence_ids[token_start] != context_index:
        token_start += 1
    token_end = len(sequence_ids) - 1
    while sequence_ids[token_end] != context_index:
        token_end -= 1
    if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
        return cls_index, cls_index
    # As in the recipe, this walk does not stop at the last context token: for an answer that starts in the window's
    # last context token it runs on over [SEP] (and padding), whose offsets are (0, 0).
    while token_start < len(offsets) and offsets[token_start][0] <= start_char:
        token_start += 1
    while offsets[token_end][1] >= end_char:
        token_end -= 1
    return token_start - 1, token_end + 1


def recipe_featurize(examples, tokenizer, train: bool, max_seq_length: int = 384, doc_stride: int = 128,
                     pad_to_max_length: bool = False, keep_example_id: bool = False, load_from_cache_file: bool = True):
    """The recipe's `examples.map(prepare_..._features, batched=True, remove_columns=...)`; cached by datasets when
    `examples` was loaded from files (load_dataset), computed again otherwise."""
    from functools import partial

    if train:
        prepare = partial(recipe_prepare_train_features, keep_example_id=keep_example_id)
    else:
        prepare = recipe_prepare_validation_features
    return examples.map(
        partial(prepare, tokenizer=tokenizer, max_seq_length=max_seq_length, doc_stride=doc_stride,
                pad_to_max_length=pad_to_max_length),
        batched=True,
        remove_columns=examples.column_names,
        load_from_cache_file=load_from_cache_file,
        desc=f"Running tokenizer on {'train' if train else 'validation'} dataset",
    )


def _recipe_collator(tokenizer):
    """default_data_collator for features padded to max_seq_length (tokenizer None), else dynamic padding."""
    from transformers import DataCollatorWithPadding, default_data_collator

    return default_data_collator if tokenizer is None else DataCollatorWithPadding(tokenizer)


def recipe_train(model_dir: str, features, steps: int, batch_size: int, lr: float = 5e-5, seed: int = 0,
                 tokenizer=None):
    """The recipe's training loop for `steps` optimizer steps; returns (model, stats).

    `features` are the recipe's training features; pass `tokenizer` when they are not padded to max_seq_length (the
    recipe's default, dynamic padding). stats: loop seconds, features, real (attention-mask) and padded tokens seen,
    mean loss. The clock starts at the first batch, after the model is loaded and the loader built.
    """
    import time

    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import AutoModelForQuestionAnswering, get_scheduler

    accelerator = Accelerator()
    set_seed(seed)  # before the model: the new QA head is drawn from it, then the shuffling
    model = AutoModelForQuestionAnswering.from_pretrained(model_dir)
    if "example_id" in features.column_names:
        features = features.remove_columns("example_id")
    loader = DataLoader(features, shuffle=True, collate_fn=_recipe_collator(tokenizer), batch_size=batch_size)
    no_decay = ("bias", "LayerNorm.weight")  # the recipe's name filter; its weight decay is 0 by default anyway
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)], "weight_decay": 0.0},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=lr)
    scheduler = get_scheduler("linear", optimizer=optimizer, num_warmup_steps=0, num_training_steps=steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    done, num_features = 0, 0
    real_tokens = padded_tokens = padded_square = loss_sum = torch.zeros((), device=accelerator.device)
    model.train()
    started = time.perf_counter()
    while done < steps:  # epochs, each a new shuffle, as the recipe's epoch loop with max_train_steps
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            num_features += batch["input_ids"].shape[0]
            real_tokens = real_tokens + batch["attention_mask"].sum()
            padded_tokens = padded_tokens + batch["input_ids"].numel()
            padded_square = padded_square + batch["input_ids"].numel() * batch["input_ids"].shape[1]  # attention cost
            loss_sum = loss_sum + loss.detach()
            done += int(accelerator.sync_gradients)
            if done >= steps:
                break
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # the loop queues GPU work without waiting for it
    seconds = time.perf_counter() - started
    stats = {"seconds": seconds, "steps": done, "features": num_features, "real_tokens": int(real_tokens),
             "padded_tokens": int(padded_tokens), "padded_square": int(padded_square), "mean_loss": float(loss_sum) / max(done, 1)}
    return accelerator.unwrap_model(model), stats


def recipe_eval(model, features, examples, batch_size: int = 8, tokenizer=None, version_2_with_negative: bool = False,
                null_threshold: float = 0.0, n_best_size: int = 20, max_answer_length: int = 30):
    """The recipe's evaluation loop then `recipe_postprocess`; returns (answers {id: text}, null odds, stats).

    stats: forward and post-processing seconds, features.
    """
    import time

    start_logits, end_logits, forward_s = recipe_logits(model, features, batch_size, tokenizer)
    started = time.perf_counter()
    answers, _, null_odds = recipe_postprocess(examples, features, start_logits, end_logits, n_best_size,
                                               max_answer_length, version_2_with_negative, null_threshold)
    stats = {"forward_s": forward_s, "postprocess_s": time.perf_counter() - started, "features": len(features)}
    return answers, null_odds, stats


def recipe_logits(model, features, batch_size: int = 8, tokenizer=None) -> tuple[np.ndarray, np.ndarray, float]:
    """(start logits, end logits, seconds) of the recipe's evaluation loop: batches in the features' order, fp32, no
    gradients; `tokenizer` as in `recipe_train` (None: features padded to max_seq_length). Logits are padded with
    -100 into one (features, longest) float64 array each, as the recipe's `create_and_fill_np_array` does."""
    import time

    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(features.remove_columns(["example_id", "offset_mapping"]),
                        collate_fn=_recipe_collator(tokenizer), batch_size=batch_size)
    device = next(model.parameters()).device
    model.eval()
    all_start, all_end = [], []
    started = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            outputs = model(**{k: v.to(device) for k, v in batch.items()})
            all_start.append(outputs.start_logits.cpu().numpy())
            all_end.append(outputs.end_logits.cpu().numpy())
    seconds = time.perf_counter() - started
    width = max(x.shape[1] for x in all_start)
    return _fill_logits(all_start, width), _fill_logits(all_end, width), seconds


def _fill_logits(batches: list[np.ndarray], width: int) -> np.ndarray:
    logits = np.full((sum(len(b) for b in batches), width), -100, dtype=np.float64)
    row = 0
    for batch in batches:
        logits[row : row + len(batch), : batch.shape[1]] = batch
        row += len(batch)
    return logits
