"""A data file made ready for one job (train, eval or predict): read, validated, featurized, with its gold answers.

What training, `mrc eval`, `mrc predict` and `mrc preprocess` load; k-fold (`select_split`) builds `Split`s in
memory and hands them to `train(cfg, train_split, dev_split)`.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

from mrc_cli.config import DataConfig, ModelConfig
from mrc_cli.errors import DataError
from mrc_cli.features import FeatureSummary, build_features, cache_root, column
from mrc_cli.metrics import unscorable
from mrc_cli.tokenizer import load_tokenizer


@dataclass
class Split:
    """One data file made ready for a job: examples, their validation report, gold answers and features."""

    examples: object  # datasets.Dataset of canonical records
    report: object  # ValidationReport
    golds: list[dict]
    features: object  # datasets.Dataset of features
    summary: FeatureSummary

    def describe(self) -> str:
        """What was read and what became of it: the validation summary, then the features' (windows, truncations)."""
        return f"{self.report.summary()}\n{self.summary}"

    @cached_property  # read once: training evaluates the same split every eval_steps
    def contexts(self) -> dict[str, str]:
        return dict(zip(column(self.examples, "id"), column(self.examples, "context")))


def featurize_file(source: str, tokenizer, data: DataConfig, use: str, offsets: bool = False) -> Split:
    """Read, validate and featurize one data file; labels unless `use` is predict, offsets unless it is train (or
    with `offsets`: distillation maps a teacher onto training windows through them); gold answers unless it is
    predict (nothing scores predictions, and a test file has no answers to score them by)."""
    from mrc_cli.validate import load_examples

    with _cyclic_gc_paused():
        loaded = load_scorable(source, data) if use == "eval" else load_examples(
            source, use, data.format, cache_root(data) / "examples")
        return _featurize(*loaded, tokenizer, data, use, offsets)


def load_scorable(source: str, data: DataConfig):
    """(examples, report, golds) of a file to score, refused where its metric cannot score it: before a training run,
    `mrc eval`, `mrc kfold` or an export's parity check has spent its time, not when it scores."""
    from mrc_cli.validate import load_examples

    examples, report, golds = load_examples(source, "eval", data.format, cache_root(data) / "examples")
    problem = unscorable(golds, source, data.metric)
    if problem:
        raise DataError(problem)
    return examples, report, golds


def select_split(examples, report, golds: list[dict], rows: list[int], tokenizer, data: DataConfig, use: str) -> Split:
    """The examples at `rows` of a loaded file (a fold) featurized for `use`, with their golds: a Split in memory,
    whose features the cache keeps under the content of those rows. `report` stays the whole file's."""
    chosen = examples.select(rows)
    ids = set(column(chosen, "id"))
    with _cyclic_gc_paused():
        return _featurize(chosen, report, [gold for gold in golds if gold["id"] in ids], tokenizer, data, use)


def _featurize(examples, report, golds: list[dict], tokenizer, data: DataConfig, use: str, offsets: bool = False) -> Split:
    features, summary = build_features(examples, tokenizer, data, labels=use != "predict", offsets=use != "train" or offsets)
    return Split(examples, report, golds if use != "predict" else [], features, summary)


@contextmanager
def _cyclic_gc_paused():
    """Reading and featurizing make millions of short-lived objects without cycles (refcounting frees them); the
    cyclic collector's passes over a heap that holds torch and transformers cost more than the work itself: 1.47 ->
    1.07 s on the SQuAD train head (docs/benchmarks.md)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def preprocess_file(source: str, model: ModelConfig, data: DataConfig, use: str) -> Split:
    """`mrc preprocess`: featurize with the model's tokenizer into the cache that later runs read."""
    return featurize_file(source, load_tokenizer(model.tokenizer or model.name_or_path), data, use)
