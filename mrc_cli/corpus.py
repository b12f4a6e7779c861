"""The pre-training corpus: the contexts of SQuAD-style files and the documents of plain text files, each distinct text
once, without the contexts of the files you will evaluate on, cut into sequences with word ids.

- A SQuAD-style file (any format `read_data` reads) gives its contexts: a context asked about by 30 questions is one
  text, and a text met again (in any file, compared with whitespace folded) is counted as a duplicate and skipped.
- A plain text file is UTF-8 with documents separated by blank lines; the line breaks inside a document stay (the
  tokenizers treat them as spaces; Chinese lines are not glued together with a space). A file with one document per
  line and no blank lines is one long document, cut into full sequences like any other.
- Leak guard: the contexts of the eval files are left out unless `include_eval_contexts`, as whole texts and wherever
  one occurs inside a longer text: that part is cut out and the rest kept. Whitespace is ignored in the search, so a
  context wrapped into lines (even a Chinese one, wrapped without spaces) is found. Both counts are reported.
- A text becomes [CLS] tokens [SEP] sequences of at most max_seq_length tokens, cut between words (inside a word only
  when one word is longer than a sequence) into near-equal parts, so no sequence is a short leftover. Short texts are
  not packed together: length-grouped batches already pad little, attention never mixes unrelated paragraphs, and a
  fine-tuning window also holds one context.
"""

from __future__ import annotations

import re
import time
from array import array
from bisect import bisect_right
from itertools import accumulate
from dataclasses import asdict, dataclass
from pathlib import Path

from mrc_cli.config import DataConfig, PretrainConfig
from mrc_cli.data import is_json, read_data, read_text
from mrc_cli.errors import DataError
from mrc_cli.features import rust_encoder, segmenter, token_words, unknown_note, words_with_tokens


@dataclass
class SourceCount:
    file: str
    kind: str  # "contexts" (SQuAD-style) or "text"
    records: int  # questions (contexts files) or documents (text files) read
    distinct: int  # texts not met before in this or an earlier file
    eval_matches: int  # eval contexts in those texts: whole texts and ones found inside a longer text
    unreadable: int = 0  # records `read_data` could not read (`mrc validate FILE` lists them)
    eval_inside: int = 0  # of eval_matches, those found inside a longer text


@dataclass
class Corpus:
    texts: list[str]
    sources: list[SourceCount]
    eval_files: list[str]
    eval_contexts: int  # distinct contexts in the eval files
    include_eval_contexts: bool
    duplicates: int = 0  # texts skipped because an identical one came earlier

    @property
    def eval_matches(self) -> int:
        return sum(s.eval_matches for s in self.sources)

    @property
    def eval_inside(self) -> int:
        return sum(s.eval_inside for s in self.sources)

    def summary(self) -> list[str]:
        """What was included and what was left out, one line per file and one for the leak guard."""
        lines = []
        for s in self.sources:
            read, distinct = ("questions", "contexts") if s.kind == "contexts" else ("documents", "documents")
            lines.append(f"{s.file}: {s.records} {read} -> {s.distinct} distinct {distinct}"
                         + (f", {s.eval_matches} of them in the eval files" if s.eval_matches else "")
                         + (f" ({s.eval_inside} inside a longer text)" if s.eval_inside else "")
                         + (f"; {s.unreadable} records unreadable (mrc validate lists them)" if s.unreadable else ""))
        if not self.eval_files:
            lines.append("no eval file named (--eval-data or data.dev_file): no context left out")
        elif self.include_eval_contexts:
            lines.append(f"included: {self.eval_matches} texts that are contexts of {', '.join(self.eval_files)}"
                         f"{self._inside_note('in')} ({self.eval_contexts} contexts there; --include-eval-contexts)")
        else:
            lines.append(f"left out: {self.eval_matches} texts that are contexts of {', '.join(self.eval_files)}"
                         f"{self._inside_note('cut out of')} ({self.eval_contexts} contexts there; "
                         "--include-eval-contexts keeps them)")
        lines.append(f"corpus: {len(self.texts)} texts; {self.duplicates} repeats skipped (a context of several "
                     "questions, a text met before)")
        return lines

    def _inside_note(self, where: str) -> str:
        return f", {self.eval_inside} of them {where} a longer text" if self.eval_inside else ""

    def to_dict(self) -> dict:
        return {"sources": [asdict(s) for s in self.sources], "eval_files": self.eval_files,
                "eval_contexts": self.eval_contexts, "include_eval_contexts": self.include_eval_contexts,
                "eval_matches": self.eval_matches, "eval_inside": self.eval_inside, "duplicates": self.duplicates,
                "texts": len(self.texts)}


def collect_texts(pretrain: PretrainConfig, eval_files: list[str], fmt: str = "auto") -> Corpus:
    """The distinct texts of pretrain.data_files (contexts) and text_files (documents), in file order, less the
    eval files' contexts (whole texts, or cut out of a longer one) unless pretrain.include_eval_contexts."""
    eval_index = EvalContexts([c for f in eval_files for c in _contexts(f, fmt)[0]])
    corpus = Corpus([], [], list(eval_files), len(eval_index.keys), pretrain.include_eval_contexts)
    seen: set[str] = set()
    sources = [(f, "contexts") for f in pretrain.data_files] + [(f, "text") for f in pretrain.text_files]
    for path, kind in sources:
        texts, unreadable = _contexts(path, fmt) if kind == "contexts" else (read_documents(Path(path)), 0)
        count = SourceCount(path, kind, len(texts), 0, 0, unreadable)
        for text in texts:
            key = _key(text)
            if key in seen:
                corpus.duplicates += 1
                continue
            seen.add(key)
            if key in eval_index.keys:
                count.distinct += 1
                count.eval_matches += 1
                if pretrain.include_eval_contexts:
                    corpus.texts.append(text)
                continue
            spans = eval_index.find(text)
            count.eval_matches += len(spans)
            count.eval_inside += len(spans)
            if spans and not pretrain.include_eval_contexts:
                text = _cut(text, spans)
                if not text or _key(text) in seen:  # nothing left, or what is left came before
                    corpus.duplicates += bool(text)
                    continue
                seen.add(_key(text))
            count.distinct += 1
            corpus.texts.append(text)
        corpus.sources.append(count)
    return corpus


# An eval context is found by looking up _ANCHOR characters of the text every _STRIDE characters in a table of each
# context's first _STRIDE anchors, then comparing the whole context there: one dict lookup per _STRIDE characters of
# corpus, whatever the number of contexts. Contexts too short to have _STRIDE anchors are searched for one by one.
_ANCHOR, _STRIDE = 24, 16


class EvalContexts:
    """The eval files' contexts: `keys` (whitespace folded) to recognise a whole text, and `find` for the places one
    occurs inside a text, whitespace ignored (a wrapped context, even a Chinese one wrapped without spaces)."""

    def __init__(self, contexts: list[str]):
        self.keys = {_key(c) for c in contexts}
        self._anchors: dict[str, list[tuple[str, int]]] = {}
        self._short: list[str] = []
        for bare in {"".join(c.split()) for c in contexts} - {""}:
            if len(bare) < _ANCHOR + _STRIDE - 1:
                self._short.append(bare)
                continue
            for offset in range(_STRIDE):
                self._anchors.setdefault(bare[offset:offset + _ANCHOR], []).append((bare, offset))

    def find(self, text: str) -> list[tuple[int, int]]:
        """[start, end) character ranges of `text`, sorted, each an eval context there (found overlaps kept)."""
        bare = "".join(text.split())
        found = set()
        for i in range(0, len(bare) - _ANCHOR + 1, _STRIDE):
            for context, offset in self._anchors.get(bare[i:i + _ANCHOR], ()):
                if i >= offset and bare.startswith(context, i - offset):
                    found.add((i - offset, i - offset + len(context)))
        for context in self._short:
            start = bare.find(context)
            while start != -1:
                found.add((start, start + len(context)))
                start = bare.find(context, start + 1)
        return _in_text(text, sorted(found)) if found else []


def _in_text(text: str, bare_spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The [start, end) ranges of `text` that [start, end) ranges of the text without its whitespace cover."""
    words = [(m.start(), len(m.group())) for m in re.finditer(r"\S+", text)]
    bare_starts = list(accumulate((n for _, n in words), initial=0))

    def position(bare: int) -> int:
        w = bisect_right(bare_starts, bare) - 1
        return words[w][0] + bare - bare_starts[w]

    return [(position(start), position(end - 1) + 1) for start, end in bare_spans]


def _cut(text: str, spans: list[tuple[int, int]]) -> str:
    """`text` less the sorted spans: the pieces left, each stripped, one a line."""
    pieces, kept_from = [], 0
    for start, end in spans:
        pieces.append(text[kept_from:start])
        kept_from = max(kept_from, end)
    pieces.append(text[kept_from:])
    return "\n".join(p.strip() for p in pieces if p.strip())


def _contexts(path: str, fmt: str) -> tuple[list[str], int]:
    """The context of every question record of a SQuAD-style file (repeats included) and of every paragraph without
    questions, and the unreadable records."""
    raw = read_data(path, fmt)
    return [record["context"] for record in raw.records] + raw.unasked_contexts, len(raw.problems)


def read_documents(path: Path) -> list[str]:
    """A plain text file's documents: the runs of lines between blank lines. SQuAD-style JSON or JSON Lines given as
    text is refused: read as text, its questions and answers would be trained on, and the leak guard would not find
    its contexts."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    text = read_text(path)
    first_line = text.strip().split("\n")[0]
    if text.lstrip()[:1] in ("{", "[") and (is_json(text) or first_line.startswith("{") and is_json(first_line)):
        raise DataError(f"{path}: JSON, not plain text: give SQuAD-style data as --data (its contexts), plain text as "
                        "--text")
    return [doc.strip() for doc in re.split(r"\n\s*\n", text) if doc.strip()]


def _key(text: str) -> str:
    """Texts that differ only in whitespace are the same text."""
    return " ".join(text.split())


@dataclass
class SequenceSummary:
    texts: int
    sequences: int
    tokens: int  # without the special tokens
    words: int  # summed over sequences: a word cut by a sequence boundary counts in both
    longest: int  # tokens of the longest sequence, special tokens included
    seconds: float
    unknown_tokens: float = 0.0  # share of the tokens that are the tokenizer's unknown token

    def __str__(self) -> str:
        return (f"{self.texts} texts -> {self.sequences} sequences of up to {self.longest} tokens; {self.tokens} tokens, "
                f"{self.words} words ({self.seconds:.1f}s){unknown_note(self.unknown_tokens, 'tokens')}")


def build_sequences(texts: list[str], tokenizer, data: DataConfig):
    """(datasets.Dataset of input_ids and word_ids (-1 on [CLS]/[SEP]), SequenceSummary) of `texts` cut into
    sequences of at most data.max_seq_length tokens; words as data.word_segmenter gives them."""
    import datasets
    import numpy as np
    import pyarrow as pa

    started = time.perf_counter()
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise DataError(f"{type(tokenizer).__name__} has no [CLS]/[SEP] tokens to frame a sequence with")
    encoder = rust_encoder(tokenizer)
    segment = segmenter(data.word_segmenter)
    room = data.max_seq_length - 2  # [CLS] and [SEP]
    ids, words, offsets = array("i"), array("i"), array("i", [0])  # flat, as Arrow list arrays store them
    num_words = 0
    for i in range(0, len(texts), 256):
        batch = texts[i:i + 256]
        for text, encoding in zip(batch, encoder.encode_batch(batch, add_special_tokens=False)):
            starts = words_with_tokens(segment(text), encoding.offsets) if segment else None
            token_word = token_words(encoding.offsets, encoding.word_ids, starts)
            for a, b in _cuts(token_word, room):
                ids.extend([tokenizer.cls_token_id, *encoding.ids[a:b], tokenizer.sep_token_id])
                words.extend([-1, *token_word[a:b], -1])
                offsets.append(len(ids))
                num_words += sum(1 for t in range(a, b) if t == a or token_word[t] != token_word[t - 1])

    def column(values: array) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(np.frombuffer(offsets, dtype=np.int32)),
                                        pa.array(np.frombuffer(values, dtype=np.int32)))

    sequences = datasets.Dataset(pa.table({"input_ids": column(ids), "word_ids": column(words)}))
    lengths = np.diff(np.frombuffer(offsets, dtype=np.int32))
    tokens = len(ids) - 2 * len(sequences)
    unknown = np.count_nonzero(np.frombuffer(ids, dtype=np.int32) == tokenizer.unk_token_id) if tokenizer.unk_token_id \
        is not None else 0
    summary = SequenceSummary(len(texts), len(sequences), tokens, num_words, int(lengths.max()) if len(lengths) else 0,
                              time.perf_counter() - started, float(unknown / max(tokens, 1)))
    return sequences, summary


def _cuts(token_word: list[int], room: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of at most `room` tokens: each an equal share of what is left, moved back to the
    start of the word it would cut (unless that word fills the whole share)."""
    cuts, start, n = [], 0, len(token_word)
    while start < n:
        left = n - start
        end = start + -(-left // -(-left // room))  # left / ceil(left / room), rounded up
        if end < n:
            back = end
            while back > start and token_word[back] == token_word[back - 1]:
                back -= 1
            end = back if back > start else end
        cuts.append((start, end))
        start = end
    return cuts
