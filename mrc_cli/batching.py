"""Batch plans and batches: which features go together, and padded tensors of them built on the device.

Training batches are length-grouped: shuffle, sort by length within mega-batches, cut, shuffle. About half of what
random batches compute is padding (mean real length 175 of ~380 tokens on SQuAD); grouped batches keep the
randomness of the order while padding little. The unit of the plan is one optimizer step of `group` micro-batches
(group = processes x accumulation steps), cut from consecutive features of the sorted order, so the micro-batches
that DDP ranks run side by side have similar widths and no rank waits long for the widest. The plan is a pure
function of (seed, epoch, group): a resumed run regenerates it and skips what it has done, with no sampler state.
Ours rather than transformers' `get_length_grouped_indices`, which groups per process and so loses the grouping
across ranks (0.58 of computed tokens real on 8 processes, docs/benchmarks.md).

Token-budget batches (train.tokens_per_batch > 0): each micro-batch is one row of whole features back to back, at
most that many real tokens, its tail padded to the budget so that every step has the same shape. The plan is the
same pure function, cut into rows instead of fixed feature counts; a `Packing` tells the model where each feature
lies in the row (mrc_cli.attention keeps attention inside a feature). A row's token count is fixed, but the number of
its features and their width vary; `FeatureTensors.fix_shapes` fixes them too (feature slots, some left empty), for
one compiled graph of the step (train.cuda_graphs).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mrc_cli.errors import ConfigError
from mrc_cli.features import feature_lengths

MEGA_BATCH = 50  # optimizer steps sorted together: larger pads less but makes the order less random
LABELS = ("start_positions", "end_positions")


def epoch_plan(lengths: Sequence[int], batch_size: int, group: int, seed: int, epoch: int, group_by_length: bool,
               exclude: Collection[int] = (), tokens_per_batch: int = 0) -> list[list[list[int]]]:
    """The optimizer steps of one epoch, each a list of `group` micro-batches of feature indices.

    `exclude`: features already trained on in this epoch (a run resumed with another process count plans the rest
    of the epoch for its own group). A last step with fewer features than `group` is left out (counted by the
    caller); with a token budget, a last step of fewer rows than `group` is spread over `group` smaller rows.
    `tokens_per_batch` > 0: a micro-batch is the features of one packed row of at most that many tokens.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if exclude:
        done = set(exclude)
        order = [f for f in order if f not in done]
    # features per optimizer step (with a token budget: about, from the mean length)
    size = batch_size * group if not tokens_per_batch else max(1, round(
        group * tokens_per_batch * len(lengths) / max(1, sum(lengths))))
    if group_by_length:
        mega = MEGA_BATCH * size
        order = [f for i in range(0, len(order), mega)
                 for f in sorted(order[i:i + mega], key=lengths.__getitem__, reverse=True)]
    if tokens_per_batch:
        rows = pack_rows(order, lengths, tokens_per_batch)
        steps = [rows[i:i + group] for i in range(0, len(rows), group)]
        if steps and len(steps[-1]) < group:  # as many features as rows would leave out: up to group - 1 full rows
            steps[-1] = _spread(steps[-1], group)
    else:
        steps = [_split(order[i:i + size], group) for i in range(0, len(order), size)]
    if steps and (len(steps[-1]) < group or not all(steps[-1])):
        steps.pop()
    if group_by_length:
        steps = [steps[i] for i in torch.randperm(len(steps), generator=g).tolist()]
    return steps


def inference_batch_size(setting: int | str, device: torch.device) -> int:
    """train.eval_batch_size resolved for a device. auto: 64 features on CUDA (wide batches keep a GPU busy), 16 on a
    CPU, where a batch of 64 ran 1.35x slower than 8-16 (its activations outgrow the caches; the padding is not
    the cost: one feature at a time was slower still, docs/benchmarks.md)."""
    if setting == "auto":
        return 64 if device.type == "cuda" else 16
    return setting


def token_budget(setting: int | str, batch_size: int, lengths: Sequence[int], device: torch.device) -> int:
    """train.tokens_per_batch resolved for these features: 0 (feature batches) or a budget that holds the longest
    feature. auto: on CUDA batch_size x the mean length, rounded up to 64 (as many features per step as feature
    batches; a captured step needs one shape); on CPU 0, where packing is not faster (docs/benchmarks.md)."""
    longest = max(lengths, default=1)
    if setting == "auto":
        if device.type != "cuda":
            return 0
        return max(-(-int(batch_size * sum(lengths) / max(1, len(lengths))) // 64) * 64, longest)
    if 0 < setting < longest:
        raise ConfigError(f"train.tokens_per_batch {setting} is below the longest feature ({longest} tokens), and a "
                          f"feature is never split: use at least {longest}, e.g. {batch_size} x the mean length = "
                          f"{int(batch_size * sum(lengths) / max(1, len(lengths)))}, or 0 for feature batches")
    return setting


def pack_rows(order: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Features in `order` into rows of at most `budget` tokens, a row closed when the next feature does not fit
    (next fit: in a length-sorted order the rows hold features of similar length, and a row wastes less than one
    feature). Each feature must fit a row alone (checked with the config)."""
    rows, row, used = [], [], 0
    for f in order:
        if used + lengths[f] > budget and row:
            rows.append(row)
            row, used = [], 0
        row.append(f)
        used += lengths[f]
    if row:
        rows.append(row)
    return rows


def _spread(rows: list[list[int]], parts: int) -> list[list[int]]:
    """The features of fewer than `parts` rows in `parts` rows (each within the budget: a part of a row), the fullest
    row halved until there are enough; the rows as they were where they hold fewer features than `parts`."""
    rows = [list(row) for row in rows]
    while len(rows) < parts and any(len(row) > 1 for row in rows):
        fullest = max(range(len(rows)), key=lambda i: len(rows[i]))
        row = rows.pop(fullest)
        rows[fullest:fullest] = [row[:len(row) // 2], row[len(row) // 2:]]
    return rows


def _split(features: list[int], parts: int) -> list[list[int]]:
    """`parts` consecutive pieces as equal as possible (a full step: `parts` batches of batch_size)."""
    bounds = [i * len(features) // parts for i in range(parts + 1)]
    return [features[a:b] for a, b in zip(bounds, bounds[1:])]


def remaining_steps(lengths: Sequence[int], batch_size: int, group: int, seed: int, epoch: int, group_by_length: bool,
                    segments: Sequence[Sequence[int]] = (), tokens_per_batch: int = 0) -> list[list[list[int]]]:
    """The steps left in an epoch for `group`, after `segments`: the (group, steps) run so far in it, in order, or
    (group, steps, batch_size) where a segment's micro-batches held another batch size.

    With the features per step unchanged the plan goes on where it stopped (an exact continuation), each step cut
    into `group` micro-batches where the group changed with the batch size (a resume on another process count that
    kept the effective batch by train.batch_size); after another change of group the features not yet trained on
    in this epoch are planned again for the new group, so none is repeated or skipped.
    """
    done: set[int] = set()
    for i, (earlier, steps, *then) in enumerate(segments):
        plan = epoch_plan(lengths, then[0] if then else batch_size, earlier, seed, epoch, group_by_length, done,
                          tokens_per_batch)
        later = segments[i + 1:]
        # packed rows never change their batch size (a row is a micro-batch): for them this compares groups
        if all(_step_size(s, batch_size) == _step_size(segments[i], batch_size) for s in [*later, [group, 0]]):
            rest = plan[steps:]
            for again, more, *_ in later:  # the steps the later segments took of it, as they cut them
                rest = _regrouped(rest, again)[more:]
            return _regrouped(rest, group)
        done.update(f for step in plan[:steps] for batch in step for f in batch)
    return epoch_plan(lengths, batch_size, group, seed, epoch, group_by_length, done, tokens_per_batch)


def _step_size(segment: Sequence[int], batch_size: int) -> int:
    """A segment's features per step (micro-batches x their batch size: its own, or `batch_size`)."""
    return segment[0] * (segment[2] if len(segment) > 2 else batch_size)


def _regrouped(steps: list[list[list[int]]], group: int) -> list[list[list[int]]]:
    """Planned steps, each cut into `group` micro-batches; a step of fewer features than `group` (an epoch's last,
    which the old group could still cut) is left out, as epoch_plan leaves out such a last step."""
    if all(len(step) == group for step in steps):
        return steps
    whole = [[f for batch in step for f in batch] for step in steps]
    return [_split(features, group) for features in whole if len(features) >= group]


def inference_batches(lengths: Sequence[int], batch_size: int, tokens_per_batch: int = 0) -> list[list[int]]:
    """Longest first: the least padding, and a batch that does not fit in memory fails at once, not at the end.
    `tokens_per_batch` > 0: the features of packed rows of at most that many tokens."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)
    if tokens_per_batch:
        return pack_rows(order, lengths, tokens_per_batch)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class Packing:
    """Where the features of packed rows lie: what the attention and the model need besides the token ids.

    The rows' tokens are numbered 0..rows*budget-1 as one flat sequence. Every token is in one segment of
    `cu_seqlens` (the features, then each row's padded tail cut into pieces no longer than a feature may be, so that
    `max_seqlen` stays the feature width), so attention within segments covers all of them and a feature attends
    only to itself. With fixed shapes (`FeatureTensors.fix_shapes`) empty feature slots and unneeded tail pieces are
    segments of length 0, which keeps the length of `cu_seqlens` fixed.
    """

    unpack: torch.Tensor  # (features, width): flat token of each feature's position (in range where padding)
    present: torch.Tensor  # (features, width) bool: the position holds a token of the feature
    repack: torch.Tensor  # (rows * budget,): each token's place in the (features * width) layout (tails: 0)
    cu_seqlens: torch.Tensor  # (segments + 1,) int32: cumulative segment lengths over the flat tokens
    max_seqlen: int  # the longest segment at most (known on the host: no device read)
    tokens: int  # rows * budget

    @property
    def filled(self) -> torch.Tensor:
        """(features,) bool: the slot holds a feature (with fixed shapes some are empty; a feature has >= 1 token)."""
        return self.present[:, 0]

    def doubled(self) -> Packing:
        """The packing of the rows twice over (R-Drop's two passes in one forward)."""
        cells = self.present.numel()
        return Packing(torch.cat([self.unpack, self.unpack + self.tokens]), torch.cat([self.present, self.present]),
                       torch.cat([self.repack, self.repack + cells]),
                       torch.cat([self.cu_seqlens, self.cu_seqlens[1:] + self.tokens]), self.max_seqlen,
                       2 * self.tokens)


def doubled(batch: dict) -> dict:
    """A batch twice over along the batch axis (features, or packed rows), for one forward of two dropout masks."""
    return {key: value.doubled() if isinstance(value, Packing) else torch.cat([value, value])
            if torch.is_tensor(value) else value for key, value in batch.items()}


class FeatureTensors:
    """Features as flat integer tensors on the device, cut into padded batches there.

    Built once per split: all token ids back to back (int32; token types int8), each feature's start and length,
    its labels. A batch is a handful of gathers on the device from an index tensor: no per-row Python and no
    host-to-device copy in the step (per-row collation cost ~0.5 ms per feature on the host, about what a GPU
    needs for a bert-base forward and backward of that feature). Memory: ~9 bytes per real token (SQuAD train:
    ~130 MB).
    """

    def __init__(self, features, device: torch.device, pad_token_id: int, tokens_per_batch: int = 0,
                 full_rows: bool = True):
        import pyarrow.compute as pc

        table = features.with_format("arrow")
        self.device = device
        self.tokens_per_batch = tokens_per_batch  # > 0: a batch is one packed row of at most this many tokens
        # training: every row padded to the budget (one shape for every step); inference: a row ends with its
        # features, so that a call of one short question does not pay for the whole budget
        self.full_rows = full_rows
        # fixed shapes of packed rows (fix_shapes); 0: as the row's features need
        self.slots = self.width = self.num_units = 0
        self.always_masked = False  # a compiled step over feature batches: one graph whether a batch has padding or not
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

    def fix_shapes(self) -> None:
        """Give every packed row the same tensor shapes, so that a compiled step is one graph (train.cuda_graphs): as
        many feature slots as the shortest features that fit the budget (no row of any plan can hold more), each as
        wide as the longest feature, and at word level as many units as the most of any feature. Empty slots are
        features of no tokens, labelled -100; the model leaves them out of every per-feature mean
        (`mrc_cli.model.feature_mean`). Costs the head and the unpacking `slots x width` cells instead of the row's
        features (SQuAD, 384 tokens, rows of 5,632: 102 slots, ~7x the row's tokens; docs/benchmarks.md)."""
        shortest = np.cumsum(np.sort(self.lengths))
        self.slots = max(1, int(np.searchsorted(shortest, self.tokens_per_batch, side="right")))
        self.width = -(-int(self.lengths.max()) // self.multiple_of) * self.multiple_of
        if self.units is not None:
            self.num_units = int(self.units.max())

    def fill_slots(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """A micro-batch's per-feature `values` (features, ...), followed by `fill` for each empty feature slot of its
        row where shapes are fixed (`fix_shapes`); as they are otherwise."""
        if not self.slots:
            return values
        if len(values) > self.slots:
            raise ValueError(f"{len(values)} features planned into a row of {self.slots} slots")  # a planning bug
        return torch.cat([values, values.new_full((self.slots - len(values), *values.shape[1:]), fill)])

    def batch(self, index: Sequence[int], rows: torch.Tensor | None = None) -> dict:
        """Model inputs (and labels) of the features `index`, padded or, with a token budget, packed into one row;
        `rows`: the same indices already on the device."""
        rows = torch.as_tensor(index, device=self.device) if rows is None else rows
        length, start = (self.fill_slots(values[rows], 0) for values in (self._length, self._start))  # (features,)
        batch = self._padded(index, rows, length, start)
        return self._packed(batch, index, length) if self.tokens_per_batch else batch

    def _padded(self, index: Sequence[int], rows: torch.Tensor, length: torch.Tensor, start: torch.Tensor) -> dict:
        """(features, width) inputs, padded to the longest (or to the fixed shapes), from the features' `length`
        and `start` in the flat tokens.

        Width and padding are read from the host copy of the lengths. A batch without padding has no attention
        mask: given one, transformers checks `mask.all()` on every forward to decide whether SDPA may skip it, and
        that check makes the host wait for the device.
        """
        lengths = self.lengths[index]
        width = self.width or -(-int(lengths.max()) // self.multiple_of) * self.multiple_of
        positions = torch.arange(width, device=self.device)  # (width,)
        present = positions < length[:, None]  # (batch, width)
        at = torch.where(present, start[:, None] + positions, 0)  # (batch, width) into the flat tokens
        batch = {key: torch.where(present, flat[at], pad).long() for key, (flat, pad) in self._tokens.items()}
        if lengths.min() < width or self.always_masked:
            batch["attention_mask"] = present.long()
        if self.units is not None:
            batch["num_units"] = self.num_units or int(self.units[index].max())
        batch.update({key: self.fill_slots(values[rows], -100) for key, values in self._labels.items()})
        return batch

    def _packed(self, batch: dict, index: Sequence[int], length: torch.Tensor) -> dict:
        """The padded batch's token ids and types put back to back into one row of `tokens_per_batch`, with the
        position ids restarting at each feature and the `Packing` of the row; word ids and labels stay per feature
        (the model uses them after it has unpacked the encoder's states). Built on the device from the rows' lengths
        there; only the total and the widest length are read on the host."""
        total, width = int(self.lengths[index].sum()), batch["input_ids"].shape[1]
        if total > self.tokens_per_batch:  # a planning bug, never user input
            raise ValueError(f"{total} tokens planned into a row of {self.tokens_per_batch}")
        budget = self.tokens_per_batch if self.full_rows else -(-total // self.multiple_of) * self.multiple_of
        end = torch.cumsum(length, 0)  # (features,)
        start = end - length
        t = torch.arange(budget, device=self.device)
        feature = torch.searchsorted(end, t, right=True)  # (budget,) the feature of each token; past them in the tail
        inside = feature < len(index)
        feature = feature.clamp(max=len(index) - 1)
        position = t - start[feature]
        repack = torch.where(inside, feature * width + position, 0)
        for key, pad in (("input_ids", self._tokens["input_ids"][1]), ("token_type_ids", 0)):
            if key in batch:
                batch[key] = torch.where(inside, batch[key].reshape(-1)[repack], pad)[None]  # (1, budget)
        batch["position_ids"] = torch.where(inside, position, 0)[None]
        columns = torch.arange(width, device=self.device)
        present = columns < length[:, None]  # (features, width)
        batch.pop("attention_mask", None)
        # the row's tail in pieces of at most `width` tokens; fixed shapes: as many pieces as the emptiest row needs,
        # the unneeded ones of length 0 at the row's end
        pieces = -(-budget // width) if self.slots else -(-(budget - total) // width)
        tail = (total + width * torch.arange(1, pieces + 1, device=self.device)).clamp(max=budget)
        cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long, device=self.device), end, tail]).int()
        batch["packing"] = Packing(torch.where(present, start[:, None] + columns, 0), present, repack, cu_seqlens,
                                   width, budget)
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
