"""/docs in a real headless Chromium that can reach no host but 127.0.0.1: Swagger UI renders every operation."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Stack

pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.integration.browser import PAGE_TIMEOUT, chromium  # noqa: E402


def test_swagger_ui_renders_every_operation_offline(sqlite_stack: Stack) -> None:
    document = sqlite_stack.get("/openapi.json").json()
    operations = sum(len(methods) for methods in document["paths"].values())
    with chromium() as driver:
        driver.get(f"{sqlite_stack.url}/docs")
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
    assert fetched and all(url.startswith(sqlite_stack.url) for url in fetched), fetched
    assert errors == []
