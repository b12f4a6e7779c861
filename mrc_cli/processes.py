"""Work one process does before the others under a launcher (torchrun, accelerate launch), such that a failure of
it stops every process with one message instead of leaving the others in a collective that breaks when it exits."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from mrc_cli.errors import MrcError

T = TypeVar("T")


class OtherProcessFailed(MrcError):
    """Another process failed the work this one was waiting for; its error says why (printed by rank 0 only,
    as every error a user can see: mrc_cli.cli._tell)."""


def first_then_others(state, work: Callable[[], T], doing: str, local: bool = False) -> T:
    """`work()` on the main process (of each machine, with `local`) first, then on the others, which find what it
    cached. accelerate's main_process_first() left the others at a barrier that a main process which raised never
    reached: they waited until its exit broke the connection, then each printed a gloo traceback. Here every process
    meets at one all-reduce of the main processes' failures instead; a main process raises its own error after it,
    the others an OtherProcessFailed, without running work they would fail at alike. `state`: an Accelerator or a
    PartialState; `doing`: what the work is, for the message ("reading the data")."""
    if state.num_processes == 1:
        return work()
    first = state.is_local_main_process if local else state.is_main_process
    failed, result = None, None
    if first:
        try:
            result = work()
        except Exception as err:  # ours or not: the others must not wait for it either
            failed = err
    # (processes,) 1 where a process failed; on NCCL's GPUs, gloo's CPU
    flags = torch.zeros(state.num_processes, device=_collective_device())
    flags[state.process_index] = failed is not None
    torch.distributed.all_reduce(flags)
    if failed is not None:
        raise failed
    if flags.any():
        ranks = ", ".join(str(rank) for rank in flags.nonzero().flatten().tolist())
        raise OtherProcessFailed(f"process {ranks} failed {doing}, so this one stopped too")
    return result if first else work()


def _collective_device() -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
