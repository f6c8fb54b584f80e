"""Load a model and its tokenizer with every PyTorchConfig field mapped.

Sources: a hub id, a local directory, `random:<preset>` (built offline into a
cache directory, then loaded like a local one), or a directory the runner
downloaded for a `models:/` URI (passed as `model_path`).
`LoadedModel.resolved` records exactly what was passed to `from_pretrained`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llem_mlflow.bench.context import check_fits, context_window
from llem_mlflow.bench.random_models import is_random_model, random_model_dir
from llem_mlflow.errors import ModelLoadError

HUB_PROBE_TIMEOUT_S = 3.0


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    device: str  # where inputs go: "cpu", "cuda:0"
    gpu_indices: list[int]  # GPUs holding weights; [] on CPU
    resolved: dict[str, Any]  # JSON-safe: what we passed and what we got
    n_params: int
    n_non_embedding_params: int


def load_model(cfg, model_path: str | None = None) -> LoadedModel:
    """Load `cfg.model` (or `model_path`, a local copy of a models:/ URI) as configured."""
    import torch

    source, origin, built_now = _resolve_source(cfg, model_path)
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    kwargs = from_pretrained_kwargs(cfg, device)
    if origin == "hub" and _hub_unreachable():
        kwargs["local_files_only"] = True  # fail at once from the cache instead of retrying for ~30 s

    passed = json_safe(kwargs)  # before loading: transformers edits some values in place (max_memory)
    tokenizer = _load_tokenizer(cfg, source, kwargs)
    check_fits(cfg, context_window(_load_config(cfg, source, kwargs)), cfg.model)  # before the weights
    model = _load_weights(cfg, source, kwargs)
    if kwargs.get("device_map") is None and "quantization_config" not in kwargs:
        model.to(device)  # bitsandbytes places quantized weights itself and forbids .to()
    model.eval()
    device, gpu_indices = _placement(model)

    compile_args = None
    if cfg.pytorch.torch_compile:
        compile_args = {"mode": cfg.pytorch.torch_compile_mode, "backend": cfg.pytorch.torch_compile_backend or "inductor"}
        # Compile forward, not the module: generate() calls self.forward, which a wrapper would bypass.
        model.forward = torch.compile(model.forward, **compile_args)

    n_params, n_non_embedding = count_parameters(model)
    resolved = {
        "model": cfg.model,
        "source": str(source),
        "origin": origin,
        "from_pretrained_kwargs": passed,
        "model_class": type(model).__name__,
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": device,
        "gpu_indices": gpu_indices,
        "torch_compile": compile_args,
        "n_params": n_params,
        "n_non_embedding_params": n_non_embedding,
        "tokenizer": {
            "class": type(tokenizer).__name__,
            "padding_side": tokenizer.padding_side,
            "pad_token": tokenizer.pad_token,
            "eos_token": tokenizer.eos_token,
            "vocab_size": len(tokenizer),
        },
    }
    if origin == "random":
        resolved["random_model"] = {"built_now": built_now, "cache_dir": str(source)}
    return LoadedModel(model, tokenizer, device, gpu_indices, resolved, n_params, n_non_embedding)


def from_pretrained_kwargs(cfg, device: str) -> dict[str, Any]:
    """The from_pretrained() kwargs for cfg; None fields are left out (library default)."""
    import torch

    pt = cfg.pytorch
    kwargs: dict[str, Any] = {}
    if pt.attn_implementation is not None:
        kwargs["attn_implementation"] = pt.attn_implementation
    precision = cfg.precision or ("bf16" if device.startswith("cuda") else "fp32")
    kwargs["dtype"] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    quantization = _bnb_config(pt)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    if pt.device_map is not None:
        kwargs["device_map"] = pt.device_map
    if pt.max_memory is not None:
        kwargs["max_memory"] = dict(pt.max_memory)
    if pt.revision is not None:
        kwargs["revision"] = pt.revision
    if pt.trust_remote_code is not None:
        kwargs["trust_remote_code"] = pt.trust_remote_code
    kwargs.update(cfg.passthrough_kwargs)  # last; the config refuses keys that named fields cover
    return kwargs


def _bnb_config(pt):
    if not (pt.load_in_4bit or pt.load_in_8bit):
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if pt.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    options: dict[str, Any] = {}
    if pt.bnb_4bit_compute_dtype is not None:
        options["bnb_4bit_compute_dtype"] = getattr(torch, pt.bnb_4bit_compute_dtype)
    if pt.bnb_4bit_quant_type is not None:
        options["bnb_4bit_quant_type"] = pt.bnb_4bit_quant_type
    if pt.bnb_4bit_use_double_quant is not None:
        options["bnb_4bit_use_double_quant"] = pt.bnb_4bit_use_double_quant
    return BitsAndBytesConfig(load_in_4bit=True, **options)


def count_parameters(model) -> tuple[int, int]:
    """(all parameters, parameters used in a matmul per token).

    Non-embedding = all minus the embedding lookup tables (token, position);
    the output head counts even when it shares the token embedding's weights,
    because it is a real matmul per token. num_parameters() undoes 4-bit packing.
    """
    import torch

    total = model.num_parameters()
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    return total, total - embedding + (head.weight.numel() if tied else 0)


def _resolve_source(cfg, model_path: str | None) -> tuple[str, str, bool]:
    """(what to pass to from_pretrained, origin: 'local' | 'random' | 'registry' | 'hub', random model built now)."""
    if model_path is not None:
        if not Path(model_path).is_dir():
            raise ModelLoadError(f"model {cfg.model!r}: downloaded copy {model_path!r} is not a directory")
        return model_path, "registry", False
    name = cfg.model
    if is_random_model(name):
        directory, built_now = random_model_dir(name, cfg.random_seed)
        return str(directory), "random", built_now
    if name.startswith("models:/"):
        raise ModelLoadError(f"model {name!r}: models:/ URIs must be downloaded by the runner first (pass model_path)")
    problem = local_model_problem(name)
    if problem:
        raise ModelLoadError(problem)
    if _is_local_path(name):
        return str(Path(name).expanduser()), "local", False
    return name, "hub", False


def _is_local_path(name: str) -> bool:
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def local_model_problem(name: str) -> str | None:
    """Why `name`, read as a local model path, cannot be one (None: a usable directory, or a hub id)."""
    if _is_local_path(name) and not Path(name).expanduser().is_dir():
        return (
            f"model {name!r}: local path not found or not a directory; give a directory with config.json and weights, "
            "a hub id like 'Qwen/Qwen2.5-0.5B-Instruct', or random:tiny"
        )
    return None


def _hub_unreachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S):
            return False
    except OSError:
        return True


def _load_tokenizer(cfg, source: str, kwargs: dict[str, Any]):
    from transformers import AutoTokenizer

    hub_kwargs = {k: kwargs[k] for k in ("revision", "trust_remote_code", "local_files_only") if k in kwargs}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **hub_kwargs)
    except Exception as exc:
        raise _load_error(cfg, exc, kwargs, "tokenizer") from exc
    tokenizer.padding_side = "left"  # decoder-only batches must end at the same position
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"model {cfg.model!r}: the tokenizer has neither a pad nor an eos token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_config(cfg, source: str, kwargs: dict[str, Any]):
    """The model's config as from_pretrained() will see it (passthrough_kwargs may change fields)."""
    from transformers import AutoConfig

    hub_kwargs = {k: kwargs[k] for k in ("revision", "trust_remote_code", "local_files_only") if k in kwargs}
    try:
        return AutoConfig.from_pretrained(source, **hub_kwargs, **cfg.passthrough_kwargs)
    except Exception as exc:
        raise _load_error(cfg, exc, kwargs, "config") from exc


def _load_weights(cfg, source: str, kwargs: dict[str, Any]):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except Exception as exc:
        raise _load_error(cfg, exc, kwargs, "weights") from exc


def _load_error(cfg, exc: Exception, kwargs: dict[str, Any], what: str) -> ModelLoadError:
    text = str(exc)
    lower = text.lower()
    if "gated" in lower or "401" in text or "403" in text:
        fix = "request access on the model's hub page, then log in with `hf auth login` (or set HF_TOKEN)"
    elif kwargs.get("local_files_only") or "couldn't connect" in lower or "offline" in lower:
        fix = (
            "the hub is unreachable and the model is not in the local cache: download it where there is internet "
            "(`hf download <id>`, then copy ~/.cache/huggingface), give a local directory, or use random:<preset>"
        )
    elif "bitsandbytes" in lower or "quantiz" in lower:
        fix = "install a bitsandbytes build for this device (pip install -U bitsandbytes) or remove load_in_4bit/load_in_8bit"
    elif "trust_remote_code" in lower:
        fix = "set pytorch.trust_remote_code: true if you trust the model repository's code"
    elif "is not a local folder and is not a valid model identifier" in lower or "404" in text:
        fix = "check the model id / path (and pytorch.revision)"
    else:
        fix = "check the model id or path and the pytorch.* loading fields"
    return ModelLoadError(f"model {cfg.model!r}: cannot load the {what}: {text.strip().splitlines()[0] if text else type(exc).__name__}. Fix: {fix}")


def _placement(model) -> tuple[str, list[int]]:
    """(device for inputs, GPU indices holding weights)."""
    device_map = getattr(model, "hf_device_map", None)
    gpus: set[int] = set()
    for where in (device_map or {}).values():
        if isinstance(where, int):
            gpus.add(where)
        elif isinstance(where, str) and where.startswith("cuda"):
            gpus.add(int(where.partition(":")[2] or 0))
    device = model.device
    if device.type == "cuda":
        gpus.add(device.index or 0)
        return f"cuda:{device.index or 0}", sorted(gpus)
    return str(device), sorted(gpus)


def json_safe(value: Any) -> Any:
    """A JSON-safe copy for resolved.json: configs with to_dict() expanded, dtypes as 'bfloat16', the rest as text."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_dict"):  # BitsAndBytesConfig, GenerationConfig and other configs
        return json_safe(value.to_dict())
    return str(value).removeprefix("torch.")
