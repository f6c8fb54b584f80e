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
