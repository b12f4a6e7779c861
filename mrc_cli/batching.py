"""Batch plans and batches: which features go together, and padded tensors of them built on the device.

Training batches are length-grouped: shuffle, sort by length within mega-batches, cut, shuffle. About half of what
random batches compute is padding (mean real length 175 of ~380 tokens on SQuAD); grouped batches keep the
randomness of the order while padding little. The unit of the plan is one optimizer step of `group` micro-batches
(group = processes x accumulation steps), cut from consecutive features of the sorted order, so the micro-batches
that DDP ranks run side by side have similar widths and no rank waits long for the widest. The plan is a pure
function of (seed, epoch, group): a resumed run regenerates it and skips what it has done, with no sampler state.
Ours rather than transformers' `get_length_grouped_indices`, which groups per process and so loses the grouping
across ranks (0.58 of computed tokens real on 8 processes, docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch

from mrc_cli.features import feature_lengths

MEGA_BATCH = 50  # optimizer steps sorted together: larger pads less but makes the order less random
LABELS = ("start_positions", "end_positions")


def epoch_plan(lengths: Sequence[int], batch_size: int, group: int, seed: int, epoch: int, group_by_length: bool,
               exclude: Collection[int] = ()) -> list[list[list[int]]]:
    """The optimizer steps of one epoch, each a list of `group` micro-batches of feature indices.

    `exclude`: features already trained on in this epoch (a run resumed with another process count plans the rest
    of the epoch for its own group). A last step with fewer features than `group` is left out (counted by the caller).
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if exclude:
        done = set(exclude)
        order = [f for f in order if f not in done]
    size = batch_size * group  # features per optimizer step
    if group_by_length:
        mega = MEGA_BATCH * size
        order = [f for i in range(0, len(order), mega)
                 for f in sorted(order[i:i + mega], key=lengths.__getitem__, reverse=True)]
    steps = [_split(order[i:i + size], group) for i in range(0, len(order), size)]
    if steps and not all(steps[-1]):
        steps.pop()
    if group_by_length:
        steps = [steps[i] for i in torch.randperm(len(steps), generator=g).tolist()]
    return steps


def _split(features: list[int], parts: int) -> list[list[int]]:
    """`parts` consecutive pieces as equal as possible (a full step: `parts` batches of batch_size)."""
    bounds = [i * len(features) // parts for i in range(parts + 1)]
    return [features[a:b] for a, b in zip(bounds, bounds[1:])]


def remaining_steps(lengths: Sequence[int], batch_size: int, group: int, seed: int, epoch: int, group_by_length: bool,
                    segments: Sequence[Sequence[int]] = ()) -> list[list[list[int]]]:
    """The steps left in an epoch for `group`, after `segments`: the (group, steps) run so far in it, in order.

    With the group unchanged the plan goes on where it stopped (an exact continuation); after a change of group
    (another process count) the features not yet trained on in this epoch are planned again for the new group, so
    none is repeated or skipped.
    """
    done: set[int] = set()
    for i, (earlier, steps) in enumerate(segments):
        plan = epoch_plan(lengths, batch_size, earlier, seed, epoch, group_by_length, exclude=done)
        if i == len(segments) - 1 and earlier == group:
            return plan[steps:]
        done.update(f for step in plan[:steps] for batch in step for f in batch)
    return epoch_plan(lengths, batch_size, group, seed, epoch, group_by_length, exclude=done)


def inference_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Longest first: the least padding, and a batch that does not fit in memory fails at once, not at the end."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


class FeatureTensors:
    """Features as flat integer tensors on the device, cut into padded batches there.

    Built once per split: all token ids back to back (int32; token types int8), each feature's start and length,
    its labels. A batch is a handful of gathers on the device from an index tensor: no per-row Python and no
    host-to-device copy in the step (per-row collation cost ~0.5 ms per feature on the host, about what a GPU
    needs for a bert-base forward and backward of that feature). Memory: ~9 bytes per real token (SQuAD train:
    ~130 MB).
    """

    def __init__(self, features, device: torch.device, pad_token_id: int):
        import pyarrow.compute as pc

        table = features.with_format("arrow")
        self.device = device
        self.multiple_of = pad_multiple(device)
        self.lengths = np.asarray(feature_lengths(features))  # host copy: widths need no device read
        lengths = torch.from_numpy(self.lengths.astype(np.int64))
        self._length = lengths.to(device)
        self._start = (torch.cumsum(lengths, 0) - lengths).to(device)
        self._tokens = {}  # column -> (flat values on the device, padding value)
        self.units = None  # word level: CLS + the words of each feature, on the host
        for key, dtype, pad in (("input_ids", np.int32, pad_token_id), ("token_type_ids", np.int8, 0),
                                ("word_ids", np.int32, -1)):
            if key in table.column_names:
                flat = pc.list_flatten(table[key]).to_numpy().astype(dtype)  # a compact, writable copy
                self._tokens[key] = (torch.from_numpy(flat).to(device), pad)
                if key == "word_ids":
                    self.units = _units(flat, self.lengths)
        self._labels = {key: torch.tensor(table[key].to_numpy(), dtype=torch.long, device=device)
                        for key in LABELS if key in table.column_names}

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, index: Sequence[int], rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Padded model inputs (and labels) of the features `index`; `rows`: the same indices already on the device.

        Width and padding are read from the host copy of the lengths. A batch without padding has no attention
        mask: given one, transformers checks `mask.all()` on every forward to decide whether SDPA may skip it, and
        that check makes the host wait for the device.
        """
        lengths = self.lengths[index]
        width = -(-int(lengths.max()) // self.multiple_of) * self.multiple_of
        rows = torch.as_tensor(index, device=self.device) if rows is None else rows
        positions = torch.arange(width, device=self.device)  # (width,)
        present = positions < self._length[rows, None]  # (batch, width)
        at = torch.where(present, self._start[rows, None] + positions, 0)  # (batch, width) into the flat tokens
        batch = {key: torch.where(present, flat[at], pad).long() for key, (flat, pad) in self._tokens.items()}
        if lengths.min() < width:
            batch["attention_mask"] = present.long()
        if self.units is not None:
            batch["num_units"] = int(self.units[index].max())
        batch.update({key: values[rows] for key, values in self._labels.items()})
        return batch


def _units(word_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per feature, CLS + the span of its word ids (mrc_cli.words.unit_index numbers them), from the flat word ids."""
    starts = np.cumsum(lengths) - lengths
    last = np.maximum.reduceat(word_ids, starts)
    first = np.minimum.reduceat(np.where(word_ids >= 0, word_ids, np.iinfo(word_ids.dtype).max), starts)
    return np.where(last >= 0, last - first + 2, 1)


def pad_multiple(device) -> int:
    """8 feeds GPU tensor cores; on CPU rounding up is only extra padding (1 measured ~4 % faster, docs/benchmarks.md)."""
    return 8 if device.type == "cuda" else 1
