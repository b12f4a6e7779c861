"""The tokenizer of a model: loaded with a message that says what to do when it fails, and fingerprinted for caches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mrc_cli.errors import ConfigError, DataError


def check_not_missing_folder(name_or_path: str) -> None:
    """Refuse at once a model meant as a local folder that is not there (./m, /m, ~/m, or out/m where out/ exists
    here), which transformers would otherwise look up on the Hub, retrying for about a minute offline. A Hub id
    (org/name, no folder org/ here) goes on to the Hub."""
    try:
        path = Path(name_or_path).expanduser()
    except RuntimeError:  # ~user of no such user
        raise ConfigError(f"{name_or_path}: no such model folder (no such home directory)") from None
    if path.exists():
        return
    if name_or_path.startswith((".", "~")) or path.is_absolute() or (len(path.parts) > 1 and path.parent.is_dir()):
        raise ConfigError(f"{name_or_path}: no such model folder; pass a local model folder, or a Hub id (one named "
                          f"org/name is taken for a folder where a folder org/ is here)")


def check_model_folder(name_or_path: str, command: str = "train") -> None:
    """A model for `mrc {command}` to start from (--model): there (check_not_missing_folder), and not a training run
    or checkpoint of ours, which holds a span or masked-LM model under our names and reads as no encoder (a tokenizer
    of 5 tokens, random weights). The refusal says what does start `command` from it."""
    check_not_missing_folder(name_or_path)
    path = Path(name_or_path).expanduser()
    run_without_model = (path / "run_info.json").is_file() and not (path / "config.json").is_file()  # not pretrain's
    if not ((path / "trainer_state.json").is_file() or run_without_model):
        return
    from mrc_cli.checkpoint import pretraining_checkpoint_advice, run_dir_of
    from mrc_cli.config import run_command

    if run_command(run_dir_of(path)) == "pretrain":
        raise ConfigError(f"{name_or_path}: an mrc pretrain run or checkpoint, not an encoder folder to start from; "
                          + pretraining_checkpoint_advice(path))
    if command == "pretrain":  # a span model's weights do not map into a masked LM; its export is an encoder folder
        raise ConfigError(f"{name_or_path}: an mrc-cli training run or checkpoint, not an encoder folder to start "
                          f"from; `mrc export --format hf --out DIR {name_or_path}` makes a model folder of it that "
                          "`mrc pretrain --model DIR` pre-trains on from (with a fresh masked-LM head)")
    raise ConfigError(f"{name_or_path}: an mrc-cli training run or checkpoint, not an encoder folder to start "
                      f"from; `mrc train --init-from {name_or_path}` goes on from its weights (with --model "
                      f"{_base_model(path)}, the encoder it was trained from), and `mrc export --format hf` makes "
                      "a model folder of it")


def _base_model(run_or_checkpoint: Path) -> str:
    """The --model a run or checkpoint was trained from, as its config.yaml says; "its base encoder" if unreadable."""
    from mrc_cli.config import load_config

    try:
        return load_config(run_or_checkpoint / "config.yaml").model.name_or_path
    except (ConfigError, DataError):  # missing, unreadable or not ours
        return "its base encoder"


def load_tokenizer(name_or_path: str):
    """A fast tokenizer from a local folder or a Hub id, with a message that says what to do when it fails."""
    from transformers import AutoTokenizer

    check_model_folder(name_or_path)
    advice = "pass a folder with the model's tokenizer files (in training: --set model.tokenizer=<folder>)"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError) as err:  # not found, offline, or not a tokenizer folder
        local = Path(name_or_path).exists()
        raise ConfigError(
            f"cannot load a tokenizer from {name_or_path!r}: "
            + ("the folder has no tokenizer files" if local else "no such folder, and the Hub is not reachable or has no such id")
            + f" ({type(err).__name__}); {advice}"
        ) from None
    if not tokenizer.is_fast:
        raise ConfigError(
            f"{name_or_path}: mrc-cli needs a fast (Rust) tokenizer for character offsets and word ids; "
            "pass --set model.tokenizer=<a folder with tokenizer.json>"
        )
    folder = Path(name_or_path).expanduser()
    # the files it loads from (tokenizer.json for every fast one, which not all list); none for ByT5's bytes
    needs = {*tokenizer.vocab_files_names.values(), "tokenizer.json"} if tokenizer.vocab_files_names else set()
    if folder.is_dir() and needs and not any((folder / name).is_file() for name in needs):
        # transformers 5 makes a tokenizer of the special tokens alone from a config.json: every word unknown
        files = " or ".join(sorted(set(needs)))
        raise ConfigError(f"cannot load a tokenizer from {name_or_path!r}: the folder has no tokenizer files ({files}); "
                          f"{advice}")
    return tokenizer


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's class and backend, stable across calls (the backend JSON also records the
    truncation and padding of the last call, which are not part of its identity)."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    backend.pop("truncation", None)
    backend.pop("padding", None)
    text = type(tokenizer).__name__ + json.dumps(backend, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
