"""The one Llama shape our models are trained with (models.train_tiny.llama_config): the grid's
parameter count is computed without building a model, so it must match a built one, and the
shipped grid models must have been made with this shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.grid_train import Size, count_params
from models.train_tiny import build_tokenizer, llama_config

ROOT = Path(__file__).resolve().parent.parent
SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "eos_token_id",
    "pad_token_id",
)


@pytest.mark.parametrize("size", [Size(32, 2), Size(64, 3)])
def test_the_computed_parameter_count_is_the_built_models(size: Size) -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(size.hidden, size.layers, build_tokenizer()))
    assert count_params(size) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["tiny-chain-31k", "tiny-chain-252k"])
def test_the_shipped_grid_models_have_the_shape(name: str) -> None:
    shipped = json.loads((ROOT / "models" / name / "config.json").read_text())
    config = llama_config(shipped["hidden_size"], shipped["num_hidden_layers"], build_tokenizer())
    assert {f: getattr(config, f) for f in SHAPE_FIELDS} == {f: shipped[f] for f in SHAPE_FIELDS}
