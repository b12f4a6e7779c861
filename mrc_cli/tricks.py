"""Training tricks, each a switch in the config and off by default: layer-wise lr decay (train.llrd), adversarial
training on the word embeddings (train.adversarial: fgm | pgd), shadow weights (train.ema_decay), R-Drop
(train.rdrop_alpha) and a head warm-up (train.head_warmup). Multi-sample dropout belongs to the head (model.py).
docs/benchmarks.md has what each is worth.

Each is called from one place in training.py: `layer_lr_scales` by the optimizer, `rdrop_loss` and `Adversary` by
`_train_step`, `EMA` after the optimizer step, at evaluation and at saving, `HeadWarmup` after each step. Their
state is in the checkpoint (the head warm-up has none: where it stands is a function of the step).
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from mrc_cli.batching import doubled
from mrc_cli.errors import ConfigError
from mrc_cli.model import feature_mean

# BERT, RoBERTa, ELECTRA: encoder.layer.N; ALBERT: encoder.albert_layer_groups.N (N < num_hidden_groups, usually 1)
_LAYER = re.compile(r"\.(?:layer|layers|albert_layer_groups)\.(\d+)\.")
# ALBERT's factorised embedding and its projection; ELECTRA's projection (where its embeddings are narrower)
_EMBEDDING = ("embeddings.", "embedding_hidden_mapping_in.", "embeddings_project.")
_SHARED_BY_LAYERS = ("relative_attention_bias.",)  # MPNet's: one table every layer reads, with the lowest layer


def layer_lr_scales(model: nn.Module, decay: float) -> list[tuple[float, list[nn.Parameter]]]:
    """(lr factor, parameters) per depth: the head and anything above the layers 1, layer k of L decay^(L-k),
    the embeddings decay^(L+1). A "layer" is a block of its own weights: ALBERT's one shared layer group serves
    every depth, so it is one layer (factor decay), with its factorised embeddings below it (decay^2).
    decay 1: one group of everything (the plain optimizer)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay == 1:
        return [(1.0, [p for _, p in params])]
    depths = {n: _depth(n) for n, _ in params}
    layers = {d for d in depths.values() if d is not None and d > 0}
    if not layers:
        raise ConfigError(f"train.llrd: no numbered layers found in {type(model).__name__}'s parameters; set it to 1")
    top = max(layers) + 1
    groups: dict[int, list[nn.Parameter]] = {}
    for name, p in params:
        groups.setdefault(top if depths[name] is None else depths[name], []).append(p)
    return [(decay ** (top - depth), groups[depth]) for depth in sorted(groups, reverse=True)]


def _depth(name: str) -> int | None:
    """0 for embeddings, k + 1 for layer k (a table shared by the layers: 1), None for the rest (the head, final
    norms)."""
    found = _LAYER.search(name)
    if found:
        return int(found.group(1)) + 1
    if any(part in name for part in _EMBEDDING):
        return 0
    if any(part in name for part in _SHARED_BY_LAYERS):
        return 1
    return None


def rdrop_loss(model: nn.Module, batch: dict, alpha: float) -> torch.Tensor:
    """R-Drop (Liang et al., 2021): the batch twice in one forward pass (two dropout masks), the mean of the two span
    losses plus alpha/2 times the symmetric KL between the two start (and end) distributions, per feature: the
    paper's NLL_1 + NLL_2 + alpha * KL_sym, halved to stay on the scale of the plain loss."""
    out = model(**doubled(batch))
    n = out.start_logits.shape[0] // 2
    kl = sum(_symmetric_kl(logits[:n], logits[n:]) for logits in (out.start_logits, out.end_logits)) / 2  # (n,)
    filled = None if out.filled is None else out.filled[:n]  # both halves have the same empty slots
    return out.loss + alpha / 2 * feature_mean(kl, filled)


def _symmetric_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(KL(a||b) + KL(b||a)) / 2 of softmaxes over the last axis, summed over positions: (features,).
    Masked positions hold finfo.min in both: probability 0, a term of 0."""
    log_a, log_b = F.log_softmax(a, -1), F.log_softmax(b, -1)
    both = F.kl_div(log_a, log_b, log_target=True, reduction="none") + F.kl_div(log_b, log_a, log_target=True, reduction="none")
    return both.sum(-1) / 2


class Adversary:
    """Adversarial training on the word embeddings of each batch (Miyato et al., 2017): after the clean backward,
    the embedding output of every feature moves by epsilon along its loss gradient (FGM, L2-normalised per
    feature), or climbs in `steps` steps of `alpha` inside that epsilon ball (PGD, Madry et al.); the loss there is
    backpropagated on top of the clean gradients. It perturbs the embedding output, not the embedding matrix as
    some competition code does: no weights to back up and restore, and each feature gets its own direction."""

    def __init__(self, model: nn.Module, kind: str, epsilon: float, alpha: float, steps: int):
        self.kind, self.epsilon, self.alpha, self.steps = kind, epsilon, alpha, steps
        self._record: torch.Tensor | None = None  # the clean pass's embedding output (its .grad is the direction)
        self._delta: torch.Tensor | None = None  # added to the embedding output while set
        self._packing = None  # the Packing of the batch in hand, for packed rows
        self._recording = False
        model.encoder.get_input_embeddings().register_forward_hook(self._hook)

    @classmethod
    def for_config(cls, model: nn.Module, train) -> Adversary | None:
        """The adversary train.adversarial asks for (a TrainConfig), or None."""
        if train.adversarial == "none":
            return None
        return cls(model, train.adversarial, train.adv_epsilon, train.adv_alpha, train.adv_steps)

    def _hook(self, module, inputs, output):
        if self._recording:
            output.retain_grad()
            self._record = output
        return output if self._delta is None else output + self._delta

    def backward(self, loss_fn: Callable[[], torch.Tensor], backward: Callable[[torch.Tensor], None],
                 no_sync: Callable[[], contextlib.AbstractContextManager], sync, packing=None) -> torch.Tensor:
        """Clean forward and backward (gradients not yet synced across processes), the attack, the adversarial
        forward and backward under `sync` (the caller's: synced on the last micro-batch). Returns the clean loss.
        `packing` (mrc_cli.batching.Packing): the batch is packed rows, whose features are told apart by it."""
        self._packing = packing
        self._recording = True
        try:
            with no_sync():
                loss = loss_fn()
                backward(loss)
        finally:
            self._recording = False
        delta = self._step(torch.zeros_like(self._record), self._record.grad)
        self._record = None
        for _ in range(self.steps - 1 if self.kind == "pgd" else 0):
            delta.requires_grad_(True)
            self._delta = delta
            with no_sync():  # the climb needs only the gradient of the perturbation, not of the weights
                grad, = torch.autograd.grad(loss_fn(), delta)
            delta = self._step(delta.detach(), grad)
        self._delta = delta
        try:
            with sync:
                backward(loss_fn())
        finally:
            self._delta = None
        return loss

    def _step(self, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """FGM: epsilon along the gradient. PGD: alpha along it, projected back onto the epsilon ball."""
        direction = grad / self._feature_norm(grad).clamp(min=1e-12)
        if self.kind == "fgm":
            return self.epsilon * direction
        delta = delta + self.alpha * direction
        return delta * (self.epsilon / self._feature_norm(delta).clamp(min=self.epsilon))

    def _feature_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The L2 norm of each feature's part of `x` (batch, seq, hidden), broadcastable to it: per row of a padded
        batch; in packed rows per feature, summed over its tokens (a row's tail has no gradient: it adds 0)."""
        packing = self._packing
        if packing is None:
            return x.norm(dim=tuple(range(1, x.dim())), keepdim=True)
        if x.shape[0] * x.shape[1] != packing.tokens:  # R-Drop's forward held the rows twice over
            packing = packing.doubled()
        features, width = packing.present.shape
        feature = packing.repack // width  # (rows * tokens,) the feature of each token
        squares = x.float().pow(2).sum(-1).flatten()
        norms = squares.new_zeros(features).index_add_(0, feature, squares).sqrt()
        return norms[feature].view(*x.shape[:-1], 1).to(x.dtype)


class EMA:
    """Shadow weights: after each optimizer step shadow += (1 - d) (weights - shadow), with d = min(decay,
    (1 + n) / (10 + n)) after n updates, so a short run is not dominated by the pretrained weights (TensorFlow's
    ExponentialMovingAverage with num_updates). Evaluation, the best checkpoint and the exported model use the
    shadow: a checkpoint's model.safetensors holds it, and the training weights go into training_state.pt."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self.updates = 0
        self.applied = False  # whether the model holds the shadow now (and self.shadow the training weights)

    @torch.no_grad()
    def update(self) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1 - decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied_to_model(self):
        """The model holds the shadow weights inside this block, its training weights again after it."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for p, s in zip(self.params, self.shadow):
            held = p.detach().clone()
            p.copy_(s)
            s.copy_(held)
        self.applied = not self.applied

    def state_dict(self) -> dict:
        """The weights that are not in model.safetensors: taken inside `applied_to_model`, the training weights."""
        if not self.applied:
            raise RuntimeError("EMA.state_dict() is taken with the shadow in the model (inside applied_to_model)")
        return {"training_weights": {n: s.clone() for n, s in zip(self.names, self.shadow)}, "updates": self.updates}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """After the model was loaded from model.safetensors (the shadow): keep that as the shadow and put the
        training weights back into the model."""
        training = state["training_weights"]
        for name, p, s in zip(self.names, self.params, self.shadow):
            s.copy_(p)
            p.copy_(training[name])
        self.updates = state["updates"]


def kept_warmup(started_with: int | None, now: int) -> int:
    """The steps of a warm-up (the lr's, the head's) in a run resumed with `now` from its length now: those it
    `started_with` where it was made longer, so it does not warm up again; `now` where it was made shorter (its lr
    still decays to 0) or it is fresh (None)."""
    return now if started_with is None else min(started_with, now)


def check_head_warmup(fraction: float, total_steps: int) -> None:
    """A train.head_warmup that rounds down to no step of the run is refused: it would do nothing."""
    if fraction and not int(fraction * total_steps):
        raise ConfigError(f"train.head_warmup {fraction:g} of {total_steps} steps is no step: raise it to at least "
                          f"{1 / total_steps:.3g} or set it to 0")


class HeadWarmup:
    """train.head_warmup: the first `steps` optimizer steps train the head alone (every parameter outside
    `model.encoder`: the span head qa_outputs, also at word level and in distillation), the encoder joins after
    them. The lr schedule is not touched: it runs over all steps, and the encoder starts at the lr it has reached.

    One process: the encoder's parameters stop requiring gradients, so the backward ends at the head (a step costs
    about its forward, a third of a full step's FLOPs; mrc_cli.compute counts it so) and fused AdamW, finding no
    gradient, leaves their weights and moments alone: the encoder's Adam moments start when it joins. Under
    train.cuda_graphs torch.compile recompiles once, at the change. Several processes: DDP expects a gradient for every
    parameter it wrapped, and a frozen one fails the next step ("Expected to have finished reduction in the prior
    iteration"), so there the encoder's backward runs and its gradients are dropped before each optimizer step: the
    same updates at a full step's cost, but train.max_grad_norm clips by the norm of all the gradients.
    A resumed run freezes or not by its step: nothing to checkpoint but the counts in TrainerState.head_only."""

    def __init__(self, model: nn.Module, steps: int, optimizer: torch.optim.Optimizer, processes: int, log):
        self.steps, self.log = steps, log
        self.encoder = [p for p in model.encoder.parameters() if p.requires_grad]
        self.freezes = processes == 1
        self.active = False  # whether the steps now train the head alone
        if steps and not self.freezes:
            optimizer.register_step_pre_hook(self._drop_encoder_gradients)

    @classmethod
    def for_config(cls, model: nn.Module, train, total_steps: int, optimizer, processes: int, step: int,
                   started_with: int | None, log) -> HeadWarmup:
        """The warm-up of train.head_warmup (a TrainConfig) in a run of `total_steps`, resumed at `step` with the
        warm-up it `started_with` (kept_warmup); without one, an object that does nothing."""
        steps = kept_warmup(started_with, int(train.head_warmup * total_steps))  # rounded down; none refused below
        if started_with is None:  # a resumed run shortened to none: it is over
            check_head_warmup(train.head_warmup, total_steps)
        warmup = cls(model, steps, optimizer, processes, log)
        if step < steps:
            warmup._set(True)
            log.info(f"head warm-up: steps {step + 1}-{steps} train the head only; " + (
                "the encoder is frozen" if warmup.freezes else
                f"under {processes} processes DDP needs the encoder's gradients, so its backward still runs and they "
                "are dropped before each optimizer step (no compute saved)"))
        return warmup

    def after_step(self, state, counts: list[int]) -> None:
        """After optimizer step `state.step` (a TrainerState): count a step whose backward ended at the head
        (`counts`: features, real tokens, computed tokens, squared feature lengths, of this one process), and let
        the encoder join after the last step of the warm-up."""
        if self.active and self.freezes:
            features, tokens, _, pairs = counts
            state.head_only = [a + b for a, b in zip(state.head_only, (features, tokens, pairs))]
        if self.active and state.step == self.steps:
            self._set(False)
            self.log.info(f"head warm-up: steps 1-{self.steps} trained the head only; the encoder trains from step "
                          f"{self.steps + 1}")

    def _set(self, active: bool) -> None:
        self.active = active
        if self.freezes:
            for p in self.encoder:
                p.requires_grad_(not active)

    def _drop_encoder_gradients(self, optimizer, args, kwargs) -> None:
        if self.active:
            for p in self.encoder:
                p.grad = None
