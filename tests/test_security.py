"""Security (docs/reliability.md, "Security" rows): secrets never reach MLflow, and remote code
is never trusted unless the config says so. (The basic-auth server test is in test_server.py.)
"""

from __future__ import annotations

import pytest
from helpers import artifact_bytes, artifact_paths, only_run, write_config

from llem_mlflow.config.loader import load_config
from llem_mlflow.errors import ConfigError
from llem_mlflow.launch import EXIT_BAD_INPUT, EXIT_OK, launch
from llem_mlflow.redact import REDACTED, redact

# Values that must appear nowhere in a run: under secret keys at any depth, and in the environment.
PASSTHROUGH_SECRETS = {
    "token": "sekrit-token-1",
    "hf_token": "sekrit-hf-2",
    "api_key": "sekrit-apikey-3",
    "password": "sekrit-password-4",
    "nested": {"deeper": {"Password": "sekrit-deep-5"}, "items": [{"API_KEY": "sekrit-in-list-6"}]},
}
TAG_SECRETS = {"service_token": "sekrit-tag-7"}
ENV_SECRETS = {
    "HF_TOKEN": "sekrit-env-hf-8",
    "HUGGING_FACE_HUB_TOKEN": "sekrit-env-hub-9",
    "OPENAI_API_KEY": "sekrit-env-openai-10",
    "AWS_SECRET_ACCESS_KEY": "sekrit-env-aws-11",
    "MLFLOW_TRACKING_PASSWORD": "sekrit-env-mlflow-12",
}
ALL_SECRETS = ["sekrit-token-1", "sekrit-hf-2", "sekrit-apikey-3", "sekrit-password-4", "sekrit-deep-5",
               "sekrit-in-list-6", "sekrit-tag-7", *ENV_SECRETS.values()]  # fmt: skip


def test_redact_replaces_secret_keys_at_any_depth_and_keeps_the_rest():
    data = {**PASSTHROUGH_SECRETS, "revision_note": "keep", "max_tokens": 5, "tokenizer_mode": "keep", "author": "keep"}
    out = redact(data)
    for key in ("token", "hf_token", "api_key", "password"):
        assert out[key] == REDACTED
    assert out["nested"]["deeper"]["Password"] == REDACTED
    assert out["nested"]["items"][0]["API_KEY"] == REDACTED
    assert (out["revision_note"], out["max_tokens"], out["tokenizer_mode"], out["author"]) == ("keep", 5, "keep", "keep")
    assert data["token"] == "sekrit-token-1"  # a copy: the model still gets the real value


def _scan_run(run) -> list[str]:
    """Every place in a run where a secret appears: params, tags, metric names, run name, artifact files."""
    run_id = run.info.run_id
    places = {f"param {k}": f"{k}={v}" for k, v in run.data.params.items()}
    places.update({f"tag {k}": f"{k}={v}" for k, v in run.data.tags.items()})
    places.update({f"metric {k}": k for k in run.data.metrics})
    places["run name"] = run.info.run_name or ""
    for path in artifact_paths(run_id):
        places[f"artifact {path}"] = artifact_bytes(run_id, path).decode("utf-8", errors="replace")
    return [f"{secret} in {where}" for where, text in places.items() for secret in ALL_SECRETS if secret in text]


@pytest.mark.slow
def test_secrets_never_reach_params_tags_or_artifacts(mlflow_store, tmp_path, monkeypatch, capsys):
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    # `token` is the one secret from_pretrained() takes (the other keys would reach the model's
    # __init__ and fail the load: the failed-run test below has them all, at every depth).
    cfg = write_config(tmp_path / "exp.yaml", passthrough_kwargs={"token": "sekrit-token-1"}, tags=TAG_SECRETS,
                       energy={"codecarbon": True})  # fmt: skip
    code = launch(str(cfg), quiet=True)
    assert code == EXIT_OK, capsys.readouterr().err[-3000:]
    run = only_run()
    assert run.info.status == "FINISHED"
    paths = artifact_paths(run.info.run_id)
    assert {"config/experiment.yaml", "config/resolved.json", "results.json", "codecarbon_emissions.csv"} <= set(paths)
    assert _scan_run(run) == []
    # The keys are still there, so a reader sees that a secret was passed, just not its value.
    assert REDACTED in run.data.params["passthrough_kwargs"] and REDACTED in run.data.params["tags"]
    assert run.data.tags["service_token"] == REDACTED


def test_secret_values_stay_out_of_a_failed_run_too(mlflow_store, tmp_path, monkeypatch, capsys):
    """A run that fails logs its error, config and partial results: still no secret. (It fails at the model
    load: from_pretrained() hands the unknown keys to the model's __init__.)"""
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    cfg = write_config(tmp_path / "exp.yaml", passthrough_kwargs=PASSTHROUGH_SECRETS, tags=TAG_SECRETS)
    assert launch(str(cfg), quiet=True) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    run = only_run()
    assert run.info.status == "FAILED" and "error.txt" in artifact_paths(run.info.run_id)
    assert "hf_token" in run.data.tags["llem.error"]  # the key may be named, never its value
    assert _scan_run(run) == []
    assert not [s for s in ALL_SECRETS if s in out + err]


def test_trust_remote_code_is_false_unless_set(mlflow_store, tmp_path, capsys):
    import json

    from llem_mlflow.bench.loading import from_pretrained_kwargs

    # Unset: we pass nothing, so transformers' default (False) applies ...
    unset = load_config(write_config(tmp_path / "a.yaml"))
    assert unset.pytorch.trust_remote_code is None
    assert "trust_remote_code" not in from_pretrained_kwargs(unset, "cpu")
    # ... set: passed exactly as written.
    on = load_config(write_config(tmp_path / "b.yaml", pytorch={"trust_remote_code": True}))
    assert from_pretrained_kwargs(on, "cpu")["trust_remote_code"] is True
    # It cannot be slipped in through passthrough_kwargs, at any case of spelling the config knows.
    with pytest.raises(ConfigError, match="trust_remote_code"):
        load_config(write_config(tmp_path / "c.yaml", passthrough_kwargs={"trust_remote_code": True}))
    # And a real run records what reached from_pretrained: no trust_remote_code at all.
    assert launch(str(tmp_path / "a.yaml"), quiet=True) == EXIT_OK, capsys.readouterr().err[-3000:]
    run = only_run()
    resolved = json.loads(artifact_bytes(run.info.run_id, "config/resolved.json"))
    kwargs = resolved["from_pretrained"]["from_pretrained_kwargs"]
    assert kwargs.get("trust_remote_code", False) is False
    assert run.data.params["pytorch.trust_remote_code"] == "None"


def test_config_errors_do_not_echo_secret_values(tmp_path):
    """A wrongly typed value under a secret key is refused without printing it (under `mlflow run`
    the message becomes the run's llem.error tag)."""
    path = tmp_path / "exp.yaml"
    path.write_text("model: random:tiny\ntags:\n  hf_token: [sekrit-token-1]\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "tags.hf_token" in str(error.value)
    assert "sekrit-token-1" not in str(error.value)


# --- secret-looking keys: names the rules were not written from --------------------------------
# Secret names as words; the test renders each in many spellings (case, separators, prefixes,
# suffixes) that the rules in redact.py never list.
SECRET_NAMES = [
    ["authorization"], ["proxy", "authorization"], ["x", "api", "key"], ["private", "key"], ["pwd"], ["db", "pwd"],
    ["passphrase"], ["ssh", "passphrase"], ["credentials"], ["gcp", "credentials", "json"], ["bearer"], ["bearer", "token"],
    ["cookie"], ["set", "cookie"], ["session"], ["session", "id"], ["session", "token"], ["hf", "token"], ["access", "token"],
    ["refresh", "token"], ["client", "secret"], ["aws", "secret", "access", "key"], ["api", "key"], ["secret", "key"],
    ["password"], ["db", "password"], ["auth"], ["oauth", "token"], ["jwt"], ["signing", "key"],
]  # fmt: skip
# Settings that must keep their values: a rule that redacts everything would pass the test above.
ORDINARY_NAMES = [
    ["max", "new", "tokens"], ["tokenizer", "mode"], ["author"], ["revision"], ["pad", "token", "id"], ["use", "cache"],
    ["low", "cpu", "mem", "usage"], ["bypass", "cache"], ["tokens", "per", "second"], ["keyword", "count"],
    ["passthrough"], ["attn", "implementation"], ["compass", "heading"], ["author", "name"], ["device", "map"],
]  # fmt: skip


def _spellings(words: list[str]) -> list[str]:
    camel = words[0] + "".join(w.title() for w in words[1:])
    return [
        "_".join(words), "-".join(words), ".".join(words), " ".join(words), "".join(words), camel, camel[0].upper() + camel[1:],
        "_".join(words).upper(), "-".join(w.title() for w in words),
    ]  # fmt: skip


def _variants(words: list[str]) -> list[str]:
    out = []
    for spelled in _spellings(words):
        out += [spelled, f"my_{spelled}", f"X-{spelled}", f"upstream.{spelled}", f"{spelled}_value", f"{spelled}2", f"{spelled}-b64"]
    return out


@pytest.mark.parametrize("words", SECRET_NAMES, ids="_".join)
def test_secret_names_are_redacted_in_every_spelling(words):
    from llem_mlflow.redact import is_secret_key

    missed = [name for name in _variants(words) if not is_secret_key(name)]
    assert missed == []
    assert redact({name: "v" for name in _variants(words)}) == {name: REDACTED for name in _variants(words)}


@pytest.mark.parametrize("words", ORDINARY_NAMES, ids="_".join)
def test_ordinary_names_keep_their_values_in_every_spelling(words):
    from llem_mlflow.redact import is_secret_key

    flagged = [name for name in _spellings(words) if is_secret_key(name)]
    assert flagged == []


def test_uri_credentials_and_secret_assignments_are_removed_from_text():
    from llem_mlflow.redact import is_secret_key, literal_secret_overrides, redact_text, redact_uri

    assert redact_uri("http://alice:pw@host:5000/x") == "http://<redacted>@host:5000/x"
    assert redact_uri("https://tok3n@example.org") == "https://<redacted>@example.org"
    assert redact_uri("sqlite:///tmp/mlflow.db") == "sqlite:///tmp/mlflow.db"  # nothing to hide: unchanged
    message = "API request to https://bob:s3cr3t@srv/api failed; overrides passthrough_kwargs.token=abc decoder.top_p=0.9"
    assert redact_text(message) == (
        "API request to https://<redacted>@srv/api failed; overrides passthrough_kwargs.token=<redacted> decoder.top_p=0.9"
    )
    assert redact_text("tags.hf_token: Input should be a valid string") == "tags.hf_token: Input should be a valid string"
    # A bare "pass" counts only as a word of its own: joined ("smtppass") it cannot be told from "bypass".
    assert is_secret_key("smtp_pass") and is_secret_key("smtpPass") and not is_secret_key("bypass")
    assert literal_secret_overrides(["tags.Api-Key=x", "tags.api_key=${KEY}", "a.b=1", "passthrough_kwargs.HFToken=y"]) == [
        "tags.Api-Key", "passthrough_kwargs.HFToken",
    ]  # fmt: skip


def test_an_override_can_read_its_value_from_the_environment(tmp_path, monkeypatch):
    path = write_config(tmp_path / "exp.yaml")
    monkeypatch.setenv("LLEM_TEST_TOKEN", "sekrit-from-env")
    cfg = load_config(path, ["passthrough_kwargs.token=${LLEM_TEST_TOKEN}", "tags.note=${LLEM_TEST_TOKEN}"])
    assert cfg.passthrough_kwargs["token"] == cfg.tags["note"] == "sekrit-from-env"
    monkeypatch.delenv("LLEM_TEST_TOKEN")
    with pytest.raises(ConfigError, match=r"LLEM_TEST_TOKEN is not set") as error:
        load_config(path, ["passthrough_kwargs.token=${LLEM_TEST_TOKEN}"])
    assert "passthrough_kwargs.token" in str(error.value)


NEW_NAME_SECRETS = {
    "Proxy-Authorization": "sekrit-new-1", "xApiKey": "sekrit-new-2", "SSH_PRIVATE_KEY": "sekrit-new-3",
    "db.pwd": "sekrit-new-4", "vault-passphrase": "sekrit-new-5", "gcpCredentialsJson": "sekrit-new-6",
    "BearerToken": "sekrit-new-7", "session_cookie": "sekrit-new-8", "SessionId2": "sekrit-new-9",
}  # fmt: skip


def test_new_secret_names_never_reach_a_run(mlflow_store, tmp_path, capsys):
    """Tags under names the old rules missed (Authorization, x-api-key, private_key, pwd, ...), spelled
    as users spell them: a finished run holds the keys, never the values; nor does the terminal."""
    cfg = write_config(tmp_path / "exp.yaml", tags=NEW_NAME_SECRETS)
    assert launch(str(cfg), quiet=True) == EXIT_OK, capsys.readouterr().err[-3000:]
    out, err = capsys.readouterr()
    run = only_run()
    leaks = [f"{secret} in {where}" for where, secret in _places(run) if secret in NEW_NAME_SECRETS.values()]
    assert leaks == []
    assert not [s for s in NEW_NAME_SECRETS.values() if s in out + err]
    assert all(run.data.tags[key] == REDACTED for key in NEW_NAME_SECRETS)


def _places(run):
    """(where, secret) for every secret of NEW_NAME_SECRETS found in the run."""
    run_id = run.info.run_id
    texts = {f"param {k}": f"{k}={v}" for k, v in run.data.params.items()}
    texts.update({f"tag {k}": f"{k}={v}" for k, v in run.data.tags.items()})
    for path in artifact_paths(run_id):
        texts[f"artifact {path}"] = artifact_bytes(run_id, path).decode("utf-8", errors="replace")
    return [(where, s) for where, text in texts.items() for s in NEW_NAME_SECRETS.values() if s in text]
