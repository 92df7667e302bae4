"""A tiny random Llama and a locally trained BPE tokenizer, so real-vLLM tests need no download.

Needs torch, transformers and tokenizers, which only the vLLM venv has (imported lazily). The model is
bf16 because vLLM's LoRA path needs bf16/fp16 weights. Everything is seeded, and a marker file
records the parameters, so a second call with the same parameters reuses the folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TinyModelSpec", "TinyModel", "build_tiny_model"]

_MARKER = "optplace-tiny-model.json"


@dataclass(frozen=True, slots=True)
class TinyModelSpec:
    """Shape of the tiny model (defaults: hidden 256, 4 layers, 4 heads, 2 KV heads)."""

    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    seed: int = 0


@dataclass(frozen=True, slots=True)
class TinyModel:
    """A built model folder (Hugging Face layout) and its config."""

    path: Path
    config: dict[str, Any]
    vocab_size: int
    first_plain_token_id: int
    """Token ids from here to ``vocab_size - 1`` are ordinary (non-special) tokens."""


def _corpus(rng: np.random.Generator, lines: int = 4000) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=int(rng.integers(2, 9)))) for _ in range(3000)]
    weights = 1.0 / np.arange(1, len(words) + 1)  # Zipf-like, so BPE finds frequent merges
    weights /= weights.sum()
    out = []
    for _ in range(lines):
        n = int(rng.integers(5, 20))
        out.append(" ".join(words[i] for i in rng.choice(len(words), size=n, p=weights)) + ".")
    return out


def build_tiny_model(out_dir: Path, spec: TinyModelSpec = TinyModelSpec()) -> TinyModel:
    """Build (or reuse) the tiny model and tokenizer in ``out_dir``."""
    out = Path(out_dir)
    marker = out / _MARKER
    if marker.exists() and json.loads(marker.read_text()).get("spec") == asdict(spec):
        cfg = json.loads((out / "config.json").read_text())
        info = json.loads(marker.read_text())
        return TinyModel(out, cfg, int(cfg["vocab_size"]), int(info["first_plain_token_id"]))

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(rng), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=spec.max_position_embeddings,
    )
    fast.save_pretrained(out)
    vocab = tok.get_vocab_size()

    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    cfg = json.loads((out / "config.json").read_text())
    first_plain = len(specials)
    marker.write_text(json.dumps({"spec": asdict(spec), "first_plain_token_id": first_plain}, indent=2) + "\n")
    return TinyModel(out, cfg, int(cfg["vocab_size"]), first_plain)
