"""Re-make the MLflow UI screenshots in docs/images from a real server and a real browser.

    apt-get install -y chromium            # Debian's headless Chromium (or set CHROMIUM=/path)
    python docs/make_screenshots.py        # about three minutes on a laptop CPU

It starts `mlflow server` on 127.0.0.1 with a fresh store in a temporary folder, runs two
small CPU benchmarks into it (`llem-mlflow run`, the second registered as `tiny-llm`), and
drives headless Chromium over its DevTools protocol (aiohttp, which MLflow installs) to take:

    docs/images/run-page.png        the run page: tags, dataset, headline metrics first
    docs/images/model-version.png   the model version page: a handful of short tags
    docs/images/logged-model.png    the version's source model: the figures as metrics
    docs/images/compare-runs.png    two runs compared: parallel coordinates on J/token

Pages open in MLflow's classic "Model training" view (`?workflowType=machine_learning`, what
the links llem-mlflow prints carry) with the assistant panel closed. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
WIDTH = 1280
WAIT_S = 60  # per page: the UI loads its chunks and data, then renders
VIEW = "workflowType=machine_learning"
# The browser's own UI state that MLflow 3.17 keeps in localStorage: no assistant panel.
LOCAL_STORAGE = {"mlflow.assistant.panelOpen_v1": "false", "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}

CONFIG = """\
model: random:tiny
max_input_tokens: 64
max_output_tokens: 16
dataset: {source: builtin, n: 16}
decoder: {preset: deterministic, min_new_tokens: 16}
warmup: {n_batches: 1}
baseline: {enabled: false}
"""


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from mlflow_server import running_mlflow_server  # the tests' real-server helper

    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("no chromium found: apt-get install -y chromium, or set CHROMIUM=/path/to/chrome")
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llem-screenshots-") as tmp, running_mlflow_server(Path(tmp)) as uri:
        pages = make_runs(Path(tmp), uri)
        asyncio.run(shoot(chromium, uri, pages, Path(tmp) / "profile"))
    for name, _, _, _ in pages:
        print(f"{IMAGES / name}: {(IMAGES / name).stat().st_size // 1024} KiB")


def make_runs(tmp: Path, uri: str) -> list[tuple[str, str, str, tuple[int, int]]]:
    """Two benchmarks (batch size 2 and 4), the second registered. Returns (file, page, text to wait for, size)."""
    from mlflow import MlflowClient

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    llem = [sys.executable, "-m", "llem_mlflow"]
    for batch_size in (2, 4):
        config = tmp / f"tiny-batch-{batch_size}.yaml"
        config.write_text(CONFIG + f"pytorch: {{batch_size: {batch_size}}}\n")
        subprocess.run([*llem, "run", str(config), "--experiment-name", "quickstart", "--quiet"], env=env, check=True, timeout=900)
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("quickstart").experiment_id
    runs = client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    run_ids = [r.info.run_id for r in runs]
    register = [*llem, "register", run_ids[1], "--name", "tiny-llm", "--alias", "candidate"]
    subprocess.run(register, env=env, check=True, timeout=300)
    version = client.get_model_version("tiny-llm", "1")
    model_id = version.source.removeprefix("models:/")
    compare = f"#/compare-runs?runs={quote(json.dumps(run_ids))}&experiments={quote(json.dumps([experiment_id]))}&{VIEW}"
    return [
        ("run-page.png", f"#/experiments/{experiment_id}/runs/{run_ids[1]}?{VIEW}", "Metrics (", (WIDTH, 1180)),
        ("model-version.png", f"#/models/tiny-llm/versions/1?{VIEW}", "llem.j_per_token", (WIDTH, 760)),
        ("logged-model.png", f"#/experiments/{experiment_id}/models/{model_id}?{VIEW}", "Metrics (", (WIDTH, 1000)),
        ("compare-runs.png", compare, "Parallel Coordinates Plot", (WIDTH, 640)),
    ]


async def shoot(chromium: str, uri: str, pages: list, profile: Path) -> None:
    import aiohttp

    browser = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-port=0",
         "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port = await _devtools_port(profile / "DevToolsActivePort")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json") as response:
                target = next(t for t in await response.json() if t["type"] == "page")
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = _Page(ws)
                await page.call("Page.enable")
                await page.open(f"{uri}/")  # the UI once, so that its first-visit state is written
                await page.wait_for_text("Experiments")
                settings = ";".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)})" for k, v in LOCAL_STORAGE.items())
                for name, path, wait_for, (width, height) in pages:
                    await page.eval(settings)
                    await page.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
                    await page.open("about:blank")  # a full load next: the UI reads its settings when it starts
                    await page.open(f"{uri}/{path}")
                    await page.wait_for_text(wait_for)
                    shot = await page.call("Page.captureScreenshot", format="png")
                    (IMAGES / name).write_bytes(base64.b64decode(shot["data"]))
    finally:
        browser.terminate()
        browser.wait(timeout=30)


async def _devtools_port(path: Path) -> str:
    for _ in range(300):  # bounded: 30 s
        if path.exists() and path.read_text().strip():
            return path.read_text().split()[0]
        await asyncio.sleep(0.1)
    raise RuntimeError("chromium did not open its DevTools port")


class _Page:
    """The few DevTools protocol calls the screenshots need."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:  # events arrive in between; bounded by the socket's own end
            message = await self.ws.receive_json()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    async def eval(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def open(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await asyncio.sleep(1)

    async def wait_for_text(self, text: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            body = await self.eval("document.body ? document.body.innerText : ''") or ""
            if text in body:
                await asyncio.sleep(3)  # charts and tables finish drawing
                return
            await asyncio.sleep(1)
        raise RuntimeError(f"the page never showed {text!r}")


if __name__ == "__main__":
    main()
