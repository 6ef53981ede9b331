"""The MLflow UI in a real browser: a real `mlflow server` on loopback over a finished sweep,
opened in headless Chromium (Debian's `chromium` package). CI installs Chromium and sets
BNSEARCH_REQUIRE_BROWSER=1, so there the test fails rather than skips when it is missing."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def server(finished_sweep, free_port):
    if CHROMIUM is None:
        if os.environ.get("BNSEARCH_REQUIRE_BROWSER"):
            pytest.fail("chromium is required (BNSEARCH_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    _, _, uri = finished_sweep
    port = free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,  # its own process group
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).read() == b"OK":
                    break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError("mlflow server did not come up") from None
                time.sleep(1)
        yield url, MlflowClient(uri)
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server's workers and job consumers too
        process.wait(timeout=30)


def page_text(url: str, *extra: str) -> str:
    """The page as the browser renders it, JavaScript run, tags stripped."""
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
         "--virtual-time-budget=20000", *extra, "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", out.stdout))


def test_the_ui_shows_the_sweep_its_nested_trials_and_the_report(server, tmp_path):
    url, client = server
    experiment = client.get_experiment_by_name("tiny_mlp")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("role") == "sweep")
    child = next(r for r in runs if r.data.tags.get("phase") == "replicate")
    runs_page = f"{url}/#/experiments/{experiment.experiment_id}/runs"

    text = page_text(runs_page)
    assert parent.info.run_name in text
    assert f"{len(runs)} matching runs" in text  # the parent row, its trials nested under it

    text = page_text(f"{runs_page}/{child.info.run_id}")
    assert f"Parent run {parent.info.run_name}" in text and child.info.run_name in text and "test_accuracy" in text

    # The verdicts and each arm's aggregate over its seeds, on the parent run's own page.
    text = page_text(f"{runs_page}/{parent.info.run_id}")
    verdict = parent.data.tags["verdict/before vs none"].split(":")[0]
    mean = parent.data.metrics["arm/before/mean"]
    assert f"before vs none (difference): {verdict}" in text and "| before |" not in text  # rendered, not raw Markdown
    assert f"{mean:.2f}" in text and "95% CI (seeds + test set)" in text

    text = page_text(f"{runs_page}/{parent.info.run_id}/artifacts")
    assert all(name in text for name in ("report.md", "report.html", "results.parquet", "spec.json"))

    screenshot = tmp_path / "mlflow-runs.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900",
                    "--virtual-time-budget=20000", f"--screenshot={screenshot}", runs_page], capture_output=True, timeout=120)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000
    print(f"screenshot: {screenshot}")
