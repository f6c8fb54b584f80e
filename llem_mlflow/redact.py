"""Secrets never reach MLflow or the terminal: values under secret-looking keys, and the
credentials inside URIs, are replaced.

Applied wherever user-supplied mappings are written out (params, the normalised config
artifact, config/resolved.json and the config hash) and to every line we print or log that
may hold a tracking URI (the "run_id ... at" line, error messages).

A key is secret-looking when, split into words (at separators, camelCase and digits), it
names a secret (`token`, `pwd`, `auth`, `session`, `sessionid`...), ends in one (`hftoken`),
holds a compound one (`apikey`, `privatekey`, `clientsecret`...), or contains a word no
ordinary setting contains (`password`, `passphrase`, `secret`, `credential`, `authorization`,
`bearer`, `cookie`). False positives (`pad_token`) only hide a value from the logs.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

# Words that are a secret wherever they appear in the key, even inside a longer word.
SECRET_SUBSTRINGS = (
    "password", "passwd", "passphrase", "secret", "credential", "authorization",
    "bearer", "cookie", "apikey", "privatekey", "accesskey", "signingkey", "sessionid",
)  # fmt: skip
# Whole words that are a secret (`max_tokens`, `author` and `tokenizer` are not).
SECRET_WORDS = frozenset({"token", "pwd", "pass", "auth", "authn", "authz", "oauth", "session", "jwt", "creds", "otp", "sid"})
# A word ending like this is one too: `hftoken`, `dbpwd`, `xauth`.
SECRET_ENDINGS = ("token", "pwd", "auth")
# Two adjacent words that together name a secret: `api key`, `private key`.
SECRET_PAIRS = frozenset({"apikey", "privatekey", "accesskey", "secretkey", "sshkey", "signingkey", "encryptionkey", "masterkey", "clientkey"})

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")
_SEPARATOR = re.compile(r"[^A-Za-z0-9]+")
# scheme://user:password@host or scheme://token@host: everything between // and @ is credentials.
_URI_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"<>]+)@")
# key=value pairs in free text whose key looks secret (overrides, query strings). Only `=`:
# "tags.hf_token: Input should be..." is a message about a field, not a value.
_KEY_VALUE = re.compile(r"(?P<key>[A-Za-z0-9_.\-]+)(?P<sep>=)(?P<value>\"[^\"]*\"|'[^']*'|[^\s&,;'\"]+)")


def key_words(key: str) -> list[str]:
    """'xApiKey2' -> ['x', 'api', 'key', '2']; 'HF-TOKEN' -> ['hf', 'token']."""
    return [w.lower() for w in _SEPARATOR.split(_CAMEL.sub(" ", key)) if w]


def is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    words = [w for w in key_words(key) if not w.isdigit()]
    if len(words) > 1 and words[-1] in ("id", "ids") and words[-2] == "token":
        words = words[:-2]  # `pad_token_id`, `eos_token_id`: a vocabulary index, not a secret
    joined = "".join(words)
    if any(part in joined for part in SECRET_SUBSTRINGS):
        return True
    if any(w in SECRET_WORDS or w.endswith(SECRET_ENDINGS) for w in words):
        return True
    return any(a + b in SECRET_PAIRS for a, b in zip(words, words[1:]))


def redact(value: Any) -> Any:
    """A copy of `value` with every secret-keyed entry of every nested dict replaced, and the
    credentials of URIs in text values removed."""
    if isinstance(value, dict):
        return {k: (REDACTED if is_secret_key(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_uri(value)
    return value


def redact_uri(text: str) -> str:
    """'http://user:pw@host:5000' -> 'http://<redacted>@host:5000' (in any text, every URI)."""
    return _URI_USERINFO.sub(lambda m: f"{m['scheme']}{REDACTED}@", text)


def redact_text(text: str) -> str:
    """Free text (a message, a command line) with URI credentials and secret-keyed `key=value`
    values replaced: `passthrough_kwargs.token=abc` -> `passthrough_kwargs.token=<redacted>`."""

    def pair(match: re.Match) -> str:
        key = match["key"].rsplit(".", 1)[-1]
        if not is_secret_key(key) or match["value"] in (REDACTED, f"'{REDACTED}'") or is_env_reference(match["value"]):
            return match[0]
        return f"{match['key']}{match['sep']}{REDACTED}"

    return _KEY_VALUE.sub(pair, redact_uri(text))


# `${NAME}`: an override value read from the environment, so the secret never travels on a
# command line or in `mlflow run`'s params (config/loader.py expands it).
ENV_REFERENCE = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}$")


def is_env_reference(value: str) -> bool:
    return bool(ENV_REFERENCE.match(value.strip().strip("'\"")))


def literal_secret_overrides(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The keys of `key=value` overrides that set a secret-looking field to a literal value
    (not a `${NAME}` reference)."""
    keys = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and any(is_secret_key(part) for part in key.strip().split(".")) and value.strip() and not is_env_reference(value):
            keys.append(key.strip())
    return keys


def check_recorded_overrides(text: str) -> None:
    """Under `mlflow run` (MLFLOW_RUN_ID): `text` is the MLproject's `overrides` parameter, which
    `mlflow run` itself stored as a run param before this process started (MLflow never changes a
    param). A literal secret there is refused (the run ends FAILED) with how to erase it, and how to
    pass it instead: `${NAME}`, read from the environment, never reaching a command line or a param."""
    import os
    import shlex

    from llem_mlflow.errors import ConfigError

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id or not text.strip():
        return
    try:
        items = shlex.split(text)
    except ValueError:
        items = text.split()
    keys = literal_secret_overrides(items)
    if keys:
        raise ConfigError(
            f"overrides: {', '.join(keys)} set a secret-looking field to a literal value, and `mlflow run` has already "
            f"stored the `overrides` parameter as a param of run {run_id} (MLflow never changes a param). "
            f"Fix: delete that run (`mlflow runs delete --run-id {run_id}`, then `mlflow gc` to erase it; change the "
            "secret if others can read this store), and pass the value from the environment instead: "
            f"-P overrides='{keys[0]}=${{NAME}}' with NAME set in the environment"
        )
