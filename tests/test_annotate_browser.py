"""The annotation app in a real browser: headless Chromium (Debian `chromium` + `chromium-driver`)
driven by Selenium against a real `ilf annotate` server. `.ci/run` installs the browser and sets
ILF_REQUIRE_BROWSER=1, so in CI a missing browser fails instead of skipping."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import time

import pytest

from annotate_case import server, surge_rows, write_queue
from ilf_jax.data.annotations import load_annotations

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1500,1250")
XSS = "The formula is wrong <script>window.__xss = 1</script><img src=x onerror=\"window.__xss = 2\"> use 7n - 5."


@pytest.fixture()
def browser(tmp_path):
    if not (CHROMIUM and DRIVER):
        if os.environ.get("ILF_REQUIRE_BROWSER"):
            pytest.fail("chromium and chromedriver are required here (apt-get install chromium chromium-driver)")
        pytest.skip("no chromium/chromedriver on this machine (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; message: {driver.find_element('id', 'message').text!r}")


def test_annotate_in_a_real_browser(tmp_path, shared_data, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    rows = surge_rows(shared_data, [641, 268])
    queue = write_queue(tmp_path / "failing.jsonl", rows)
    artifacts = pathlib.Path(os.environ.get("ILF_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    el = lambda i: browser.find_element(By.ID, i)  # noqa: E731
    with server(queue, "--annotator", "alice") as (_, base):
        browser.get(base + "/")
        program = _wait(browser, lambda: el("program").get_property("textContent"), "the failing program")
        original = rows[641]["original_model_completion"]
        assert program == original
        assert el("refinement").get_property("value") == original
        assert "AssertionError" in el("error").text
        assert "0 of 2 done" in el("progress").text
        assert el("item-title").text == "Task 641 (train), item 1 of 2"
        assert el("task-text").text == "Write a function to find the nth nonagonal number."

        el("feedback").send_keys(XSS)
        area = el("refinement")
        area.click()
        area.send_keys(Keys.CONTROL, Keys.END)
        area.send_keys("# still the triangular formula\n")
        el("run").click()
        verdict = _wait(browser, lambda: el("verdict").text not in ("not run", "") and el("verdict").text, "a verdict")
        assert verdict == "failed"
        assert "AssertionError" in el("run-error").text
        assert el("f-passed").text == "no" and el("f-kept").text == "no"

        # fix it by editing: delete the wrong expression and the comment, type the right one
        wrong = "(n*(n+1))//2\n\n# still the triangular formula\n"
        area.send_keys(Keys.CONTROL, Keys.END)
        area.send_keys(Keys.BACKSPACE * len(wrong))
        area.send_keys("n * (7 * n - 5) // 2\n")
        area.send_keys(Keys.CONTROL, Keys.ENTER)  # the Run tests shortcut
        _wait(browser, lambda: el("verdict").text == "passed", "the passing verdict")
        assert el("f-passed").text == "yes" and el("f-kept").text == "yes"
        distance = int(el("f-distance").text.split()[0])
        assert 0 < distance < len(original) / 2
        fixed = el("refinement").get_property("value")
        assert fixed.endswith("    return n * (7 * n - 5) // 2\n")

        area.send_keys(Keys.CONTROL, "s")  # the Save shortcut
        _wait(browser, lambda: "Saved version 1" in el("message").text, "the save")
        assert "1 of 2 done" in el("progress").text
        browser.save_screenshot(str(artifacts / "annotate.png"))

        browser.refresh()
        _wait(browser, lambda: el("item-status").text == "saved", "the saved item after reload")
        assert el("feedback").get_property("value") == XSS
        assert el("refinement").get_property("value") == fixed
        assert el("verdict").text == "passed"
        # stored text is shown as text, never run as HTML
        el("history-box").click()
        history = _wait(browser, lambda: el("history").text, "the history")
        assert XSS in history
        assert browser.execute_script("return window.__xss === undefined")
        assert not browser.find_elements(By.CSS_SELECTOR, "#history script, #history img, main script")

        el("export").click()
        _wait(browser, lambda: "Exported 1 annotations" in el("message").text, "the export")
        browser.save_screenshot(str(artifacts / "annotate-after-reload.png"))

    loaded = load_annotations(queue.with_name("failing.annotate") / "annotations.jsonl")
    assert [(a.task_id, a.feedback, a.refinement, a.original, a.worker_id) for a in loaded.rows] == [
        (641, XSS, fixed, original, "alice")]
    record = json.loads((queue.with_name("failing.annotate") / "annotations.jsonl").read_text())
    assert record["passed"] is True and record["result"] == "passed"
