"""The span model as an ONNX graph, run by ONNX Runtime behind the call `predict_logits` makes of the torch model.

An `mrc export --format onnx` folder holds the graph (`model.onnx`, fp32; `model.int8.onnx` with `--quantize int8`),
onnx.json (which graph loads, its inputs), the encoder's config.json, the tokenizer and mrc_cli.yaml (the run config
with its decoding settings and null threshold). `mrc_cli.loading.load_trained` reads it like a checkpoint: features,
batches, decoding, thresholds and the word level's offsets stay the ones `mrc eval` uses; only the forward pass is
ONNX Runtime's (`OnnxSpanModel`).

The graph is `SpanExtractionModel.forward` itself, exported whole: encoder, head and at word level the pooling of
sub-tokens into words (mrc_cli.words). Inputs (batch, sequence), int64: input_ids, attention_mask, token_type_ids
and at word level word_ids; outputs start_logits and end_logits, float32, padding at float32's minimum. At word
level the graph pools into as many unit slots as the window has tokens (a window never has more units, and the
sequence length is a dimension the graph knows); the adapter keeps the batch's first num_units, the torch model's width.
Its attention is ONNX Runtime's fused Attention op (`fuse_graph`): the graph is for ONNX Runtime only.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AttentionInterface

from mrc_cli.errors import CheckpointError, ConfigError
from mrc_cli.loading import ONNX_SETTINGS
from mrc_cli.model import SpanExtractionModel, SpanOutput, span_loss, with_loss

FP32_GRAPH = "model.onnx"
INT8_GRAPH = "model.int8.onnx"
OPSET = 18  # the opset of the dynamo exporter's op library (torchlib) in torch 2.13: no version conversion after export
EXAMPLE_SHAPE = (2, 16)  # (batch, sequence) of the example inputs; both axes are exported as dynamic
FUSABLE_ATTENTION = "mrc_onnx_fusable"  # the attention the graph is exported with (`fusable_attention`)
# The encoders whose graphs are checked against the model (tests/test_onnx.py): measured on tiny models, MPNet's int8
# quantisation fails on its fused graph and DeBERTa's graph gives other logits (0.4 apart)
EXPORTABLE = ("bert", "albert", "electra", "roberta", "xlm-roberta", "camembert")


class OnnxSpanModel:
    """An ONNX Runtime session that answers `model(**batch)` as `SpanExtractionModel` does: a SpanOutput of torch
    tensors on the batch's device. Feature batches only (packed rows are the torch model's: loading sets
    train.tokens_per_batch to 0); the graph runs in its own precision (fp32, or int8 weights), so autocast has nothing
    to change. With labels, the loss of `SpanExtractionModel` in eval mode (`mrc eval`'s dev_loss)."""

    training = False
    packs = False

    def __init__(self, session, config, span_level: str, path: Path | None = None):
        self.session = session
        self.path = path  # the graph's file
        self.config = config  # the encoder's: pad_token_id for the batches
        self.span_level = span_level
        self.input_names = [i.name for i in session.get_inputs()]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, word_ids: torch.Tensor | None = None,
                 num_units: int | None = None, packing=None, start_positions: torch.Tensor | None = None,
                 end_positions: torch.Tensor | None = None) -> SpanOutput:
        if packing is not None:
            raise ValueError("an ONNX graph takes feature batches, not packed rows: set train.tokens_per_batch to 0")
        # a batch without padding comes without a mask; the graph always takes one (all ones: nothing masked)
        inputs = {"input_ids": input_ids,
                  "attention_mask": torch.ones_like(input_ids) if attention_mask is None else attention_mask,
                  "token_type_ids": torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids,
                  "word_ids": word_ids}
        feeds = {name: inputs[name].detach().to("cpu", torch.int64).numpy() for name in self.input_names}
        start, end = (torch.from_numpy(logits).to(input_ids.device) for logits in self._feature_by_feature(feeds))
        if self.span_level == "word":  # (batch, sequence) unit slots -> (batch, units) as the torch model gives them
            if num_units is None:
                from mrc_cli.words import unit_index

                num_units = int(unit_index(word_ids).max()) + 1
            start, end = start[:, :num_units], end[:, :num_units]
        if start_positions is None:
            return SpanOutput(start, end)
        if self.span_level == "word":
            from mrc_cli.words import token_to_unit_labels, unit_index

            units = unit_index(word_ids)
            start_positions, end_positions = (token_to_unit_labels(p, units) for p in (start_positions, end_positions))
        return with_loss(start, end, span_loss(start, end, start_positions, end_positions), start_positions)

    def _feature_by_feature(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(start, end) logits of the batch, one session run per feature cut after its last real token, padding at
        float32's minimum as the graph gives it. No padding is computed (int8, 400 SQuAD v2 dev questions: 1.36x
        faster than runs of 8 padded features), and int8's activation scales, which ONNX Runtime's dynamic
        quantisation takes per run, depend on the feature alone: its answer does not move with its batch mates
        (they moved F1 by up to 1.4 between runs of 8, 16 and 32), so eval, predict and serve's batches agree."""
        mask = feeds["attention_mask"]
        width = mask.shape[1]
        lengths = width - np.argmax(mask[:, ::-1] != 0, axis=1)
        start, end = (np.full(mask.shape, np.finfo(np.float32).min, np.float32) for _ in range(2))
        for row, length in enumerate(lengths):
            s, e = self.session.run(None, {name: x[row:row + 1, :length] for name, x in feeds.items()})
            start[row, :length], end[row, :length] = s[0], e[0]
        return start, end

    def eval(self) -> OnnxSpanModel:
        return self

    def train(self, mode: bool = True) -> OnnxSpanModel:
        if mode:
            raise ValueError("an ONNX export is for inference; train from the checkpoint it was exported from")
        return self

    def to(self, *args, **kwargs) -> OnnxSpanModel:
        return self  # ONNX Runtime's CPU provider: the outputs follow the inputs' device


def fusable_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Eager attention written as ONNX Runtime's BERT attention fusion (onnxruntime.transformers.fusion_attention)
    matches it: scores / sqrt(head_dim) + additive mask -> Softmax -> @ values. transformers' own eager attention
    multiplies by the scale, and that Mul is found before the mask's Mul by the fusion's matcher; its SDPA path masks
    with Where/IsNaN, which no pattern matches. query/key/value (batch, heads, seq, head_dim), eval only."""
    scores = torch.matmul(query, key.transpose(-1, -2))
    if scaling is None or scaling == query.shape[-1] ** -0.5:
        scores = scores / query.shape[-1] ** 0.5  # the fused op's own scale: the fusion reads no other
    else:
        scores = scores * scaling  # another scale: left unfused (no pattern matches), still right
    if attention_mask is not None:
        scores = scores + attention_mask
    return torch.matmul(torch.softmax(scores, dim=-1), value).transpose(1, 2), None


AttentionInterface.register(FUSABLE_ATTENTION, fusable_attention)


class _GraphForward(nn.Module):
    """What the graph computes: SpanExtractionModel.forward with positional tensors in and (start, end) out; at word
    level the units are pooled into sequence-length slots (see the module docstring).

    The encoder's mask is BERT's classic additive one built from the 2D input, (1 - mask[:, None, None, :]) * min,
    the form the attention fusion matches (the model's own (batch, 1, 1, seq) boolean mask is left dead)."""

    def __init__(self, model: SpanExtractionModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids, word_ids=None):
        additive = (1.0 - attention_mask.unsqueeze(1).unsqueeze(2).float()) * torch.finfo(torch.float32).min

        def with_additive_mask(module, args, kwargs):
            return args, {**kwargs, "attention_mask": additive}

        hook = self.model.encoder.register_forward_pre_hook(with_additive_mask, with_kwargs=True)
        try:
            num_units = None if word_ids is None else input_ids.shape[1]
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                             word_ids=word_ids, num_units=num_units)
        finally:
            hook.remove()
        return out.start_logits, out.end_logits


def require_exporter() -> None:
    """Refuse before any work where the export's libraries are missing (an install without mrc-cli's dependencies)."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"mrc export --format onnx needs {', '.join(missing)}: pip install {' '.join(missing)}")


def check_exportable(config, checkpoint: str) -> None:
    """Refuse, before any work, an encoder whose graph is not checked (EXPORTABLE)."""
    if config.model_type not in EXPORTABLE:
        raise ConfigError(f"{checkpoint}: a {config.model_type} encoder has no checked ONNX graph (only "
                          f"{', '.join(EXPORTABLE)}): it answers with --backend torch, and `mrc export --format hf` "
                          "writes it as a Hugging Face folder")


def export_graph(model: SpanExtractionModel, path: Path) -> list[str]:
    """Write `model` (in eval mode) as an ONNX graph with dynamic batch and sequence axes, its attention fused by
    ONNX Runtime (`fuse_graph`), checked by onnx's checker; returns the input names.

    torch.onnx's dynamo exporter (torch.export + onnxscript): the TorchScript one (dynamo=False) traced transformers
    5's attention-mask code into constants, so its graph answered other padding than the example's with logits 0.1
    off; the dynamo graph gives the model's logits to ~1e-5 at any batch, length and padding (tests/test_onnx.py).
    Exported with `fusable_attention` and without onnxscript's graph optimizer, which merges the mask's two
    Unsqueezes into one the fusion does not match (ONNX Runtime's own optimization runs in `fuse_graph`).
    One file, without external data: protobuf's 2 GB limit holds BERT-large and ALBERT-xxlarge.
    """
    from torch.export import Dim

    model = model.eval()
    inputs = _example_inputs(model)
    batch, sequence = Dim("batch"), Dim("sequence")
    attention = model.encoder.config._attn_implementation
    model.encoder.set_attn_implementation(FUSABLE_ATTENTION)
    # the exporter prints its progress to stdout, where `mrc export` prints its summary; warns that the two axis names
    # are shared by all inputs, which is what is meant; and says nothing the user can act on about torchvision's ops
    # (not installed, not used), a deprecation inside torch and an empty attribute list onnx_ir types as INTS (at
    # word level: "Attribute type is ambiguous")
    try:
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings(), \
                _quiet_loggers("torch.onnx._internal.exporter._registration", "onnx_ir._convenience"):
            warnings.filterwarnings("ignore", message=".*axis name.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            torch.onnx.export(_GraphForward(model).eval(), tuple(inputs.values()), str(path), dynamo=True,
                              opset_version=OPSET, input_names=list(inputs), optimize=False,
                              output_names=["start_logits", "end_logits"], external_data=False,
                              dynamic_shapes={name: {0: batch, 1: sequence} for name in inputs})
    finally:
        model.encoder.set_attn_implementation(attention)
    fuse_graph(path, model.config)
    check_graph(path)
    return list(inputs)


def fuse_graph(path: Path, config) -> None:
    """ONNX Runtime's BERT fusions in place (onnxruntime.transformers, opt_level 1): Attention (QAttention once
    quantized), SkipLayerNormalization, BiasGelu. MiniLM, batches of 32 SQuAD features on one busy core: int8 about
    1.18x and fp32 1.15x faster than the unfused graph (end to end: docs/benchmarks.md, "After fusing attention"),
    fp32 logits as close to the model's. The mask stays the raw 2D one (any padding), not the default's per-row
    lengths (right padding only). A layer the fusion does not match keeps its plain attention (tiny ALBERT: one of
    its two shared layers fused; at word level SkipLayerNormalization is left to the session, the fusions' shape
    inference failing on the pooling), optimized all the same."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.use_raw_attention_mask(True)
    # its shape inference prints a bare "failed in shape inference" on the word pooling, and the SkipLayerNormalization
    # fusion then logs "symbolic shape inference disabled or failed." (onnxruntime.transformers imports its modules
    # by their bare names): not the user's concern
    with contextlib.redirect_stdout(io.StringIO()), _quiet_loggers("fusion_skiplayernorm"):
        fused = optimize_model(str(path), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, optimization_options=options, opt_level=1)
        fused.save_model_to_file(str(path))


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """The named loggers at ERROR for the block: libraries' warnings that say nothing the user can act on."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _example_inputs(model: SpanExtractionModel) -> dict[str, torch.Tensor]:
    """Token ids, a padded second row, two segments and, at word level, words of two tokens after a question."""
    batch, length = EXAMPLE_SHAPE
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, model.config.vocab_size, (batch, length), generator=generator),
              "attention_mask": torch.ones(batch, length, dtype=torch.long),
              "token_type_ids": torch.zeros(batch, length, dtype=torch.long)}
    inputs["attention_mask"][1, length * 3 // 4:] = 0
    inputs["token_type_ids"][:, length // 4:] = 1
    if model.span_level == "word":
        word_ids = torch.arange(length).repeat(batch, 1) // 2
        word_ids[:, : length // 4] = -1  # CLS and the question
        word_ids[1, length * 3 // 4:] = -1  # padding
        inputs["word_ids"] = word_ids
    return inputs


def quantize_graph(source: Path, target: Path) -> None:
    """int8 weights of every MatMul (and the embedding tables), activations quantized per batch at run time (ONNX
    Runtime's dynamic quantisation: no calibration data). Weights per output channel: with ONNX Runtime's default of
    one scale per tensor, a MiniLM fine-tuned on the quickstart sample lost 11 F1 on its dev file and kept 51 % of
    its answers; per channel -1.5 F1 and 84 % (49 questions; 300 of the SQuAD v2 dev head: 45 % against 76 % kept).
    Unsigned weights or a 7-bit range (reduce_range, against AVX2's saturation) changed nothing beyond that noise.
    The fused Attention becomes ONNX Runtime's QAttention, whose QKV weights it always quantizes to 7 bits per channel
    (300 SQuAD v2 dev questions, a weak MiniLM: answers identical to fp32 80 % against 82 % unfused, F1 the same).

    Without ONNX Runtime's pre-processing (quant_pre_process), which it advises in a warning (silenced here): its
    symbolic shape inference stops on the dynamo graph ("Incomplete symbolic shape inference"), and the session
    optimizes the quantized graph when it loads it anyway."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    advice = _WithoutMessage("pre-processing before quantization")
    root.addFilter(advice)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(advice)


class _WithoutMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def check_graph(path: Path) -> None:
    """onnx's checker, given the path (a graph over 2 GB is checked from its file), with shape inference."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def load_onnx_model(folder: Path, span_level: str, graph: str) -> OnnxSpanModel:
    """The session of the folder's `graph` (fp32 or int8)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError(f"{folder} is an ONNX export and onnxruntime is not installed: pip install onnxruntime "
                              "(or pip install mrc-cli with its dependencies)") from None
    from transformers import AutoConfig

    path = folder / read_settings(folder)["graphs"][graph]  # there: check_export_files
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # torch's threads: one setting for both backends
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's errors have no common base: a damaged or foreign file
        raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({str(err).splitlines()[0][:200]}); export the "
                              "checkpoint again") from None
    return OnnxSpanModel(session, AutoConfig.from_pretrained(str(folder)), span_level, path)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # what save_pretrained writes for a fast tokenizer


def missing_export_files(folder: Path, graph: str, own_settings: bool = True) -> list[str]:
    """The files an export folder loads `graph` from that it lacks: the graph, the encoder's config.json, the
    tokenizer's and, where it answers with its own settings (not a checkpoint's: mrc_cli.backends), mrc_cli.yaml."""
    from mrc_cli.loading import EXPORT_SETTINGS

    needed = [read_settings(folder)["graphs"][graph], "config.json", *TOKENIZER_FILES,
              *([EXPORT_SETTINGS] if own_settings else [])]
    return [name for name in needed if not (folder / name).is_file()]


def check_export_files(folder: Path, graph: str, own_settings: bool = True) -> None:
    """Refuse an export folder without `graph` or a file it loads from (one left out of a copy, say), naming it:
    else transformers or the config loader would fail on it without saying the folder is an export."""
    settings = read_settings(folder)
    if graph not in settings["graphs"]:
        raise CheckpointError(f"{folder}: this export has no {graph} graph (it has {', '.join(settings['graphs'])})")
    missing = missing_export_files(folder, graph, own_settings)
    if missing:
        source = settings.get("exported_from", "CHECKPOINT")
        quantize = " --quantize int8" if "int8" in settings["graphs"] else ""
        raise CheckpointError(f"{folder}: an ONNX export without {', '.join(missing)}; export the checkpoint again "
                              f"(mrc export --checkpoint {source} --format onnx{quantize} --out {folder}), or copy "
                              "the whole folder")


def read_settings(folder: Path) -> dict:
    """onnx.json of an export folder: {"graph": the one that loads, "graphs": {fp32|int8: file}, inputs, versions}."""
    path = folder / ONNX_SETTINGS
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err}); export the checkpoint again") from None
    if not isinstance(settings, dict) or not {"graph", "graphs"} <= set(settings):
        raise CheckpointError(f"{path}: expected the keys graph and graphs, as mrc export --format onnx writes them")
    return settings
