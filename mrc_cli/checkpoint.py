"""Checkpoints: the model's state_dict in safetensors plus everything needed to resume, written atomically.

A checkpoint folder (`RUN/checkpoints/step-000200/`) holds `model.safetensors`, `training_state.pt` (optimizer,
scheduler, loss scaler and every process's RNG states; tensors and plain values only, read back with `weights_only=True`),
`trainer_state.json` (the position in training, written last), `config.yaml` (the resolved run config), the
encoder's `config.json` and the tokenizer, so `mrc eval` and `mrc predict` need nothing else. A folder is written
under a temporary name and renamed when complete, so a crash mid-save leaves the previous checkpoint intact. When a
run finishes, only its last checkpoint keeps `training_state.pt` (`drop_training_states`), unless
`train.keep_training_state: all`.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from mrc_cli.config import RunConfig, load_config, run_command, save_config
from mrc_cli.errors import CheckpointError, ConfigError, DataError
from mrc_cli.files import write_text_atomically
from mrc_cli.model import load_state_dict_file

CHECKPOINTS = "checkpoints"
BEST_POINTER = "best_checkpoint.json"
TRAINING_STATE = "training_state.pt"  # optimizer, scheduler, scaler, RNG: what resuming needs besides the weights
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state(device: torch.device) -> dict:
    """This process's RNG states: Python's, the CPU generator and its own accelerator's (not every visible GPU's:
    a run resumed on fewer GPUs must still be able to restore them)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def save_checkpoint(run_dir: Path, model, tokenizer, cfg: RunConfig, trainer_state: dict, training_state: dict,
                    keep_last: int) -> Path:
    """Write step-N atomically, then prune to the newest `keep_last` plus the best (trainer_state['best_step'])."""
    root = Path(run_dir) / CHECKPOINTS
    final = checkpoint_dir(run_dir, trainer_state["step"])
    tmp = root / f".tmp-{final.name}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        weights = _untied(model.state_dict())  # outside the writes: an error here is no full disk
        try:
            save_file(weights, str(tmp / "model.safetensors"))
            torch.save(training_state, tmp / TRAINING_STATE)
        # how they report a failed write (a full disk, a file size limit): torch "unexpected pos ...", safetensors
        # "Error while serializing: I/O error: ..."
        except (RuntimeError, SafetensorError) as err:
            raise OSError(f"writing the weights or the training state failed ({err})") from err
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp / "tokenizer")
        save_config(cfg, tmp / "config.yaml")
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        if final.exists():  # the same step saved again after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as err:  # a full disk, a quota, a read-only folder
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        reason = getattr(err, "strerror", None) or err
        needed = _state_bytes(model.state_dict()) + _state_bytes(training_state)
        raise CheckpointError(
            f"could not write checkpoint {final}: {reason}{_space_note(err, root, needed)}; "
            + (f"the previous checkpoint {previous} is intact: free some space and continue with --resume auto"
               if previous else "no earlier checkpoint exists: free some space and run it again")
        ) from None
    except BaseException:  # a second Ctrl-C: no half-written folder left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep_last, trainer_state.get("best_step"))
    return final


def _space_note(err: OSError, folder: Path, needed: int) -> str:
    """A note "(No space left on device? ...)" where the disk holding `folder` has less room than the `needed` bytes
    and `err` does not say so itself: torch.save reports a full disk as "unexpected pos ...". Measured after the
    partial folder is removed: the room the checkpoint had."""
    if err.errno == errno.ENOSPC:
        return ""
    folder = next(path for path in (folder.resolve(), *folder.resolve().parents) if path.exists())
    free = shutil.disk_usage(folder).free
    if free >= needed:
        return ""
    mount = next(path for path in (folder, *folder.parents) if os.path.ismount(path))
    return f" (No space left on device? {free / 2**20:.0f} MB free on {mount}, about {needed / 2**20:.0f} MB needed)"


def _state_bytes(state) -> int:
    """Bytes of the tensors in a state_dict or a nested training state: about what saving it writes."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(map(_state_bytes, state.values()))
    if isinstance(state, (list, tuple)):
        return sum(map(_state_bytes, state))
    return 0


def _untied(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor once, under its first name: tied weights (an MLM decoder and the input embeddings) are one tensor
    under two names, which safetensors refuses; load_weights fills the other name."""
    seen, unique = set(), {}
    for key, value in state.items():
        where = (value.data_ptr(), value.shape) if value.numel() else None  # empty tensors share address 0
        if where is None or where not in seen:
            seen.add(where)
            unique[key] = value.detach().contiguous().cpu()
    return unique


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """The one place a checkpoint folder is named: RUN/checkpoints/step-000200."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a checkpoint folder (RUN/checkpoints/step-N); any other path as it is."""
    path = Path(path)
    return path.parent.parent if path.parent.name == CHECKPOINTS and _STEP_DIR.match(path.name) else path


def _prune(root: Path, keep_last: int, best_step: int | None) -> None:
    steps = sorted(step for step, _ in complete_checkpoints(root))
    for step in steps[:-keep_last]:
        if step != best_step:
            shutil.rmtree(checkpoint_dir(root.parent, step), ignore_errors=True)


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint in RUN/checkpoints (`root`), by step."""
    found = []
    for path in root.glob("step-*") if root.is_dir() else []:
        match = _STEP_DIR.match(path.name)
        if match and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = complete_checkpoints(Path(run_dir) / CHECKPOINTS)
    return found[-1][1] if found else None


def write_best_pointer(run_dir: Path, checkpoint: Path, metrics: dict) -> None:
    write_text_atomically(Path(run_dir) / BEST_POINTER,
                          json.dumps({"checkpoint": str(checkpoint.relative_to(run_dir)), "metrics": metrics}, indent=2))


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as given, or a run directory's best (else newest) checkpoint."""
    path = Path(path)
    if path.is_file():
        # the folder that holds it where that is a model's, a run's or an ensemble's, not a data file's
        ours = ("model.safetensors", "onnx.json", "run_info.json", "ensemble.yaml")
        holder = (f"the folder that holds it ({path.parent}), " if any((path.parent / name).is_file() for name in ours)
                  else "")
        raise CheckpointError(f"{path}: a file; pass {holder}a checkpoint folder, a run directory or an `mrc export` "
                              "folder")
    if (path / "model.safetensors").is_file():
        return path
    pointer = path / BEST_POINTER
    if pointer.is_file():
        try:
            best = path / json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
        except (ValueError, KeyError, TypeError):  # a damaged or hand-edited pointer: the newest checkpoint instead
            best = path
        if best != path and (best / "model.safetensors").is_file():
            return best
    newest = latest_checkpoint(path)
    if newest is not None:
        return newest
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint folder or run directory")
    inside = complete_checkpoints(path)
    if inside:  # RUN/checkpoints itself
        raise CheckpointError(f"{path}: a folder of checkpoints; pass one of them (the newest: {inside[-1][1]}) or the "
                              f"run directory ({path.parent}: its best checkpoint)")
    raise CheckpointError(
        f"{path}: no model.safetensors here and no checkpoints/step-* below; pass a checkpoint folder "
        "(RUN/checkpoints/step-N), a run directory or an `mrc export` folder"
    )


def weights_fingerprint(folder: Path) -> dict:
    """Size and modification time of a folder's model.safetensors: weights rewritten in place change both (what an
    ONNX export made from them records, mrc_cli.backends)."""
    stat = (folder / "model.safetensors").stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def read_checkpoint_config(checkpoint: Path) -> RunConfig:
    path = checkpoint / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{checkpoint}: no config.yaml; is this an mrc-cli checkpoint?")
    return load_config(path)


def pretraining_checkpoint_advice(checkpoint: Path) -> str:
    """What starts new work from an `mrc pretrain` checkpoint, whose weights are a masked-LM's (`lm.bert.*`): no
    command takes it as --model and `mrc export` has no span head to export, but --init-from starts a pre-training run
    (encoder and MLM head) or a fine-tuning run (the encoder) from it, and its run folder becomes a model folder
    when the run finishes."""
    run = run_dir_of(checkpoint)
    if (run / "config.json").is_file():
        folder = (f"its run folder {run} is a model folder of the run's last weights: `mrc pretrain --model {run}` "
                  f"pre-trains on from them, `mrc train --model {run}` fine-tunes them")
    else:
        folder = (f"its run folder {run} becomes a model folder of the run's last weights when the run finishes "
                  f"(`mrc pretrain --resume auto --out {run}`, on the files it began with)")
    return (f"{folder}; {pretraining_route(checkpoint)} pre-trains on from this checkpoint (other files too), "
            f"`mrc train --model {_base_model(checkpoint)} --init-from {checkpoint}` fine-tunes its encoder")


def pretraining_route(checkpoint: Path) -> str:
    """The command that starts a new pre-training run from an `mrc pretrain` checkpoint, with its encoder and MLM
    head, on any files (a resume takes only the files it began with)."""
    return f"`mrc pretrain --model {_base_model(checkpoint)} --init-from {checkpoint} --out NEW_DIR --data/--text FILES`"


def new_run_advice(checkpoint: Path) -> str:
    """How a new run starts from a checkpoint's weights: --init-from, in the whole command for a pre-training
    checkpoint (mrc pretrain needs its files and another --out, and takes --model as the encoder to load it into)."""
    if run_command(run_dir_of(checkpoint.resolve())) == "pretrain":
        return pretraining_route(checkpoint)
    return f"--init-from {checkpoint}"


def _base_model(checkpoint: Path) -> str:
    """The --model a checkpoint's run started from, as its config.yaml says."""
    try:
        return read_checkpoint_config(checkpoint).model.name_or_path
    except (CheckpointError, ConfigError, DataError):  # missing or unreadable: the advice holds all the same
        return "<the encoder it was pre-trained from>"


def read_trainer_state(checkpoint: Path) -> dict:
    """trainer_state.json of a checkpoint to resume from: refused where its training_state.pt was dropped."""
    if not (checkpoint / TRAINING_STATE).is_file():
        raise CheckpointError(f"{checkpoint}: weights only, no {TRAINING_STATE} (dropped when its run finished, as the "
                              f"run's last checkpoint keeps it, or not copied): resume from a checkpoint that has it, "
                              f"or start a new run from these weights with {new_run_advice(checkpoint)}")
    return json.loads((checkpoint / "trainer_state.json").read_text())


def read_training_state(checkpoint: Path) -> dict:
    """training_state.pt (optimizer, scheduler, scaler, RNG), loaded without unpickling code."""
    return torch.load(checkpoint / TRAINING_STATE, map_location="cpu", weights_only=True)


def drop_training_states(run_dir: Path, keep: Path) -> None:
    """Delete the optimizer state of a finished run's checkpoints but `keep` (its last, which a longer run resumes
    from): the best and the other kept ones serve eval and export with their weights, and Adam's two moments are
    twice the weights (bert-base: 0.9 of 1.3 GB a checkpoint)."""
    for _, path in complete_checkpoints(Path(run_dir) / CHECKPOINTS):
        if path != keep:
            (path / TRAINING_STATE).unlink(missing_ok=True)


def read_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_state_dict_file(checkpoint / "model.safetensors")
