"""The MLflow model registry: register what a run measured, link the figures to the model, resolve models:/ URIs.

- `register_run` records the benchmarked model as an external LoggedModel (a reference:
  hub id + revision, local path, or random: preset; no weights are copied), makes the run's
  figures that LoggedModel's metrics (linked to the run and its prompt set) and registers a
  version with a handful of readable tags (run, model, config hash, hardware, J/token).
- `tag_version_with_results` adds one run's figures to an existing version's LoggedModel, under
  the run's hardware key (see version_tags.py), so results on different GPUs live side by side.
- `version_results` reads them back for `tag-best` (and the hardware-keyed version tags that
  versions registered before this scheme carry).
- `resolve_registered_model` downloads a transformers-flavor version to a directory that
  `from_pretrained` loads (bench/ never imports mlflow; the runner passes the directory on).

No torch here. mlflow is imported inside functions (the CLI imports this module lazily anyway).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llem_mlflow.errors import ModelLoadError, TrackingError
from llem_mlflow.metrics_registry import ENERGY_PER_TOKEN, format_number, total_energy_note, unit
from llem_mlflow.redact import redact_uri
from llem_mlflow.tracking import version_tags as vt

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

# The version's tags: few and short, so the registry pages can show them whole.
TAG_RUN_ID = "llem.run_id"
TAG_HARDWARE = "llem.hardware"
TAG_J_PER_TOKEN = "llem.j_per_token"
# Tags of versions registered before the figures moved to the LoggedModel (still read).
TAG_MODEL_KIND = "llem.model.kind"
TAG_LOGGED_MODEL = "llem.logged_model_id"
LOGGED_MODEL_TYPE = "llem-benchmarked-reference"
# MLflow's own tag that marks a LoggedModel whose artifacts live elsewhere.
MLFLOW_MODEL_IS_EXTERNAL = "mlflow.model.isExternal"
# Histories, not results: the power timeline and each trial's figures stay on the run only.
NOT_LINKED_PREFIXES = ("timeline/", "trial/")

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))/?$")
_LOGGED_MODEL_URI = re.compile(r"^models:/(?P<model_id>m-[0-9a-f]+)/?$")


@dataclass(frozen=True)
class ModelReference:
    """Where the benchmarked weights come from, as the run configured them."""

    model: str  # hub id, local path, random:<preset> or models:/ URI
    kind: str  # "hub" | "local" | "random" | "registry"
    revision: str | None  # hub revision (None: the hub's default branch)


def model_reference(run: Run) -> ModelReference:
    model = run.data.tags.get(vt.TAG_MODEL) or run.data.params.get("model")
    if not model:
        raise TrackingError(
            f"run {run.info.run_id} has no {vt.TAG_MODEL} tag and no 'model' param: "
            "register runs made by `llem-mlflow run`"
        )
    revision = run.data.params.get("pytorch.revision")
    revision = None if revision in (None, "None") else revision
    if model.startswith("random:"):
        return ModelReference(model, "random", None)
    if model.startswith("models:/"):
        return ModelReference(model, "registry", None)
    # A path written as one (or present here) is local; anything else is a hub id.
    if model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists():
        return ModelReference(model, "local", None)
    return ModelReference(model, "hub", revision)


def register_run(
    client: MlflowClient,
    run_id: str,
    name: str,
    alias: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> ModelVersion:
    """Register the model a run benchmarked as a version of `name`; idempotent per run."""
    check_alias(alias)
    run = get_run(client, run_id)
    reference = model_reference(run)
    slug = _hardware_slug(run)
    version = find_version_for_run(client, name, run_id)
    if version is None:
        logged_model_id = _create_external_model(client, run, reference, name)
        link_results(client, run, logged_model_id)
        _ensure_registered_model(client, name)
        tags = {**_version_tags(run, slug), **(extra_tags or {})}
        version = client.create_model_version(
            name=name, source=f"models:/{logged_model_id}", run_id=run_id, tags=tags, model_id=logged_model_id
        )
    elif extra_tags:
        for key, value in extra_tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    if alias:
        set_alias(client, name, alias, version.version)
    return client.get_model_version(name, version.version)


def check_alias(alias: str | None) -> None:
    """Refuse an alias MLflow would refuse, before anything is measured, ranked or registered."""
    from llem_mlflow.aliases import alias_problem

    problem = alias_problem(alias) if alias is not None else None
    if problem:
        raise TrackingError(problem)


def set_alias(client: MlflowClient, name: str, alias: str, version: str | int) -> None:
    from mlflow.exceptions import MlflowException

    check_alias(alias)
    try:
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as exc:
        raise TrackingError(f"cannot point alias {alias!r} of {name!r} at version {version}: {exc.message}") from None


def tag_version_with_results(client: MlflowClient, name: str, version: str | int, run: Run | str) -> dict[str, str]:
    """Add the run's figures to version `version` of `name`, under the run's hardware key.

    They become metrics of the version's LoggedModel (a newer run on the same hardware replaces the
    older one as that hardware's result). A version without a LoggedModel (registered from a runs:/
    URI, or before MLflow 3) gets the hardware-keyed tags instead. Returns the tags set.
    """
    if isinstance(run, str):
        run = get_run(client, run)
    current = _get_version(client, name, version)
    model = _logged_model(client, current)
    if model is not None:
        tags = link_results(client, run, model.model_id)
        if model.source_run_id != run.info.run_id:
            from mlflow.entities import LoggedModelInput

            client.log_inputs(run.info.run_id, models=[LoggedModelInput(model.model_id)])  # the run measured it
        return tags
    tags = _hardware_results_tags(run)
    slug = _hardware_slug(run)
    for key in current.tags:
        if key.startswith(vt.hw_tag_key(slug, "")) and key not in tags:
            client.delete_model_version_tag(name, str(version), key)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return tags


def link_results(client: MlflowClient, run: Run, model_id: str) -> dict[str, str]:
    """Make the run's final figures metrics of the LoggedModel, linked to the run and its prompt set,
    and record the run as the model's result on its hardware (LoggedModel tags `llem.hw.<hw>.*`).

    Each metric is re-sent with its original timestamp and step, so the run's own history gains no
    duplicate (the store drops identical points) while the model gets the value. Returns the tags set.
    """
    from mlflow.entities import Metric

    from llem_mlflow.tracking.datasets import run_dataset

    dataset_name, dataset_digest = run_dataset(run) or (None, None)
    metrics = []
    for key in run.data.metrics:
        if key.startswith(NOT_LINKED_PREFIXES):
            continue
        last = max(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.step, m.timestamp))
        metrics.append(
            Metric(
                key, last.value, last.timestamp, last.step,
                model_id=model_id, dataset_name=dataset_name, dataset_digest=dataset_digest, run_id=run.info.run_id,
            )
        )  # fmt: skip
    client.log_batch(run.info.run_id, metrics=metrics)  # MlflowClient splits it to the store's limits
    try:
        tags = vt.hardware_tags(run.data.tags, run.info.run_id)
    except ValueError as exc:
        raise TrackingError(f"run {run.info.run_id}: {exc}") from None
    client.set_logged_model_tags(model_id, tags)
    return tags


def version_results(client: MlflowClient, version: ModelVersion) -> dict[str, vt.HardwareResult]:
    """What a version measured, per hardware key: its LoggedModel's metrics of the run recorded for
    each hardware, and (versions registered the old way) its hardware-keyed tags."""
    results = vt.parse_hardware_results(version.tags)
    model = _logged_model(client, version)
    if model is None:
        return results
    for slug, result in vt.parse_hardware_results(model.tags).items():
        latest: dict[str, Any] = {}
        for metric in model.metrics or []:
            if metric.run_id == result.run_id:
                kept = latest.get(metric.key)
                if kept is None or (metric.step, metric.timestamp) > (kept.step, kept.timestamp):
                    latest[metric.key] = metric
        result.metrics = {key: m.value for key, m in latest.items()}
        results[slug] = result  # newer than a tag of the old scheme for the same hardware
    return results


def _logged_model(client: MlflowClient, version: ModelVersion) -> Any:
    """The version's LoggedModel, or None (none recorded, or deleted since)."""
    from mlflow.exceptions import MlflowException

    model_id = logged_model_id(version)
    if model_id is None:
        return None
    try:
        return client.get_logged_model(model_id)
    except MlflowException:
        return None


def logged_model_id(version: ModelVersion) -> str | None:
    """The LoggedModel a version was registered from (its `models:/m-...` source), if any."""
    if getattr(version, "model_id", None):
        return version.model_id
    match = _LOGGED_MODEL_URI.match(version.source or "")
    return match["model_id"] if match else None


def find_version_for_run(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The version of `name` that `register_run` made from `run_id`, if any."""
    found = client.search_model_versions(f"name = '{quote(name)}' and tags.`{TAG_RUN_ID}` = '{run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def get_run(client: MlflowClient, run_id: str) -> Run:
    """The run, or a TrackingError naming the id and the store."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"run {run_id!r} not found at {redact_uri(client.tracking_uri)}: {exc.message}") from None


def search_all(search: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
    """Every result of a paged MlflowClient search (`search_runs`, `search_model_versions`), all pages."""
    out: list[Any] = []
    token = None
    while True:
        page = search(*args, page_token=token, **kwargs)
        out.extend(page)
        token = page.token
        if not token:
            return out


def quote(value: str) -> str:
    """A value for a single-quoted string in an MLflow search filter."""
    return value.replace("'", "\\'")


def _get_version(client: MlflowClient, name: str, version: str | int) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise TrackingError(f"model version {name} v{version} not found: {exc.message}") from None


def _hardware_results_tags(run: Run) -> dict[str, str]:
    try:
        return vt.results_tags(run.data.tags, run.data.metrics, run.info.run_id)
    except ValueError as exc:
        raise TrackingError(f"run {run.info.run_id}: {exc}") from None


def _hardware_slug(run: Run) -> str:
    try:
        return vt.hardware_slug(*vt.run_hardware(run.data.tags))
    except ValueError as exc:
        raise TrackingError(f"run {run.info.run_id}: {exc}") from None


def _version_tags(run: Run, slug: str) -> dict[str, str]:
    """A handful of short tags the registry pages show whole; the figures are the LoggedModel's metrics."""
    tags = {TAG_RUN_ID: run.info.run_id, vt.TAG_MODEL: model_reference(run).model, TAG_HARDWARE: slug}
    if vt.TAG_CONFIG_HASH in run.data.tags:
        tags[vt.TAG_CONFIG_HASH] = run.data.tags[vt.TAG_CONFIG_HASH]
    if ENERGY_PER_TOKEN in run.data.metrics:
        quality = total_energy_note(run.data.tags)  # what it rests on, e.g. "CPU+RAM estimated"
        text = f"{format_number(run.data.metrics[ENERGY_PER_TOKEN])} {unit(ENERGY_PER_TOKEN)}"
        tags[TAG_J_PER_TOKEN] = f"{text}, {quality}" if quality else text
    return tags


def _create_external_model(client: MlflowClient, run: Run, reference: ModelReference, name: str) -> str:
    """An external LoggedModel: MLflow tracks it, the weights stay where they are.

    Same steps as `mlflow.create_external_model`, but through `client` (that function
    uses the global tracking URI).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models.utils import get_external_mlflow_model_spec

    params = {"model": reference.model, "kind": reference.kind, "revision": reference.revision or "None"}
    if vt.TAG_CONFIG_HASH in run.data.tags:
        params["config_hash"] = run.data.tags[vt.TAG_CONFIG_HASH]
    logged = client.create_logged_model(
        experiment_id=run.info.experiment_id,
        name=name,
        source_run_id=run.info.run_id,
        tags={MLFLOW_MODEL_IS_EXTERNAL: "true", vt.TAG_MODEL: reference.model, TAG_MODEL_KIND: reference.kind},
        params=params,
        model_type=LOGGED_MODEL_TYPE,
    )
    # The registry needs an MLmodel file even for an external model; it describes, it holds no weights.
    with tempfile.TemporaryDirectory() as tmp:
        get_external_mlflow_model_spec(logged).save(str(Path(tmp, "MLmodel")))
        client.log_model_artifacts(logged.model_id, tmp)
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    client.log_outputs(run.info.run_id, [LoggedModelOutput(model_id=logged.model_id, step=0)])
    return logged.model_id


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Registered by llem-mlflow; version tags hold measured costs.")


# --- models:/ URIs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelsUri:
    name: str
    version: str | None
    alias: str | None


def parse_models_uri(uri: str) -> ModelsUri:
    match = _MODELS_URI.match(uri)
    if not match:
        raise ModelLoadError(
            f"model {uri!r} is not a registry URI: write models:/<name>/<version> (e.g. models:/my-llm/3) "
            "or models:/<name>@<alias> (e.g. models:/my-llm@champion)"
        )
    return ModelsUri(match["name"], match["version"], match["alias"])


def resolve_registered_model(
    uri: str, client: MlflowClient | None = None, dst_dir: str | Path | None = None
) -> tuple[Path, str, str]:
    """Download a transformers-flavor version; return (directory for from_pretrained, name, version).

    The directory holds the model's weights and config and its tokenizer files together.
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from llem_mlflow.tracking.store import open_client

    parsed = parse_models_uri(uri)
    client = client or open_client()
    try:
        if parsed.alias:
            version = client.get_model_version_by_alias(parsed.name, parsed.alias)
        else:
            version = client.get_model_version(parsed.name, parsed.version)
    except MlflowException as exc:
        raise ModelLoadError(
            f"model {uri!r} not found in the registry at {redact_uri(client._registry_uri)}: {exc.message}. "
            "List versions with `mlflow models` or the MLflow UI, and check MLFLOW_TRACKING_URI"
        ) from None
    if any(version.tags.get(key) for key in (TAG_RUN_ID, TAG_LOGGED_MODEL, TAG_MODEL_KIND)):
        raise ModelLoadError(
            f"model {uri!r} (version {version.version}) is a reference that llem-mlflow registered for "
            f"{version.tags.get(vt.TAG_MODEL)!r}; it holds no weights: benchmark `model: "
            f"{version.tags.get(vt.TAG_MODEL)}` instead"
        )
    dst = Path(dst_dir) if dst_dir else Path(tempfile.mkdtemp(prefix="llem-registry-"))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        root = Path(
            download_artifacts(
                artifact_uri=f"models:/{parsed.name}/{version.version}",
                dst_path=str(dst),
                tracking_uri=client.tracking_uri,
                registry_uri=client._registry_uri,
            )
        )
    except MlflowException as exc:
        raise ModelLoadError(f"cannot download {uri!r} (version {version.version}): {exc.message}") from None
    return _pretrained_dir(root, uri), parsed.name, str(version.version)


def _pretrained_dir(root: Path, uri: str) -> Path:
    """Gather model and tokenizer of a transformers-flavor download into one from_pretrained directory."""
    import yaml

    mlmodel = root / "MLmodel"
    flavors: dict[str, Any] = yaml.safe_load(mlmodel.read_text()).get("flavors", {}) if mlmodel.exists() else {}
    flavor = flavors.get("transformers")
    if flavor is None:
        raise ModelLoadError(
            f"model {uri!r} is not a transformers-flavor model (flavors: {', '.join(flavors) or 'none'}): "
            "log it with mlflow.transformers.log_model to benchmark it"
        )
    binary = flavor.get("model_binary")
    if not binary or not (root / binary).is_dir():
        source = flavor.get("source_model_name") or "the hub"
        raise ModelLoadError(
            f"model {uri!r} was logged without its weights (save_pretrained=False); "
            f"benchmark `model: {source}` directly, or log it again with save_pretrained=True"
        )
    model_dir = root / binary
    for component in flavor.get("components") or []:
        component_dir = root / "components" / component
        if component_dir.is_dir():
            for item in component_dir.iterdir():
                target = model_dir / item.name
                if item.is_file() and not target.exists():
                    shutil.copy2(item, target)
    return model_dir
