"""`random:<preset>` models: real architectures with random weights, built offline.

Energy and latency depend on a model's shapes, not on its weight values, so a
random model of a real architecture measures the hardware honestly without a
download. Each preset is built once into a cache directory with
`save_pretrained`, so it then loads through the same `from_pretrained` path as
any local model (every PyTorchConfig field applies the same way).

Cache: `$LLEM_CACHE_DIR/random/<preset>-seed<seed>-v<N>` (LLEM_CACHE_DIR
defaults to ~/.cache/llem-mlflow). Built in a temporary directory next to it,
then renamed, so a crash never leaves a half-written model that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llem_mlflow.errors import ModelLoadError

RANDOM_PREFIX = "random:"
# Bump when a preset's shapes or the tokenizer recipe change: old caches are then ignored.
BUILD_VERSION = 1
MARKER_FILE = "llem-random-model.json"

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
# Vocabulary learned from the shipped prompts; real-shaped presets pad it with reserved tokens.
TRAINED_VOCAB_SIZE = 2048


@dataclass(frozen=True)
class Preset:
    model_type: str  # a transformers config model_type
    shapes: dict[str, Any]  # config kwargs; vocab_size None -> the trained tokenizer's size
    description: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "llama",
        dict(
            vocab_size=None,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
        ),
        "Llama architecture, hidden 64, 2 layers (~0.35M params): tests and the quickstart",
    ),
    "llama-3.2-1b": Preset(
        "llama",
        dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
        "Llama-3.2-1B shapes (1.24B params)",
    ),
    "qwen2.5-0.5b": Preset(
        "qwen2",
        dict(
            vocab_size=151936,
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
        ),
        "Qwen2.5-0.5B shapes (0.49B params)",
    ),
    "gpt2": Preset(
        "gpt2",
        dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
        "GPT-2 (small) shapes (124M params)",
    ),
}


def is_random_model(model: str) -> bool:
    return model.startswith(RANDOM_PREFIX)


def cache_root() -> Path:
    base = os.environ.get("LLEM_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "llem-mlflow")
    return Path(base) / "random"


def preset_name(model: str) -> str:
    """'random:tiny' -> 'tiny', or ModelLoadError listing the presets."""
    name = model[len(RANDOM_PREFIX) :] if is_random_model(model) else model
    if name not in PRESETS:
        raise ModelLoadError(
            f"model {model!r}: unknown random preset {name!r}; choose one of "
            + ", ".join(f"random:{p}" for p in PRESETS)
        )
    return name


def random_model_dir(model: str, seed: int) -> tuple[Path, bool]:
    """The directory holding the built preset, and whether it was built by this call."""
    name = preset_name(model)
    final = cache_root() / f"{name}-seed{seed}-v{BUILD_VERSION}"
    if (final / MARKER_FILE).is_file():
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        build_random_model(name, seed, tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same build first: theirs is identical, keep it.
            if not (final / MARKER_FILE).is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return final, False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, True


def build_random_model(name: str, seed: int, directory: Path) -> None:
    """Write tokenizer, config and random weights for preset `name` into `directory`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    preset = PRESETS[name]
    tokenizer = build_tokenizer(preset.shapes["vocab_size"] or 0)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (BOS, EOS, PAD)}
    shapes = {**preset.shapes, "vocab_size": preset.shapes["vocab_size"] or len(tokenizer)}
    config = AutoConfig.for_model(
        preset.model_type, **shapes, bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD]
    )
    # fork_rng: building must not disturb the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=ids[BOS], eos_token_id=ids[EOS], pad_token_id=ids[PAD])
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    marker = {"preset": name, "seed": seed, "build_version": BUILD_VERSION, "shapes": shapes}
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def build_tokenizer(pad_to: int = 0):
    """A byte-level BPE trained on the shipped prompts (deterministic, offline).

    `pad_to`: grow the vocabulary to this size with reserved tokens, so a
    real-shaped model's every output id decodes to something.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    from llem_mlflow.bench.prompts import builtin_prompt_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB_SIZE,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(builtin_prompt_texts(), trainer=trainer)
    if pad_to > tok.get_vocab_size():
        spec = json.loads(tok.to_str())
        vocab = spec["model"]["vocab"]
        for i in range(pad_to - len(vocab)):
            vocab[f"<|reserved_{i}|>"] = len(vocab)
        tok = Tokenizer.from_str(json.dumps(spec))
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left"
    )
