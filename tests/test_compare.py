"""compare: differing params, key metrics with units, four formats, Pareto plot, summary run (real sqlite store)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner
from mlflow_server import contract_run

from llem_mlflow import metrics_registry as registry
from llem_mlflow.cli import main as cli_main
from llem_mlflow.errors import TrackingError
from llem_mlflow.tracking import compare as cmp

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def client(module_store):
    from mlflow import MlflowClient

    return MlflowClient(module_store)


@pytest.fixture
def three_runs(client, request, tmp_path):
    """Three runs in their own experiment: batch size 1, 4, 8; the third did not measure energy."""
    name = request.node.name
    experiment_id = client.create_experiment(name, artifact_location=(tmp_path / "artifacts").as_uri())
    specs = [
        ("bs1", 1, {"energy/j_per_output_token": 0.9, "throughput/output_tokens_per_s": 50.0, "latency/ttft_ms_p50": 10.0}),
        ("bs4", 4, {"energy/j_per_output_token": 0.4, "throughput/output_tokens_per_s": 150.0, "latency/ttft_ms_p50": 25.0}),
        ("bs8", 8, {"throughput/output_tokens_per_s": 210.0, "latency/ttft_ms_p50": 40.0}),
    ]
    run_ids = [
        contract_run(client, experiment_id, run_name=run_name, metrics=metrics, overrides={"pytorch": {"batch_size": bs}})
        for run_name, bs, metrics in specs
    ]
    return name, experiment_id, run_ids


def test_pareto_front():
    points = [(50.0, 0.9), (150.0, 0.4), (100.0, 0.5), (120.0, 0.3), (150.0, 0.45)]
    # (120, 0.3) beats (100, 0.5); (150, 0.4) beats (150, 0.45); (50, 0.9) is beaten by all.
    assert sorted(cmp.pareto_front(points)) == [1, 3]
    assert cmp.pareto_front([(1.0, 1.0)]) == [0]


def test_comparison_holds_differing_params_and_present_metrics(client, three_runs):
    name, _, run_ids = three_runs
    comparison = cmp.load_comparison(client, experiment=name)
    assert [r.run_name for r in comparison.runs] == ["bs1", "bs4", "bs8"]
    assert comparison.differing_params == ["pytorch.batch_size"]  # same model, same everything else
    assert comparison.metrics == ["energy/j_per_output_token", "throughput/output_tokens_per_s", "latency/ttft_ms_p50"]
    # By id, in the order given.
    by_id = cmp.load_comparison(client, run_ids=[run_ids[2], run_ids[0]])
    assert [r.run_name for r in by_id.runs] == ["bs8", "bs1"]


def test_each_format(client, three_runs):
    name, _, run_ids = three_runs
    comparison = cmp.load_comparison(client, experiment=name)

    table = cmp.render(comparison, "table").splitlines()
    assert table[0].split() == ["run", "batch_size", "J/token", "tokens/s", "TTFT", "p50", "ms"]
    assert set(table[1]) == {"-", " "}
    assert table[2].split() == ["bs1", "1", "0.9000", "50.00", "10.00"]  # plain decimals, 4 digits
    assert table[4].split() == ["bs8", "8", "-", "210.0", "40.00"]  # not measured: "-", never 0
    assert len(table) == 5  # everything fits: no note about hidden columns

    wide = cmp.render(comparison, "table", wide=True).splitlines()
    assert wide[0].split() == [
        "run", "pytorch.batch_size", "energy/j_per_output_token", "[J/token]",
        "throughput/output_tokens_per_s", "[tokens/s]", "latency/ttft_ms_p50", "[ms]",
    ]  # fmt: skip
    assert wide[2].split() == ["bs1", "1", "0.9000", "50.00", "10.00"]

    rows = list(csv.DictReader(io.StringIO(cmp.render(comparison, "csv"))))
    assert [r["run_id"] for r in rows] == run_ids
    assert rows[1]["energy/j_per_output_token [J/token]"] == "0.4"
    assert rows[2]["energy/j_per_output_token [J/token]"] == ""
    assert rows[2]["pytorch.batch_size"] == "8"

    data = json.loads(cmp.render(comparison, "json"))
    assert data["units"]["throughput/output_tokens_per_s"] == "tokens/s"
    assert data["differing_params"] == ["pytorch.batch_size"]
    assert data["runs"][0]["metrics"]["energy/j_per_output_token"] == 0.9
    assert "energy/j_per_output_token" not in data["runs"][2]["metrics"]
    assert data["runs"][1]["params"] == {"pytorch.batch_size": "4"}

    markdown = cmp.render(comparison, "markdown").splitlines()
    assert markdown[0].startswith("| run | pytorch.batch_size | energy/j_per_output_token [J/token] |")
    assert markdown[1] == "|---|---|---|---|---|"
    assert markdown[3] == "| bs4 | 4 | 0.4000 | 150.0 | 25.00 |"

    with pytest.raises(TrackingError, match="unknown format"):
        cmp.render(comparison, "xml")


def test_default_table_fits_100_columns_and_wide_shows_everything(client, request, tmp_path):
    """Every key metric and a few differing params: about 330 characters wide in full."""
    experiment_id = client.create_experiment(request.node.name, artifact_location=(tmp_path / "a").as_uri())
    metrics = {name: 1234.5678 + i for i, name in enumerate(cmp.KEY_METRICS)}
    for i in range(3):
        overrides = {"pytorch": {"batch_size": i + 1}, "decoder": {"top_k": 10 + i}, "max_output_tokens": 16 + i}
        contract_run(client, experiment_id, run_name=f"a-rather-long-run-name-number-{i}-of-three", metrics=metrics, overrides=overrides)
    comparison = cmp.load_comparison(client, experiment=request.node.name)

    table = cmp.render(comparison, "table").splitlines()
    assert max(len(line) for line in table) <= cmp.TABLE_WIDTH
    assert table[0].split()[:2] == ["run", "top_k"]  # params shown by their last part when it is unique
    assert "J/token" in table[0] and "tokens/s" in table[0]  # the headline metrics come first
    assert table[2].startswith("a-rather-long-...mber-0-of-three ")  # names cut to 32 characters, ends kept
    assert "1235" in table[2] and "e+" not in "".join(table)
    shown = 1 + sum(head in table[0] for head in ("batch_size", "top_k", "max_output_tokens")) + sum(
        spec.column in table[0] for spec in registry.METRICS
    )
    hidden = 1 + len(comparison.differing_params) + len(comparison.metrics) - shown
    assert hidden > 0 and table[-1].startswith(f"({hidden} more column(s), --wide shows them: ")

    wide = cmp.render(comparison, "table", wide=True).splitlines()
    assert max(len(line) for line in wide) > 300
    assert all(f"{name} [" in wide[0] for name in cmp.KEY_METRICS)
    assert "a-rather-long-run-name-number-0-of-three" in wide[2]

    result = CliRunner().invoke(cli_main, ["compare", "--experiment", request.node.name, "--wide"])
    assert result.exit_code == 0 and result.output.splitlines()[0] == wide[0]


def test_plot_is_a_png_and_leaves_out_runs_missing_a_metric(client, three_runs, tmp_path):
    name, _, _ = three_runs
    comparison = cmp.load_comparison(client, experiment=name)
    path = cmp.plot_pareto(comparison, tmp_path / "out" / "pareto.png")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
    from PIL import Image  # matplotlib depends on pillow

    with Image.open(path) as image:
        image.verify()
        assert image.size == (700, 500)


def test_summary_run_holds_table_and_plot(client, three_runs, tmp_path):
    name, experiment_id, run_ids = three_runs
    comparison = cmp.load_comparison(client, experiment=name)
    summary_id = cmp.log_summary_run(client, comparison, "summary", experiment_id)
    summary = client.get_run(summary_id)
    assert summary.info.status == "FINISHED" and summary.info.experiment_id == experiment_id
    assert summary.data.tags[cmp.TAG_COMPARED_RUNS] == ",".join(run_ids)
    files = {a.path for a in client.list_artifacts(summary_id, "comparison")} | {
        a.path for a in client.list_artifacts(summary_id, "plots")
    }
    assert files == {
        "comparison/comparison.txt", "comparison/comparison.csv", "comparison/comparison.json",
        "comparison/comparison.md", "plots/pareto.png",
    }  # fmt: skip
    local = client.download_artifacts(summary_id, "plots/pareto.png", str(tmp_path))
    assert open(local, "rb").read(8) == PNG_SIGNATURE
    # A later comparison of the experiment leaves the summary run out.
    assert [r.run_id for r in cmp.load_comparison(client, experiment=name).runs] == run_ids


def test_bad_input(client, three_runs):
    with pytest.raises(TrackingError, match="either --experiment"):
        cmp.load_comparison(client)
    with pytest.raises(TrackingError, match="no experiment named 'nope'"):
        cmp.load_comparison(client, experiment="nope")
    with pytest.raises(TrackingError, match="not found"):
        cmp.load_comparison(client, run_ids=["0" * 32])


def test_cli_compare(client, three_runs, tmp_path):
    name, experiment_id, run_ids = three_runs
    runner = CliRunner()
    plot = tmp_path / "p.png"
    result = runner.invoke(
        cli_main, ["compare", "--experiment", name, "--format", "markdown", "--plot", str(plot), "--summary-run", "cmp"]
    )
    assert result.exit_code == 0, result.output
    assert "| bs8 | 8 | - | 210.0 | 40.00 |" in result.output
    assert plot.read_bytes().startswith(PNG_SIGNATURE)
    summaries = client.search_runs([experiment_id], "attributes.run_name = 'cmp'")
    assert len(summaries) == 1 and summaries[0].data.tags[cmp.TAG_SUMMARY] == "true"

    result = runner.invoke(cli_main, ["compare", *run_ids[:2], "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [r["run_name"] for r in json.loads(result.stdout)["runs"]] == ["bs1", "bs4"]

    result = runner.invoke(cli_main, ["compare", "--experiment", "missing-experiment"])
    assert result.exit_code == 2 and "missing-experiment" in result.output and "Traceback" not in result.output


def test_compare_shows_the_interval_and_what_the_energy_rests_on(client, request, tmp_path):
    """Issue 12: a run with trials shows its 95% interval; every run says whether its energy was measured."""
    experiment_id = client.create_experiment(request.node.name, artifact_location=(tmp_path / "a").as_uri())
    trials = {"energy/j_per_output_token": 0.031, "energy/j_per_output_token_ci95_low": 0.029,
              "energy/j_per_output_token_ci95_high": 0.033, "throughput/output_tokens_per_s": 50.0}  # fmt: skip
    estimated = {"llem.energy.total_quality": "estimated", "llem.energy.total_sources": "cpu+ram"}
    mixed = {"llem.energy.total_quality": "mixed: gpu measured, cpu+ram estimated", "llem.energy.total_sources": "gpu+cpu+ram"}
    contract_run(client, experiment_id, run_name="cpu", metrics=trials, tags=estimated, device_type="cpu")
    contract_run(client, experiment_id, run_name="gpu", metrics={"energy/j_per_output_token": 0.5}, tags=mixed)
    comparison = cmp.load_comparison(client, experiment=request.node.name)
    assert [r.energy_quality for r in comparison.runs] == ["CPU+RAM estimated", "GPU measured, CPU+RAM estimated"]

    table = cmp.render(comparison, "table")
    assert "0.03100 [0.02900, 0.03300]" in table and "CPU+RAM estimated" in table
    assert table.splitlines()[0].rstrip().endswith("energy quality")
    rows = list(csv.DictReader(io.StringIO(cmp.render(comparison, "csv"))))
    assert rows[0]["energy/j_per_output_token ci95_low [J/token]"] == "0.029"
    assert rows[1]["energy/j_per_output_token ci95_low [J/token]"] == ""  # one trial: no interval
    assert rows[1]["energy quality"] == "GPU measured, CPU+RAM estimated"
    runs = json.loads(cmp.render(comparison, "json"))["runs"]
    assert runs[0]["ci95"] == {"energy/j_per_output_token": [0.029, 0.033]} and runs[1]["ci95"] == {}
    assert runs[0]["energy_quality"] == "CPU+RAM estimated"
def test_pareto_labels_stay_inside_the_axes():
    """Long run names at every corner of the plot: each label is drawn within the axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = [(50.0, 0.9), (260.0, 0.9), (50.0, 0.3), (260.0, 0.3), (150.0, 0.6)]
    labels = [f"batch_size={i},preset=deterministic,long" for i in range(len(points))]
    figure = Figure(figsize=(7, 5))
    canvas = FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    cmp.label_inside(ax, labels, points)
    canvas.draw()
    box = ax.get_window_extent()
    texts = [t for t in ax.texts if t.get_text() in labels]
    assert len(texts) == len(points)
    for text in texts:
        extent = text.get_window_extent(renderer=canvas.get_renderer())
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, text.get_text()
