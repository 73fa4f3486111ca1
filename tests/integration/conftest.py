"""What several integration modules share: tiny demo NYU data prepared once (real .mat layout, real
preparation), and one finished run."""

from __future__ import annotations

import threading
import urllib.request

import pytest

from raymc.config import build_config
from raymc.data.demo import write_demo_nyu
from raymc.data.nyu_prepare import prepare_nyu
from raymc.train import run_training

# The settings of the shared finished run, which the fault tests reuse for their interrupted runs.
TINY_RUN = {
    "image_size": 32,
    "batch": 16,
    "epochs": 3,
    "num_workers": 2,
    "warmup_epochs": 0.5,
    "lr": 0.05,
    "label_smoothing": 0.1,
    "deterministic": True,
}


@pytest.fixture(scope="session")
def tiny_nyu(tmp_path_factory, ray_session) -> str:
    """A prepared Parquet folder of 96 demo frames at 48 x 64 pixels."""
    root = tmp_path_factory.mktemp("tiny_nyu")
    mat = write_demo_nyu(root / "nyu_tiny.mat", n=96, seed=1, height=48, width=64)
    prepare_nyu(mat, root / "prepared", seed=1)
    return str(root / "prepared")


class MetricsScraper(threading.Thread):
    """Scrapes the node's Prometheus export every second while a run trains, as a dashboard would."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url, self.pages, self.done = f"http://127.0.0.1:{port}/metrics", [], threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.pages.append(urllib.request.urlopen(self.url, timeout=10).read().decode())


@pytest.fixture(scope="session")
def finished_run(tiny_nyu, tmp_path_factory, ray_session):
    """One uninterrupted --deterministic run (TINY_RUN, name "tiny"): the run-folder, resume and
    metrics tests read it, and the fault tests compare their interrupted runs with it.
    Returns (config, result, the Prometheus pages scraped while it trained)."""
    config = build_config({"data": tiny_nyu, "out": str(tmp_path_factory.mktemp("runs")), "name": "tiny", **TINY_RUN})
    scraper = MetricsScraper(ray_session.nodes()[0]["MetricsExportPort"])
    scraper.start()
    try:
        result = run_training(config)
    finally:
        scraper.done.set()
        scraper.join()
    return config, result, scraper.pages
