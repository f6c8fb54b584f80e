"""Prompt sources: the built-in set, a JSONL/CSV/Parquet file, or synthetic prompts.

`load_prompts` returns exactly `dataset.n` prompts in the order they will be
measured. When the source holds fewer than n prompts it is cycled (repeated
from its start, after shuffling if asked); `Prompt.index` is the row in the
source, so repeats stay visible in the per-request table.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llem_mlflow.errors import DatasetError

FILE_EXTENSIONS = (".jsonl", ".csv", ".parquet")
DEFAULT_COLUMNS = ("prompt", "text")
BUILTIN_FILE = "prompts.jsonl"


@dataclass(frozen=True)
class Prompt:
    index: int  # row in the source (builtin/file) or synthetic prompt number
    text: str


def load_prompts(cfg, tokenizer) -> list[Prompt]:
    """The `cfg.dataset.n` prompts to measure, in measured order."""
    ds = cfg.dataset
    if ds.source == "synthetic":
        return synthetic_prompts(tokenizer, ds.synthetic_input_tokens, ds.n, cfg.random_seed, cfg.max_input_tokens)
    texts = builtin_prompt_texts() if ds.source == "builtin" else read_prompt_file(Path(ds.source), ds.column)
    prompts = [Prompt(i, t) for i, t in enumerate(texts)]
    if ds.shuffle:
        random.Random(cfg.random_seed).shuffle(prompts)
    return [prompts[i % len(prompts)] for i in range(ds.n)]


def builtin_prompt_texts() -> list[str]:
    """The prompts shipped with the package (written for llem-mlflow, see docs/models-and-prompts.md)."""
    from importlib.resources import files

    text = files("llem_mlflow.bench").joinpath("data", BUILTIN_FILE).read_text(encoding="utf-8")
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


def read_prompt_file(path: Path, column: str | None) -> list[str]:
    """Non-empty prompts from `column` of a .jsonl/.csv/.parquet file."""
    check_prompt_file(path)
    suffix = path.suffix.lower()
    rows = _read_rows(path, suffix)
    if not rows:
        raise DatasetError(f"dataset.source {str(path)!r}: the file has no rows; add prompts or choose another source")
    name = _pick_column(path, rows[0].keys(), column)
    texts = [str(row[name]) for row in rows if row.get(name) not in (None, "")]
    if not texts:
        raise DatasetError(f"dataset.source {str(path)!r}: column {name!r} is empty in every row; set dataset.column to the prompt column")
    return texts


def check_prompt_file(path: Path) -> None:
    """DatasetError unless `path` is an existing file of a known type (cheap: before a run exists)."""
    suffix = path.suffix.lower()
    if suffix not in FILE_EXTENSIONS:
        raise DatasetError(
            f"dataset.source {str(path)!r}: unknown file type {suffix or '(none)'!r}; use a "
            f"{'/'.join(FILE_EXTENSIONS)} file, or source: builtin / synthetic"
        )
    if not path.is_file():
        raise DatasetError(f"dataset.source {str(path)!r}: file not found; check the path (relative paths start at {Path.cwd()})")


def _read_rows(path: Path, suffix: str) -> list[dict[str, Any]]:
    try:
        if suffix == ".jsonl":
            rows = []
            with path.open(encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if line.strip():
                        row = _json_line(path, n, line)
                        if not isinstance(row, dict):
                            raise DatasetError(f"dataset.source {str(path)!r} line {n}: expected a JSON object per line")
                        rows.append(row)
            return rows
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as f:
                return list(csv.DictReader(f))
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    except DatasetError:
        raise
    except Exception as exc:  # malformed JSON/CSV/Parquet: say which file
        raise DatasetError(f"dataset.source {str(path)!r}: cannot read it as {suffix}: {exc}") from exc


def _json_line(path: Path, number: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:  # its lineno would be 1: the line, not the file
        raise DatasetError(
            f"dataset.source {str(path)!r} line {number}, column {exc.colno}: invalid JSON ({exc.msg}); "
            "each line must be one JSON object such as {\"prompt\": \"...\"}"
        ) from None


def _pick_column(path: Path, available, column: str | None) -> str:
    available = list(available)
    if column is not None:
        if column in available:
            return column
        raise DatasetError(
            f"dataset.source {str(path)!r} has no column {column!r} (columns: {', '.join(map(str, available))}); "
            "set dataset.column to one of them"
        )
    for name in DEFAULT_COLUMNS:
        if name in available:
            return name
    raise DatasetError(
        f"dataset.source {str(path)!r} has neither a 'prompt' nor a 'text' column (columns: "
        f"{', '.join(map(str, available))}); set dataset.column"
    )


def synthetic_prompts(tokenizer, n_tokens: int, n: int, seed: int, max_input_tokens: int) -> list[Prompt]:
    """n prompts of random common words that tokenize to exactly n_tokens (special tokens included)."""
    if n_tokens > max_input_tokens:
        raise DatasetError(
            f"dataset.synthetic_input_tokens ({n_tokens}) exceeds max_input_tokens ({max_input_tokens}): "
            "the prompts would be truncated; raise max_input_tokens or lower synthetic_input_tokens"
        )
    n_special = len(tokenizer("")["input_ids"])
    if n_tokens <= n_special:
        raise DatasetError(
            f"dataset.synthetic_input_tokens ({n_tokens}) leaves no room for text: this tokenizer adds "
            f"{n_special} special token(s); use at least {n_special + 1}"
        )
    words = _single_token_words(tokenizer)
    if not words:
        raise DatasetError("source: synthetic: this tokenizer has no single-token English words; use a prompt file instead")
    rng = random.Random(seed)
    prompts = []
    for i in range(n):
        chosen = [rng.choice(words) for _ in range(n_tokens - n_special)]
        text = _fit_length(tokenizer, chosen, n_tokens, rng, words)
        prompts.append(Prompt(i, text))
    return prompts


def _single_token_words(tokenizer) -> list[str]:
    # Words of the built-in prompts that the tokenizer maps to one token after a space.
    candidates = sorted({w.strip(".,;:!?'\"()") for t in builtin_prompt_texts() for w in t.split()})
    out = []
    for w in candidates:
        if w.isalpha() and len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1:
            out.append(w)
    return out


def _fit_length(tokenizer, chosen: list[str], n_tokens: int, rng: random.Random, words: list[str]) -> str:
    # Words usually add one token each; when a tokenizer merges across words, adjust until exact.
    for _ in range(4 * n_tokens):
        text = " " + " ".join(chosen)
        length = len(tokenizer(text)["input_ids"])
        if length == n_tokens:
            return text
        if length > n_tokens and len(chosen) > 1:
            chosen.pop()
        else:
            chosen.append(rng.choice(words))
    raise DatasetError(
        f"source: synthetic: cannot build a prompt of exactly {n_tokens} tokens with this tokenizer; "
        "try another synthetic_input_tokens or a prompt file"
    )
