"""/docs in a real headless Chromium that can reach no host but 127.0.0.1: Swagger UI renders every operation."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import requests
from werkzeug.serving import make_server

import api
from runner.backends import Backends
from runner.config import Settings
from runner.registry import Registry
from runner.store import Store
from tests.integration.conftest import require_service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_TIMEOUT = 20.0
# Every host name fails to resolve: a page that needed a CDN would not render.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--no-first-run",
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def docs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API (fakeredis, SQLite: the docs need neither) served by werkzeug on a free port."""
    folder = tmp_path_factory.mktemp("docs")
    store = Store(f"sqlite:///{folder}/runner.db")
    store.migrate()
    settings = Settings(data_dir=str(folder / "data"))
    app = api.create_app({"RUNNER_SETTINGS": settings, "RUNNER_REGISTRY": Registry.discover("functions"),
                          "RUNNER_BACKENDS": Backends(fakeredis.FakeRedis(), store, settings)})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    store.engine.dispose()


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    found = CHROMIUM if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists() else None
    require_service(found, "chromium and chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must not try to download a driver
    profile = tempfile.mkdtemp(prefix="runner-docs-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(PAGE_TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_swagger_ui_renders_every_operation_offline(docs_url: str) -> None:
    document = requests.get(f"{docs_url}/openapi.json", timeout=10).json()
    operations = sum(len(methods) for methods in document["paths"].values())
    with chromium() as driver:
        driver.get(f"{docs_url}/docs")
        WebDriverWait(driver, PAGE_TIMEOUT).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= operations
        )
        paths = {element.text for element in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        title = driver.find_element(By.CSS_SELECTOR, ".info .title").text
        requested = {
            json.loads(entry["message"])["message"].get("params", {}).get("request", {}).get("url", "")
            for entry in driver.get_log("performance")
        }
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert "/functions/simple_calculation/invocations" in paths and "/jobs/{job_id}/events" in paths
    assert "Async Task Runner" in title and "OAS 3.1" in title
    fetched = {url for url in requested if url.startswith("http")}
    assert fetched and all(url.startswith(docs_url) for url in fetched), fetched
    assert errors == []
