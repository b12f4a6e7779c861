"""`mrc export`: a standard Hugging Face folder that `AutoModelForQuestionAnswering` and `AutoTokenizer` load.

Our model names the encoder `encoder.` and the head `qa_outputs.`; the Hugging Face QA classes name the encoder by
the model family (`bert.`, `albert.`, `roberta.`) and the head `qa_outputs.` too, so export is a rename. The run
config, decoding settings included, is saved beside it as mrc_cli.yaml, which `Reader.load` reads back.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from mrc_cli.config import save_config
from mrc_cli.errors import CheckpointError
from mrc_cli.loading import EXPORT_SETTINGS, load_trained


def export_checkpoint(checkpoint: str, out: str) -> Path:
    from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES

    loaded = load_trained(checkpoint)
    encoder = loaded.model.encoder
    architecture = MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES.get(encoder.config.model_type)
    if architecture is None:
        raise CheckpointError(f"transformers has no question-answering class for model type {encoder.config.model_type!r}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = encoder.base_model_prefix
    state = {(f"{prefix}.{k[len('encoder.'):]}" if k.startswith("encoder.") else k): v.contiguous()
             for k, v in loaded.model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = encoder.config
    config.architectures = [architecture]
    config.save_pretrained(out_dir)
    loaded.tokenizer.save_pretrained(out_dir)
    save_config(loaded.cfg, out_dir / EXPORT_SETTINGS)
    return out_dir
