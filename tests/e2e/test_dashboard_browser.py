"""The dashboard in headless Chromium against a real `textclf serve`: every page loads and draws (learning
curves, confusion-matrix heatmap, per-class table, aliases, Swagger UI, a sweep's leaderboard and overlaid curves),
a typed sentence is classified (in English and in Chinese, whose glyphs must render), and a screenshot of each
page is saved under tests/artifacts/screenshots/ (TEST_ARTIFACT_DIR overrides the folder)."""

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, chinese_dataset_csv, start_serve, upload_tiny, wait_job
from tests.tiny_bert import build_tiny_bert, zip_folder

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                 reason="Debian's chromium and chromium-driver are missing (.ci/run installs them)")]

SHOTS = Path(os.environ.get("TEST_ARTIFACT_DIR", ROOT / "tests" / "artifacts")) / "screenshots"
EPOCHS = 4


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--window-size=1400,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP violations included
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_count(driver, css: str, at_least: int = 1, timeout: float = 30) -> list:
    """The elements matching `css` once there are at least `at_least` of them (bounded wait)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, css)) >= at_least)
    return driver.find_elements(By.CSS_SELECTOR, css)


def screenshot(driver, name: str) -> Path:
    """A full-page PNG (beyond the window's height), saved as an artifact; its path is printed."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")
    return path


def text_of(driver, css: str) -> str | None:
    """The text of the first match, read in one script call: a page that redraws as it polls replaces its
    elements, so a handle found a moment earlier may be gone by the time its text is asked for."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e && e.textContent;", css)


def assert_no_console_errors(driver) -> None:
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_dashboard_pages_in_chromium(tmp_path, processes, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, _ = start_serve(tmp_path, processes)
    dataset_id = upload_tiny(base)
    job = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset_id, "epochs": EPOCHS, "batch_size": 8,
                                                 "test_split": 0.2}, timeout=30).json()
    shots = []

    # jobs: the row appears, then turns `succeeded` without a reload (the page polls)
    browser.get(f"{base}/")
    row = f'#jobs tr[data-job="{job["id"]}"]'
    wait_count(browser, row)
    # text_of: the table redraws as it polls, so an element handle may be gone before its text is read
    WebDriverWait(browser, 240, poll_frequency=0.5).until(lambda d: text_of(d, f"{row} .badge") == "succeeded")
    shots.append(screenshot(browser, "jobs"))
    assert_no_console_errors(browser)
    done = requests.get(f"{base}/v1/jobs/{job['id']}", timeout=10).json()
    model_id = done["model_id"]
    # val acc is the served model's (metrics), the figure the job page shows too, not the network's last epoch
    listed = text_of(browser, f"{row} td.val-acc")
    assert listed == f"{done['metrics']['val_accuracy']:.3f}"

    # job page: three charts (loss: train + val; accuracy: train, val, macro-F1; lr), a dot per epoch per line
    browser.get(f"{base}/jobs/{job['id']}")
    assert len(wait_count(browser, "#curves svg.chart path.series", 6)) == 6
    assert len(browser.find_elements(By.CSS_SELECTOR, "#curves svg.chart circle.dot")) == 6 * EPOCHS
    # the curves are the network's per epoch; a ring marks the served model's val accuracy at its best epoch
    accuracy = '#curves figure[data-chart="accuracy"]'
    assert "the network's" in text_of(browser, f"{accuracy} figcaption")
    rings = browser.find_elements(By.CSS_SELECTOR, f"{accuracy} circle.served")
    assert [float(r.get_attribute("data-value")) for r in rings] == [done["metrics"]["val_accuracy"]]
    assert f"epoch {done['metrics']['best_epoch']}:" in rings[0].find_element(By.TAG_NAME, "title").get_attribute(
        "textContent")
    shown = browser.execute_script(
        "return [...document.querySelectorAll('dl.facts dt')].find((dt) => dt.textContent === 'val accuracy')"
        ".nextElementSibling.textContent;")
    assert shown == listed
    # the confusion matrix: 2 x 2 cells whose counts add up to the validation split; per-class rows
    cells = wait_count(browser, "#evaluation svg.heatmap rect.cell", 4)
    assert len(cells) == 4
    evaluation = requests.get(f"{base}/v1/models/{model_id}/evaluation", timeout=10).json()
    assert sum(int(c.get_attribute("data-count")) for c in cells) == evaluation["validation"]["examples"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#per-class tbody tr")) == 2
    # the default model is a blend: the facts say what each half scored alone
    facts = browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert "val accuracy, network alone" in facts and "val accuracy, TF-IDF alone" in facts
    weight = browser.execute_script(
        "return [...document.querySelectorAll('dl.facts dt')].find((dt) => dt.textContent === "
        "'TF-IDF weight in the blend').nextElementSibling.textContent;")
    assert weight == str(done["metrics"]["tfidf_weight"])  # chosen on validation (the default), not refit
    shots.append(screenshot(browser, "job"))
    browser.find_element(By.CSS_SELECTOR, '#evaluation button[data-split="test"]').click()
    cells = wait_count(browser, "#evaluation svg.heatmap rect.cell", 4)
    assert sum(int(c.get_attribute("data-count")) for c in cells) == evaluation["test"]["examples"]
    assert_no_console_errors(browser)

    # models: the model is listed; point the `default` alias at it through the form
    browser.get(f"{base}/models")
    wait_count(browser, f'#models tr[data-model="{model_id}"]')
    browser.find_element(By.ID, "alias-name").send_keys("default")
    browser.find_element(By.CSS_SELECTOR, "#alias-form button").click()
    chips = wait_count(browser, "#aliases .chip")
    assert [c.text for c in chips] == ["default"]
    assert [a["name"] for a in requests.get(f"{base}/v1/aliases", timeout=10).json()["items"]] == ["default"]
    shots.append(screenshot(browser, "models"))
    assert_no_console_errors(browser)

    # try it: type two sentences, classify, one label each
    browser.get(f"{base}/try")
    wait_count(browser, '#try-model option[value^="alias:"]')
    browser.find_element(By.ID, "try-text").send_keys("the striker scored a late goal\nstir the sauce over low heat")
    browser.find_element(By.CSS_SELECTOR, "#try-form button[type=submit]").click()
    labels = wait_count(browser, "#try-results .prediction .label", 2)
    assert [label.text for label in labels] == ["sports", "cooking"]
    shots.append(screenshot(browser, "try"))
    assert_no_console_errors(browser)

    # API docs: Swagger UI from the package's files draws every operation of /openapi.json
    paths = requests.get(f"{base}/openapi.json", timeout=10).json()["paths"]
    operations = sum(method in {"get", "post", "put", "patch", "delete"} for item in paths.values() for method in item)
    browser.get(f"{base}/docs")
    assert len(wait_count(browser, ".opblock", operations)) == operations
    shots.append(screenshot(browser, "docs"))
    assert_no_console_errors(browser)

    # an encoder's job page names its base model and the sha256 its weights were checked against
    zipped = zip_folder(build_tiny_bert(tmp_path / "tiny-bert"))
    resp = requests.post(f"{base}/v1/base-models", files={"file": ("tiny-bert.zip", zipped)}, timeout=60)
    assert resp.status_code == 201, resp.text
    encoder_job = requests.post(f"{base}/v1/jobs", json={"dataset_id": dataset_id, "preset": "accurate",
                                                         "epochs": 2, "batch_size": 8}, timeout=30).json()
    browser.get(f"{base}/jobs/{encoder_job['id']}")
    WebDriverWait(browser, 240, poll_frequency=0.5).until(
        lambda d: (text_of(d, "dl.facts dd .badge") or "") == "succeeded")
    done = requests.get(f"{base}/v1/jobs/{encoder_job['id']}", timeout=10).json()
    shown = browser.execute_script(
        "const dd = [...document.querySelectorAll('dl.facts dt')].find((dt) => dt.textContent === 'base model')"
        ".nextElementSibling; return [dd.textContent, dd.firstElementChild.title];")
    sha = done["metrics"]["base_model"]["sha256"]
    assert shown == [f"tiny-bert {sha[:12]}", f"sha256 {sha}"]
    shots.append(screenshot(browser, "encoder-job"))
    assert_no_console_errors(browser)

    for path in shots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


SWEEP_EPOCHS = 3
OPTIMIZERS = ["sgd", "momentum", "adam"]


def test_sweep_pages_in_chromium(tmp_path, processes, browser):
    """A grid of three optimizers: the leaderboard and one curve per child, live until the end; promote refused
    while no child has a model, then done through the form. The page's screenshot is the README's picture."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, _ = start_serve(tmp_path, processes)
    dataset_id = upload_tiny(base)
    reply = requests.post(f"{base}/v1/sweeps", timeout=30, json={
        "dataset_id": dataset_id, "name": "tiny-optimizers", "grid": {"optimizer.name": OPTIMIZERS},
        "base": {"epochs": SWEEP_EPOCHS, "batch_size": 8, "test_split": 0.2}})
    assert reply.status_code == 202, reply.text
    sweep_id = reply.json()["id"]
    page = f"{base}/sweeps/{sweep_id}"

    # while it runs: every child is listed at once, Cancel is offered, and promoting is refused with the API's reason
    browser.get(page)
    assert len(wait_count(browser, "#leaderboard tbody tr", len(OPTIMIZERS))) == len(OPTIMIZERS)
    assert browser.find_element(By.ID, "sweep-cancel").is_displayed()
    # Training a child (a fresh process importing torch, epochs, ONNX export) takes seconds; the refusal takes ms.
    assert requests.get(f"{base}/v1/sweeps/{sweep_id}?history=false", timeout=10).json()["best"] is None
    browser.find_element(By.ID, "promote-alias").send_keys("prod")
    browser.find_element(By.CSS_SELECTOR, "#promote-form button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda d: "(HTTP 409, conflict)" in (text_of(d, "#notice") or ""))
    assert "error" in browser.find_element(By.ID, "notice").get_attribute("class")
    # The refused request is the only console error Chromium logs (as a failed resource load).
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors and all("/promote" in e and "409" in e for e in errors), errors

    # the list: the row turns `succeeded` without a reload, with the best child's metric
    browser.get(f"{base}/sweeps")
    row = f'#sweeps tr[data-sweep="{sweep_id}"]'
    wait_count(browser, row)
    WebDriverWait(browser, 600, poll_frequency=1).until(lambda d: text_of(d, f"{row} .badge") == "succeeded")
    sweep = requests.get(f"{base}/v1/sweeps/{sweep_id}", timeout=10).json()
    best = sweep["best"]
    assert f"{best['val_macro_f1']:.3f}" in text_of(browser, f"{row} td.best")
    assert "tiny-optimizers" in text_of(browser, row)
    shots = [screenshot(browser, "sweeps")]
    assert_no_console_errors(browser)

    # the sweep page once it ended: the leaderboard in rank order, one line per child in each chart
    browser.get(page)
    rows = wait_count(browser, '#leaderboard tbody tr[data-status="succeeded"]', len(OPTIMIZERS))
    ranked = sorted(sweep["children"], key=lambda c: c["rank"])
    assert [r.get_attribute("data-child") for r in rows] == [str(c["index"]) for c in ranked]
    assert rows[0].find_elements(By.CSS_SELECTOR, "td")[0].text == "1"
    assert f"optimizer.name={ranked[0]['params']['optimizer.name']}" in rows[0].text
    assert f"{ranked[0]['val_macro_f1']:.3f}" in rows[0].find_element(By.CSS_SELECTOR, "td.metric").text
    metric = '#sweep-curves figure[data-chart="metric"]'
    loss = '#sweep-curves figure[data-chart="loss"]'
    lines = wait_count(browser, f"{metric} path.series", len(OPTIMIZERS))
    assert len(lines) == len(OPTIMIZERS)
    # the lines are the network's per epoch; a ring per child marks its served model's figure, the leaderboard's
    assert "the network's" in text_of(browser, f"{metric} figcaption")
    assert "the network's" in text_of(browser, f"{loss} figcaption")
    rings = browser.find_elements(By.CSS_SELECTOR, f"{metric} circle.served")
    assert (sorted(float(r.get_attribute("data-value")) for r in rings)
            == sorted(c["val_macro_f1"] for c in sweep["children"]))
    assert len(browser.find_elements(By.CSS_SELECTOR, f"{metric} circle.dot")) == len(OPTIMIZERS) * SWEEP_EPOCHS
    # loss: train (dashed) and validation per child, in the child's colour
    assert len(browser.find_elements(By.CSS_SELECTOR, f"{loss} path.series")) == 2 * len(OPTIMIZERS)
    assert len(browser.find_elements(By.CSS_SELECTOR, f"{loss} path.series.dashed")) == len(OPTIMIZERS)
    colours = {line.value_of_css_property("stroke") for line in lines}
    assert len(colours) == len(OPTIMIZERS)
    legend = [key.text for key in browser.find_elements(By.CSS_SELECTOR, "#sweep-legend .key")]
    assert legend == [f"#{i} optimizer.name={name}" for i, name in enumerate(OPTIMIZERS)]
    assert not browser.find_element(By.ID, "sweep-cancel").is_displayed()

    # promote through the form: the alias now serves the best child's model
    browser.find_element(By.ID, "promote-alias").send_keys("prod")
    browser.find_element(By.CSS_SELECTOR, "#promote-form button[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda d: "Alias prod now points" in (text_of(d, "#notice") or ""))
    aliases = requests.get(f"{base}/v1/aliases", timeout=10).json()["items"]
    assert [(a["name"], a["model_id"]) for a in aliases] == [("prod", best["model_id"])]
    shots.append(screenshot(browser, "sweep"))
    assert_no_console_errors(browser)

    for path in shots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    # The README shows this page: refresh its copy on request only, so a test run leaves the checkout clean.
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        shutil.copyfile(shots[-1], ROOT / "docs" / "dashboard-sweep.png")


# Two different characters drawn in the page's font: the same pixels means both are the missing-glyph box.
GLYPHS_DIFFER = """
const draw = (ch) => {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 48;
  const g = canvas.getContext("2d");
  g.font = "40px " + getComputedStyle(document.body).fontFamily;
  g.fillText(ch, 2, 40);
  return canvas.toDataURL();
};
return draw(arguments[0]) !== draw(arguments[1]);
"""


def test_chinese_dataset_and_model_in_chromium(tmp_path, processes, browser):
    """A Chinese dataset (Chinese labels, the tokenizer left to `auto`): the job page draws its curves and the
    evaluation with the labels, and the try-it box classifies typed Chinese text. Chromium must have a CJK font
    (.ci/run installs one): without it every character is the same empty box, which the canvas check catches."""
    from selenium.webdriver.common.by import By

    base, _, _ = start_serve(tmp_path, processes)
    up = requests.post(f"{base}/v1/datasets", files={"file": ("体育与美食.csv", chinese_dataset_csv())},
                       data={"name": "体育与美食"}, timeout=30)
    assert up.status_code == 201, up.text
    assert up.json()["scripts"]["Han"] > 0.9
    created = requests.post(f"{base}/v1/jobs", timeout=30, json={
        "dataset_id": up.json()["id"], "name": "体育还是美食", "epochs": EPOCHS, "batch_size": 8})
    assert created.status_code == 202, created.text
    assert created.json()["spec"]["tokenizer"]["kind"] == "char"
    job = wait_job(base, created.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job
    model_id = job["model_id"]

    # job page: the curves, the confusion matrix and per-class table under the Chinese labels
    browser.get(f"{base}/jobs/{job['id']}")
    assert len(wait_count(browser, "#curves svg.chart path.series", 6)) == 6
    wait_count(browser, "#evaluation svg.heatmap rect.cell", 4)
    rows = wait_count(browser, "#per-class tbody tr", 2)
    assert sorted(r.find_element(By.CSS_SELECTOR, "td").text for r in rows) == ["体育", "美食"]
    assert browser.execute_script(GLYPHS_DIFFER, "体", "育"), \
        "Chromium draws CJK characters as empty boxes: install a CJK font (fonts-wqy-zenhei, as .ci/run does)"
    # the resolved spec, opened: `auto` became `char`
    browser.find_element(By.CSS_SELECTOR, "details > summary").click()
    shown = json.loads(text_of(browser, "pre.spec"))
    assert shown["tokenizer"]["kind"] == "char" and shown["name"] == "体育还是美食"
    shots = [screenshot(browser, "job-zh")]
    assert_no_console_errors(browser)

    # try it: two typed Chinese sentences, one label each, the API's
    texts = ["守门员在比赛最后一分钟扑出了点球", "这家店的小笼包和饺子非常好吃"]
    expected = [p["label"] for p in requests.post(f"{base}/v1/models/{model_id}/predict", json={"texts": texts},
                                                  timeout=30).json()["predictions"]]
    assert expected == ["体育", "美食"]
    browser.get(f"{base}/try?model={model_id}")
    wait_count(browser, f'#try-model option[value="model:{model_id}"]')
    browser.find_element(By.ID, "try-text").send_keys("\n".join(texts))
    assert browser.find_element(By.ID, "try-text").get_attribute("value") == "\n".join(texts)
    browser.find_element(By.CSS_SELECTOR, "#try-form button[type=submit]").click()
    labels = wait_count(browser, "#try-results .prediction .label", 2)
    assert [label.text for label in labels] == expected
    assert [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#try-results .prediction .text")] == texts
    shots.append(screenshot(browser, "try-zh"))
    assert_no_console_errors(browser)

    for path in shots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":  # as for the sweep page: on request only
        for path in shots:
            shutil.copyfile(path, ROOT / "docs" / f"dashboard-{path.name}")
