"""Windowed features: question + context windows with character offsets, whole-word ids and (optionally) labels.

One builder serves training, evaluation and prediction. A feature keeps, per token:
- `offset_mapping`: [start, end) characters of the context for context tokens, [-1, -1] for all others (question,
  special tokens), so decoding needs no `sequence_ids` and no Python `None`s; training features leave it out
  (nothing in training reads it, and writing it was a sixth of featurizing time);
- `word_ids`: the index of the whole word of the context the token belongs to (the same word has the same id in
  every window of its example), -1 for non-context tokens;
- `start_positions`/`end_positions` (when labels are asked for): the answer's first and last token, the CLS
  position 0 when the window does not hold the whole answer or the question is unanswerable, and -100 (ignored by
  the loss) for an answerable question whose answer could not be located in its context or whose characters hold
  no token (a zero-width space).
Features are not padded: mrc_cli.batching.FeatureTensors pads (or packs) each batch on the device.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import importlib.metadata
import inspect
import json
import os
import re
import sys
import sysconfig
import time
import uuid
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import lru_cache, partial
from operator import itemgetter
from pathlib import Path
from typing import Callable

import numpy as np
from tokenizers import Encoding

from mrc_cli.cache import mark_used
from mrc_cli.config import DataConfig, check_data_config
from mrc_cli.errors import ConfigError, DataError
from mrc_cli.files import write_text_atomically
from mrc_cli.tokenizer import tokenizer_fingerprint

FEATURES_VERSION = 5  # bump when the feature layout changes, so old cache files are not reused
IGNORE_INDEX = -100
CLS_INDEX = 0
# "chars": each CJK character, each run of other letters and digits ("1898", "iPhone"), each other symbol
_CHAR_WORDS = re.compile(r"[\u4e00-\u9fff]|[^\W\u4e00-\u9fff]+|[^\s\w]")


@dataclass
class FeatureSummary:
    examples: int
    features: int
    questions_truncated: int
    answers_lost_to_truncation: int  # answerable, located, yet no window holds the whole answer
    unknown_context_tokens: float  # share of the windows' context tokens that are the tokenizer's unknown token
    from_cache: bool
    seconds: float
    damaged: str | None = None  # why the cached features were not used, rebuilt

    def __str__(self) -> str:
        source = ("loaded from cache" if self.from_cache else "tokenized" if not self.damaged else
                  f"tokenized again, the cache entry being damaged: {self.damaged}")
        unknown = unknown_note(self.unknown_context_tokens, "context tokens")
        return (
            f"{self.examples} examples -> {self.features} features ({source} in {self.seconds:.1f}s); "
            f"{self.questions_truncated} questions truncated, "
            f"{self.answers_lost_to_truncation} answers in no window{unknown}"
        )


UNKNOWN_SHOWN = 0.01  # MiniLM (English vocabulary): 0 % on the SQuAD v2 dev head, 59 % on CMRC 2018 dev


def unknown_note(share: float, what: str) -> str:
    """"; N % of the <what> are the tokenizer's unknown token ..." where that share is UNKNOWN_SHOWN or more, else ""."""
    if share < UNKNOWN_SHOWN:
        return ""
    return (f"; {share:.1%} of the {what} are the tokenizer's unknown token: it cannot read that much of the text (for "
            "Chinese, an encoder with a Chinese vocabulary)")


def _check_arguments(examples, tokenizer) -> None:
    """From Python, a path for the tokenizer or a list for the examples failed with an AttributeError deep inside."""
    import datasets

    if not isinstance(examples, datasets.Dataset):
        raise TypeError(f"examples must be a datasets.Dataset of canonical records (mrc_cli.data.to_dataset(records), "
                        f"or load_examples(path, use)), not {type(examples).__name__}")
    if not hasattr(tokenizer, "num_special_tokens_to_add"):
        raise TypeError(f"tokenizer must be a loaded tokenizer (mrc_cli.tokenizer.load_tokenizer(path)), not "
                        f"{type(tokenizer).__name__} {str(tokenizer)[:60]!r}")


def build_features(examples, tokenizer, data: DataConfig, labels: bool, cache: bool = True, offsets: bool = True,
                   progress: bool = True):
    """Tokenize a canonical examples `Dataset` into windowed features; returns (features Dataset, FeatureSummary).

    With `cache`, features are stored under data.cache_dir and a second call with the same data, tokenizer and
    settings loads them; without it (the Reader's few questions) they stay in memory. `progress`: datasets' bar
    (not for a Reader call, where it would flash for a few milliseconds).
    """
    _check_arguments(examples, tokenizer)
    check_data_config(data, tokenizer.num_special_tokens_to_add(pair=True))
    started = time.perf_counter()
    # names the cache files; in memory any unique name does, and hashing the tokenizer cost the Reader (mrc serve)
    # ~0.3 s a call
    fingerprint = _fingerprint(examples, tokenizer, data, (labels, offsets)) if cache else uuid.uuid4().hex
    cache_dir = cache_root(data) / "features"
    if cache:
        cache_dir.mkdir(parents=True, exist_ok=True)
    entry = sorted(cache_dir.glob(f"{fingerprint}*.arrow")) if cache else []
    counts_file = cache_dir / f"{fingerprint}.counts.json"  # the counts travel with the cached features
    num_proc = data.num_proc if data.num_proc > 1 and len(examples) >= 2 * data.num_proc else None
    backend = rust_encoder(tokenizer)

    def tokenize():
        with _progress_bars(shown=progress):
            return examples.map(
                partial(_tokenize_batch, backend=backend, data=data, labels=labels, offsets=offsets,
                        type_ids="token_type_ids" in tokenizer.model_input_names),
                batched=True,
                batch_size=256,
                num_proc=num_proc,
                remove_columns=examples.column_names,
                cache_file_name=str(cache_dir / f"{fingerprint}.arrow") if cache else None,
                keep_in_memory=not cache,
                new_fingerprint=fingerprint,
                desc="Tokenizing",
            )

    counts, damaged, recorded = {}, None, False
    if entry:  # a file cut at a record batch's end loads as fewer features: checked against the count written
        try:
            counts = json.loads(counts_file.read_text()) if counts_file.is_file() else {}
            features = tokenize()
            recorded = "features" in counts
            written = counts.pop("features", len(features))  # entries of before it was written: as they are
            if written != len(features):
                damaged = f"{len(features)} features of the {written} written"
        except (OSError, ValueError) as err:  # a file cut inside a batch, an empty or cut counts file
            damaged = f"{type(err).__name__}: {err}"
        if damaged:
            for path in [*entry, counts_file]:
                path.unlink(missing_ok=True)
            counts = {}
    if not entry or damaged:
        features = tokenize()
    else:
        mark_used(counts_file if counts_file.is_file() else entry[0])
    if set(counts) != {"questions_truncated", "answers_lost_to_truncation", "unknown_context_tokens"}:  # or older
        counts = {"questions_truncated": _count_truncated(examples, backend, data.max_query_length),
                  "answers_lost_to_truncation": _count_lost(examples, features) if labels else 0,
                  "unknown_context_tokens": _unknown_share(features, tokenizer.unk_token_id)}
        recorded = False
    if cache and not recorded:  # whole or not at all: another process may read it the moment it is there
        write_text_atomically(counts_file, json.dumps({**counts, "features": len(features)}))
    summary = FeatureSummary(examples=len(examples), features=len(features), **counts,
                             from_cache=bool(entry) and not damaged, seconds=time.perf_counter() - started,
                             damaged=damaged)
    return features, summary


def _unknown_share(features, unknown_id: int | None) -> float:
    """The share of context tokens (word id >= 0) over all windows that are `unknown_id` (none for byte-level BPE)."""
    if unknown_id is None or not len(features):
        return 0.0
    ids, words = (np.asarray(features.data.column(name).combine_chunks().flatten())
                  for name in ("input_ids", "word_ids"))
    context = words >= 0
    return float((ids[context] == unknown_id).sum() / max(int(context.sum()), 1))


@contextlib.contextmanager
def _progress_bars(shown: bool):
    """datasets' progress bars as they are, or off for the block and back as they were after it."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not shown:
        disable_progress_bars()
    try:
        yield
    finally:
        if not shown and not was_disabled:
            enable_progress_bars()


CACHE_ENV = "MRC_CACHE_DIR"  # the cache of this machine where a run's config names none, or a model was trained elsewhere


def cache_location(cache_dir: str | None) -> Path:
    """The cache folder `cache_dir`, else $MRC_CACHE_DIR, else ~/.cache/mrc-cli."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mrc-cli")


def cache_root(data: DataConfig) -> Path:
    """Where validated examples and features are cached: data.cache_dir, else $MRC_CACHE_DIR, else ~/.cache/mrc-cli;
    refused, before any work, where it cannot be written."""
    root = cache_location(data.cache_dir)
    problem = unwritable(root)
    if problem:
        other = "" if data.cache_dir else f" or {CACHE_ENV}"
        raise ConfigError(f"the cache folder {root} {problem}: set data.cache_dir (--set data.cache_dir=DIR){other} to a "
                          "folder you can write")
    return root


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot hold cache files (made where it is missing), or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"cannot be made ({err.strerror or err})"
    return None if os.access(folder, os.W_OK) else "is not writable"


def _tokenize_batch(batch: dict, backend, data: DataConfig, labels: bool, offsets: bool, type_ids: bool) -> dict:
    segment = segmenter(data.word_segmenter)
    word_starts = {}  # context -> char starts of its words, for segmenters other than the tokenizer's
    out = {"input_ids": [], "example_id": [], "word_ids": []}
    if type_ids:
        out["token_type_ids"] = []
    if offsets:
        out["offset_mapping"] = []
    if labels:
        out.update(start_positions=[], end_positions=[])
    # Plain lists, not numpy, per feature: converting thousands of small arrays back to lists cost more than the rest.
    for ex, (whole, windows) in enumerate(_windows(batch["question"], batch["context"], backend, data)):
        context = batch["context"][ex]
        if segment is not None and context not in word_starts:
            word_starts[context] = words_with_tokens(segment(context), whole.offsets)
        if labels:
            answer = None if batch["is_impossible"][ex] else _answer_chars(whole.offsets, batch["answers"][ex])
        for window in windows:
            sequence = window.sequence_ids
            if 1 in sequence:  # the context is one contiguous run after the question
                first, last = sequence.index(1), len(sequence) - sequence[::-1].index(1)
            else:  # only characters the tokenizer drops (zero-width spaces, control characters): no context tokens
                first = last = len(sequence)
            before, after = [-1] * first, [-1] * (len(sequence) - last)
            context_offsets = window.offsets[first:last]
            out["input_ids"].append(window.ids)
            if type_ids:
                out["token_type_ids"].append(window.type_ids)
            out["example_id"].append(batch["id"][ex])
            if offsets:  # the tokenizer's (start, end) tuples go to Arrow as they are: it stores tuples and lists alike
                out["offset_mapping"].append([(-1, -1)] * first + context_offsets + [(-1, -1)] * len(after))
            words = token_words(context_offsets, window.word_ids[first:last], word_starts.get(context))
            out["word_ids"].append(before + words + after)
            if labels:
                start, end = _label_window(context_offsets, first, answer, batch["is_impossible"][ex])
                out["start_positions"].append(start)
                out["end_positions"].append(end)
    return out


def rust_encoder(tokenizer):
    """A copy of the tokenizer's Rust backend without padding or truncation (windows are cut by `_windows`), so the
    caller's tokenizer keeps its own settings.

    Called directly because transformers' conversion of every encoding into Python dicts was a fifth of featurizing
    time (docs/benchmarks.md).
    """
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.no_padding()
    backend.no_truncation()
    return backend


def _windows(questions: list[str], contexts: list[str], backend, data: DataConfig) -> list[tuple]:
    """Each example's whole context encoding and its windows, question + context cut: the encodings transformers'
    tokenizer call gives with truncation="only_second", a stride and return_overflowing_tokens
    (tests/test_features.py), built from each distinct context tokenized once. A SQuAD paragraph has ~5 questions and
    a `mrc serve` request may ask many about one context; the pair call tokenized the context again for every
    question. Cut as the pair call's truncation does (the Rust `Encoding.truncate` with the stride), to the room the
    question leaves; questions longer than `max_query_length` tokens are cut first (`_encode_questions`).
    """
    distinct = list(dict.fromkeys(contexts))
    context_of = dict(zip(distinct, backend.encode_batch(distinct, add_special_tokens=False)))
    special = backend.num_special_tokens_to_add(is_pair=True)
    windows = []
    for question, context in zip(_encode_questions(questions, backend, data.max_query_length), contexts):
        whole = cut = context_of[context]
        room = data.max_seq_length - special - len(question.ids)
        if len(cut.ids) > room:
            cut = Encoding.merge([cut])  # a copy: truncate cuts in place, and other questions share this context
            cut.truncate(room, stride=data.doc_stride)
        windows.append((whole, [backend.post_process(question, piece, add_special_tokens=True)
                                for piece in (cut, *cut.overflowing)]))
    return windows


def _encode_questions(questions: list[str], backend, max_query_length: int) -> list:
    """Questions without special tokens; one longer than `max_query_length` tokens is cut at the end character of
    its last token that fits and encoded again (the pair call cuts only contexts; `Encoding.truncate` would keep the
    rest as overflowing pieces that `post_process` pairs with every window). A prefix can encode into more tokens
    than it was cut from (byte-level BPE: a character's bytes all carry its offsets), so it is cut a token shorter
    until it fits."""
    encoded = backend.encode_batch(questions, add_special_tokens=False)
    for i, whole in enumerate(encoded):
        keep = max_query_length
        while len(encoded[i].ids) > max_query_length:
            end = whole.offsets[keep - 1][1] if keep else 0
            encoded[i] = backend.encode(questions[i][:end], add_special_tokens=False)
            keep -= 1
    return encoded


def _answer_chars(offsets: list, answers: dict) -> tuple[int, int] | None:
    """[start, end) characters of the first located answer, narrowed to those the context's tokens (`offsets`, the
    whole context's) cover: surrounding whitespace and characters the tokenizer drops (zero-width spaces, control
    characters) belong to no token, and labelling them would take in the neighbouring word. None where no answer is
    located or its characters hold no token."""
    located = [(t, s) for t, s in zip(answers["text"], answers["answer_start"]) if s >= 0]
    if not located:
        return None
    text, start_char = located[0]
    end_char = start_char + len(text)
    first = bisect_right(offsets, start_char, key=itemgetter(0)) - 1  # the token the answer starts in, or the next
    if first < 0 or offsets[first][1] <= start_char:
        first += 1
    last = bisect_left(offsets, end_char, key=itemgetter(0)) - 1  # the last token starting before the answer's end
    if first > last:
        return None
    return max(start_char, offsets[first][0]), min(end_char, max(e for _, e in offsets[first:last + 1]))


def _label_window(context_offsets: list, first: int, answer: tuple[int, int] | None,
                  is_impossible: bool) -> tuple[int, int]:
    """Token positions of the answer's characters (`_answer_chars`) in this window (whose context tokens start at
    `first`); CLS when the question is unanswerable or the window does not hold the whole answer, ignored when the
    answer has no characters to point to."""
    if is_impossible:
        return CLS_INDEX, CLS_INDEX
    if answer is None:
        return IGNORE_INDEX, IGNORE_INDEX
    start_char, end_char = answer
    if not context_offsets or start_char < context_offsets[0][0] or end_char > context_offsets[-1][1]:
        return CLS_INDEX, CLS_INDEX
    # the last token starting at or before the answer, the first token ending at or after it, not before the start:
    # a SentencePiece "▁" alone ends where the piece after it ends, and would end "$" before it starts
    start_token = bisect_right(context_offsets, start_char, key=itemgetter(0)) - 1
    end_token = max(bisect_left(context_offsets, end_char, key=itemgetter(1)), start_token)
    return first + start_token, first + end_token


@lru_cache(maxsize=None)
def segmenter(name: str) -> Callable[[str], list[int]] | None:
    """A function from context to the sorted start characters of its words; None for the tokenizer's own words."""
    if name == "tokenizer":
        return None
    if name == "chars":
        return lambda text: [m.start() for m in _CHAR_WORDS.finditer(text)]
    if name == "jieba":
        import logging

        import jieba

        jieba.setLogLevel(logging.WARNING)  # its dictionary-loading chatter is not for our users
        return lambda text: [s for w, s, _ in jieba.tokenize(text) if w.strip()]
    return partial(_starts_of_words, words_of=_user_segmenter(name)[0], name=name)


def segmenter_version(name: str) -> str:
    """What a segmenter's words depend on besides its name, for the feature cache's key: jieba's version; for a
    module:function, its module, the module defining the function (where it is re-exported) and the Python files
    beside them (a helper of the user's; not in site-packages): edited, the cache must not serve the old words.
    Files, not the modules loaded, so every process gets one key. Installed libraries it calls are not followed:
    clear the cache after upgrading one."""
    if name in ("tokenizer", "chars"):
        return ""
    if name == "jieba":
        return importlib.metadata.version("jieba")
    function, module = _user_segmenter(name)
    try:
        defined_in = inspect.getsourcefile(function)
    except TypeError:  # a builtin or C function: no source file
        defined_in = None
    own = {Path(source) for source in (getattr(module, "__file__", None), defined_in) if source}
    installed = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    beside = {source for folder in {path.parent for path in own} if folder.resolve() not in installed
              for source in folder.glob("*.py")
              if source.is_file() and not source.name.startswith(".")}  # not an editor's lock (.#name.py)
    sources = sorted(own | beside)
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest() if sources else ""


def _user_segmenter(name: str) -> tuple[Callable[[str], list[str]], object]:
    """The function and module of data.word_segmenter `module:function`."""
    module_name, _, func_name = name.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` finds a module of the working folder; the `mrc` script does not
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
        return getattr(module, func_name), module
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"data.word_segmenter {name!r}: cannot import it ({err}); the module must be importable from "
                          "the working folder or PYTHONPATH, also to evaluate or predict with a model trained with it "
                          "(its config.yaml names it)") from None


def token_words(offsets: list, tokenizer_words: list[int], word_starts: list[int] | None) -> list[int]:
    """The word of each token: the tokenizer's own (`word_starts` None), else the word holding the token's first
    character (`word_starts`: `words_with_tokens`, where a token belongs to one word whole)."""
    if word_starts is None:
        return tokenizer_words
    return [bisect_right(word_starts, start) - 1 for start, _ in offsets]


def words_with_tokens(word_starts: list[int], offsets: list) -> list[int]:
    """The start characters of the words (`segmenter(name)(text)`) in which a token of the text (`offsets`, all of
    its tokens) starts, the words a token crosses merged into one: a word start strictly inside a token (the
    SentencePiece token 学的 over jieba's 大学|的, WordPiece's [UNK] for a run of symbols, each a word of `chars`)
    is no word start, else a word-level span or mask would begin or end inside a segmenter word. Numbered by these,
    word ids skip no number, so a window never holds more words than tokens."""
    crossed = {w for start, end in offsets
               for w in range(bisect_right(word_starts, start), bisect_left(word_starts, end))}
    kept = [s for w, s in enumerate(word_starts) if w not in crossed]
    owners = {bisect_right(kept, start) - 1 for start, _ in offsets}
    # tokens before the first word (text a segmenter left out) are a word of their own, not outside the context
    return ([0] if -1 in owners else []) + [kept[w] for w in sorted(owners) if w >= 0]


def _starts_of_words(text: str, words_of: Callable[[str], list[str]], name: str) -> list[int]:
    """Start characters of a user segmenter's words, found left to right in the text (whitespace between them, and
    text it leaves out, belongs to the word before)."""
    where = f"data.word_segmenter {name!r} on the context {text[:30]!r}{'...' if len(text) > 30 else ''}"
    try:
        words = words_of(text)
    except Exception as err:
        raise DataError(f"{where}: it failed ({type(err).__name__}: {err})") from None
    if not isinstance(words, (list, tuple)) or not all(isinstance(word, str) for word in words):
        got = type(words).__name__ if not isinstance(words, (list, tuple)) else "a list holding " + next(
            type(word).__name__ for word in words if not isinstance(word, str))
        raise DataError(f"{where}: it returned {got}; it must return the words of the text, a list of strings")
    starts, pos = [], 0
    for word in words:
        if not word.strip():
            continue
        found = text.find(word, pos)
        if found < 0:
            raise DataError(f"{where}: its word {word!r} is not in the text after the words before it (from char "
                            f"{pos}); it must return the text's own words, in order")
        starts.append(found)
        pos = found + len(word)
    # a segmenter that leaves most of the text out makes the text between its words one word each: at word level the
    # model then learns whole stretches of context as answers
    covered, text_chars = sum(len(word.strip()) for word in words), len("".join(text.split()))
    if text_chars and covered < text_chars / 2:
        raise DataError(f"{where}: its words cover {covered} of the text's {text_chars} characters (whitespace aside); "
                        "it must return all the text's words, punctuation included")
    return starts


def _fingerprint(examples, tokenizer, data: DataConfig, columns: tuple[bool, bool]) -> str:
    """Same data, tokenizer and settings -> same cache file (our own key: in-memory datasets get random ones)."""
    h = hashlib.sha256()
    table = examples.with_format("arrow")[:]  # hashing Arrow buffers: no per-row Python objects
    for column in ("id", "question", "context", "answers", "is_impossible"):
        for chunk in table.column(column).chunks:
            # a slice (`examples.select(range(a, b))`, a fold) shares the whole table's buffers: its offset and length
            # say which rows it holds
            h.update(repr((chunk.offset, len(chunk))).encode())
            for buffer in chunk.buffers():
                if buffer is not None:
                    h.update(buffer)
    h.update(tokenizer_fingerprint(tokenizer).encode())
    settings = (data.max_seq_length, data.doc_stride, data.max_query_length, data.word_segmenter,
                segmenter_version(data.word_segmenter), columns,
                "token_type_ids" in tokenizer.model_input_names)  # a column the backend's JSON does not record
    h.update(repr((FEATURES_VERSION, settings)).encode())
    return "features-" + h.hexdigest()[:24]


def column(dataset, name: str) -> list:
    """A whole column as a Python list, read through Arrow (iterating a datasets Column formats row by row)."""
    return dataset.with_format("arrow")[name].to_pylist()


def feature_lengths(features) -> list[int]:
    """Tokens per feature, from the Arrow list offsets without materialising the ids."""
    import pyarrow.compute as pc

    return pc.list_value_length(features.with_format("arrow")["input_ids"]).to_pylist()


def _count_truncated(examples, backend, max_query_length: int) -> int:
    encoded = backend.encode_batch(column(examples, "question"), add_special_tokens=False)
    return sum(len(enc.ids) > max_query_length for enc in encoded)


def _count_lost(examples, features) -> int:
    labelled = {ex for ex, s in zip(column(features, "example_id"), column(features, "start_positions")) if s > CLS_INDEX}
    answerable = [
        ex for ex, answers, impossible in zip(column(examples, "id"), column(examples, "answers"), column(examples, "is_impossible"))
        if not impossible and any(s >= 0 for s in answers["answer_start"])
    ]
    return sum(ex not in labelled for ex in answerable)
