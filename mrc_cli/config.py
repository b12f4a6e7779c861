"""Typed run config: dataclasses with the defaults, YAML files on top, flags and `--set key=value` on top of those.

Precedence, lowest first: dataclass defaults, the YAML file, named flags, `--set section.key=value`. Every value is
checked against its field's type, and an unknown key names the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mrc_cli.decoding import DecodeConfig
from mrc_cli.errors import ConfigError

SEGMENTERS = ("tokenizer", "chars", "jieba")  # or "module:function" returning a list of words


@dataclass
class DataConfig:
    train_file: str | None = None
    dev_file: str | None = None
    format: str = "auto"  # auto | squad | jsonl | hf
    max_seq_length: int = 384  # longer: fewer windows per example, slower steps
    doc_stride: int = 128  # tokens shared by neighbouring windows; must leave room for the question
    max_query_length: int = 64  # longer questions are cut to this many tokens
    word_segmenter: str = "tokenizer"  # whole words: the tokenizer's pre-tokenizer, chars, jieba, or module:function
    num_proc: int = 1  # processes for tokenization (datasets.map)
    cache_dir: str | None = None  # feature cache; default ~/.cache/mrc-cli


@dataclass
class ModelConfig:
    name_or_path: str = "bert-base-uncased"
    tokenizer: str | None = None  # another tokenizer than the model's (Chinese ALBERT ships a BERT vocabulary)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None, sets: list[str] = ()) -> RunConfig:
    """Defaults <- YAML file <- `overrides` (named flags, None = not given) <- `sets` ("section.key=value")."""
    cfg = RunConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected sections such as 'data:' and 'train:' at the top level")
        for section, values in loaded.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: section {section!r} must hold key: value lines")
            for key, value in values.items():
                set_value(cfg, f"{section}.{key}", value, source=str(path))
    for dotted, value in (overrides or {}).items():
        if value is not None:
            set_value(cfg, dotted, value, source="command line")
    for item in sets:
        dotted, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set train.lr=1e-4")
        set_value(cfg, dotted.strip(), yaml.safe_load(text), source="--set")
    return cfg


def set_value(cfg: RunConfig, dotted: str, value: Any, source: str) -> None:
    section_name, _, key = dotted.partition(".")
    sections = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    section = sections.get(section_name)
    valid = [f"{s}.{f.name}" for s, obj in sections.items() for f in dataclasses.fields(obj)]
    fields = {f.name: f for f in dataclasses.fields(section)} if section is not None else {}
    if key not in fields:
        near = difflib.get_close_matches(dotted, valid, n=1)
        hint = f"; did you mean {near[0]}?" if near else f"; valid keys: {', '.join(valid)}"
        raise ConfigError(f"{source}: unknown config key {dotted!r}{hint}")
    hint = typing.get_type_hints(type(section))[key]
    setattr(section, key, _coerce(value, hint, f"{source}: {dotted}"))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a field type (str, int, float, bool, X | None); ints are accepted for floats."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    names = " or ".join("null" if k is type(None) else k.__name__ for k in options)
    raise ConfigError(f"{where}: expected {names}, got {value!r}")


def config_to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")


def check_data_config(data: DataConfig, num_special_tokens: int) -> None:
    """Settings that would fail deep inside the tokenizer, checked up front with a message that says what to do."""
    room = data.max_seq_length - data.max_query_length - num_special_tokens
    if data.max_query_length < 1 or room < 1:
        raise ConfigError(
            f"max_seq_length {data.max_seq_length} leaves no room for context after a question of up to "
            f"{data.max_query_length} tokens; raise data.max_seq_length or lower data.max_query_length"
        )
    if not 0 <= data.doc_stride < room:
        raise ConfigError(
            f"doc_stride {data.doc_stride} must be below the {room} tokens left for context "
            f"(max_seq_length {data.max_seq_length} - max_query_length {data.max_query_length} - "
            f"{num_special_tokens} special tokens); use e.g. --doc-stride {room // 2}"
        )
    if data.word_segmenter not in SEGMENTERS and ":" not in data.word_segmenter:
        raise ConfigError(
            f"data.word_segmenter {data.word_segmenter!r}: choose {', '.join(SEGMENTERS)} or module:function"
        )
