"""The explorer end to end in a real headless Chromium (Debian's package, driven by Playwright's Python client;
Playwright's own browser download cannot be fetched here): one whole session of issue #13 against `attnlrp serve`
on the embedded SmolLM2, with a tiny atlas. Every wait is on a DOM condition (an event), never a sleep.

`make test` installs Chromium first (`make browser`). Screenshots are kept in out/test-artifacts/serve/.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
from playwright.sync_api import expect, sync_playwright

pytestmark = pytest.mark.real_model

CHROMIUM = os.environ.get("ATTNLRP_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "test-artifacts" / "serve"
TOKEN = "browser-test-token-5d1c"
PROMPT = "Paris is the capital of France. Berlin is the capital of"
XSS = "<script>alert(1)</script> <img src=x onerror=alert(1)>"
WAIT = 90_000  # ms: generous, for a loaded 2-core machine; every wait ends as soon as its condition holds
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def atlas(smollm2, tmp_path_factory):
    """An atlas of every layer over the corpus's first 4 windows (a few seconds): samples for any top neuron."""
    from attnlrp.concepts import build_atlas

    path = tmp_path_factory.mktemp("atlas") / "atlas.sqlite"
    built = build_atlas(smollm2.model, smollm2.tokenizer, None, path, layers="all", top_k=2, window=16, batch_size=4,
                        chunk_size=4, limit=4, progress=False, model_name=smollm2.source)
    assert built is not None
    built.close()
    return path


def serve(work: Path, options: list[str]):
    """Run `attnlrp serve OPTIONS` in a subprocess on 127.0.0.1 and a free port; yield (url, export_dir)."""
    url_file, export_dir = work / "url.txt", work / "exports"
    export_dir.mkdir()
    log = open(work / "server.log", "w+b")
    process = subprocess.Popen(
        [sys.executable, "-m", "attnlrp.cli", "serve", "--port", "0", "--token", TOKEN, "--export-dir",
         str(export_dir), "--url-file", str(url_file), *options],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        # the server writes the file once it listens (an event, not a delay): wait on it or on the process's end
        while not (url_file.exists() and url_file.read_text().strip()):
            try:
                process.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            log.seek(0)
            pytest.fail(f"attnlrp serve exited with {process.returncode}:\n{log.read().decode(errors='replace')}")
        yield url_file.read_text().strip(), export_dir
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def server(atlas, tmp_path_factory):
    """`attnlrp serve` with the embedded SmolLM2 and the tiny atlas."""
    yield from serve(tmp_path_factory.mktemp("serve"), ["--atlas", str(atlas)])


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make browser` installs Debian's chromium (or set ATTNLRP_CHROMIUM)")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=BROWSER_ARGS, viewport={"width": 1280, "height": 900}, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()


def shot(page, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def relevances(locator) -> list[float]:
    """The relevance values the page put on a strip's tokens (data-relevance, the server's numbers)."""
    return [float(v) for v in locator.evaluate_all("nodes => nodes.map(n => n.dataset.relevance)")]


def ledger(panel) -> dict[str, float]:
    text = panel.locator(".ledger").inner_text()
    found = re.search(r"input ([-+][\d.]+) \+ absorbed ([-+][\d.]+) = ([-+][\d.]+) · value ([-+][\d.]+)", text)
    assert found, text
    return dict(zip(("input", "absorbed", "total", "value"), map(float, found.groups())))


def test_whole_session(server, browser_context):
    url, export_dir = server
    page = browser_context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    errors: list[str] = []  # script errors, and console errors (a CSP violation, a failed request) in the page
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)

    # the token arrives in the URL, is kept in sessionStorage and leaves the address bar
    assert url.endswith(f"/?token={TOKEN}")  # what `attnlrp serve` prints
    page.goto(url)
    page.wait_for_selector("#text-form:not([hidden])", timeout=WAIT)
    assert TOKEN not in page.url
    assert page.evaluate("sessionStorage.getItem('attnlrp-token')") == TOKEN

    # 1. type, generate 4 tokens (streamed), and see the whole answer's heatmap
    page.fill("#prompt", PROMPT)
    page.fill("#max-new", "4")
    page.click("#generate")
    page.wait_for_selector("#panels .panel[data-position=answer]", timeout=WAIT)
    generated = page.locator("#panels .token.generated").count()
    assert 1 <= generated <= 4 and page.get_attribute("body", "data-streamed") == str(generated)  # one event each
    panel = page.locator("#panels .panel").first
    values = relevances(panel.locator(".token"))
    book = ledger(panel)
    assert math.isclose(sum(values), book["input"], abs_tol=2e-3)  # the heatmap's values add up to the ledger
    assert math.isclose(book["total"], book["value"], abs_tol=2e-3)  # input + absorbed = value
    shot(page, "1-generated")

    # click a prompt token: its prediction explained over the tokens up to it, nothing after it
    page.click("#panels .token[data-index='5']")
    page.wait_for_selector("#panels .panel[data-method=attnlrp][data-position='5']", timeout=WAIT)
    panel = page.locator("#panels .panel").first
    values = relevances(panel.locator(".token"))
    assert len(values) > 6 and all(v == 0 for v in values[6:]) and any(v != 0 for v in values[:6])
    assert panel.locator(".token.later").count() == len(values) - 6
    attnlrp_value = ledger(panel)["value"]

    # 2. switch method, then compare two methods side by side on the same target
    page.select_option("#method", "cp-lrp")
    page.wait_for_selector("#panels .panel[data-method=cp-lrp][data-position='5']", timeout=WAIT)
    cp = ledger(page.locator("#panels .panel").first)
    assert math.isclose(cp["value"], attnlrp_value, abs_tol=1e-3)  # the same logit explained
    assert abs(cp["absorbed"]) <= 1e-3  # SmolLM2 has no biases: CP-LRP absorbs nothing (docs/design.md)
    page.select_option("#compare-method", "attnlrp")
    page.check("#compare-toggle")
    page.wait_for_selector("#panels .panel[data-method=attnlrp][data-position='5']", timeout=WAIT)
    assert page.locator("#panels .panel[data-method]").count() == 2
    # 3. the BOS is left out of the colour scale by default, and can be put back
    assert page.is_checked("#exclude-first")
    assert page.locator("#panels .panel").first.locator(".token.unscaled").count() == 1
    page.uncheck("#exclude-first")
    assert page.locator("#panels .token.unscaled").count() == 0
    page.check("#exclude-first")
    shot(page, "2-compare")

    # keyboard: a token is a button; Enter on it explains that position
    page.focus("#panels .panel[data-method=cp-lrp] .token[data-index='3']")
    page.keyboard.press("Enter")
    page.wait_for_selector("#panels .panel[data-method=cp-lrp][data-position='3']", timeout=WAIT)
    expect(page.locator("#panels .panel[data-method=cp-lrp] .token[data-index='3']")).to_be_focused()
    page.select_option("#method", "attnlrp")
    page.uncheck("#compare-toggle")
    page.click("#panels .token[data-index='12']")
    page.wait_for_selector("#panels .panel[data-method=attnlrp][data-position='12']", timeout=WAIT)
    tokens_total = page.locator("#panels .panel").first.locator(".token").count()

    # the target: a typed token, then a contrast A − B, whose value is logit(A) − logit(B)
    values = {}
    for mode, target, contrast in (("token", " Germany", ""), ("token", " France", ""), ("contrast", " Germany", " France")):
        page.check(f"input[name=target-mode][value={mode}]")
        page.fill("#target", target)
        if contrast:
            page.fill("#contrast", contrast)
        page.press("#target", "Enter")
        expect(page.locator("#explained")).to_contain_text(
            f'logit of "{target}"' + (f' minus logit of "{contrast}"' if contrast else " at position 12"), timeout=WAIT)
        values[mode, target] = ledger(page.locator("#panels .panel").first)["value"]
    assert values["contrast", " Germany"] == pytest.approx(values["token", " Germany"] - values["token", " France"],
                                                          abs=2e-3)
    page.check("input[name=target-mode][value=predicted]")
    expect(page.locator("#explained")).to_contain_text('logit of " Germany" at position 12', timeout=WAIT)

    # 4. inside the model: residual stream (layers × tokens), heads, top neurons, a neuron's atlas samples
    page.click("#tab-latent")
    page.wait_for_selector("#top-neurons button[data-neuron]", timeout=WAIT)
    layers = page.locator("#residual-grid .rowhead").count()
    assert layers == 30 and page.locator("#residual-grid .cell").count() == layers * tokens_total
    head = page.locator("#head-grid button.cell[data-row='20'][data-col='3']")
    head.click()
    page.wait_for_selector("#head-grid .cell.selected[data-row='20'][data-col='3']", timeout=WAIT)
    assert page.locator("#head-tokens .token").count() == tokens_total
    first = page.locator("#top-neurons button[data-neuron]").first
    neuron = first.get_attribute("data-neuron")
    first.click()
    page.wait_for_selector("#atlas .samples[data-kind=relmax] li", timeout=WAIT)
    assert page.locator("#atlas h3").inner_text() == f"neuron {neuron}"
    assert page.locator("#atlas .samples[data-kind=actmax] li").count() == 2
    shot(page, "3-latent")

    # 5. switch that neuron off, regenerate: before and after, each with a heatmap recomputed on its model
    page.click(f"#top-neurons button[data-steer='{neuron}']")
    page.click("#tab-steer")
    assert page.locator(f"#steer-list li[data-neuron='{neuron}']").count() == 1
    page.click("#regenerate")
    page.wait_for_selector("#steer-after .strip .token", timeout=WAIT)
    before = relevances(page.locator("#steer-before .strip .token"))
    after = relevances(page.locator("#steer-after .strip .token"))
    assert len(before) == len(after) and before != after
    logit_before = float(page.locator("#steer-before .logit").inner_text())
    logit_after = float(page.locator("#steer-after .logit").inner_text())
    assert logit_before != logit_after
    assert math.isclose(ledger(page.locator("#steer-after"))["value"], logit_after, abs_tol=2e-3)
    shot(page, "4-steering")

    # 7. export: JSON and HTML downloads, and a copy in --export-dir; none carries the token
    with page.expect_download() as download:
        page.click("#export-json")
    exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
    assert exported["view"] == "steer" and exported["data"]["steering"]["comparison"]["after"]["logit"] == pytest.approx(
        logit_after, abs=1e-3)
    with page.expect_download() as download:
        page.click("#export-html")
    html = Path(download.value.path()).read_text(encoding="utf-8")
    assert "<script" not in html and 'id="steer-after"' in html
    for text in (json.dumps(exported), html):
        assert TOKEN not in text
    page.click("#export-server")  # shown because the server has --export-dir
    expect(page.locator("#status")).to_have_text(re.compile("^saved on the server"), timeout=WAIT)
    saved = {path.suffix: path.read_text(encoding="utf-8") for path in export_dir.iterdir()}
    assert sorted(saved) == [".html", ".json"] and all(TOKEN not in text for text in saved.values())
    assert json.loads(saved[".json"])["explanation"]["relevance"] == after

    # the view's state is in the URL (never the token): reloading rebuilds it
    state_url = unquote(page.url)
    assert TOKEN not in state_url and "view=steer" in state_url and f"steer={neuron}" in state_url
    page.reload()
    page.wait_for_selector("#steer-after .strip .token", timeout=WAIT)
    assert relevances(page.locator("#steer-after .strip .token")) == after

    # a prompt with markup shows as text: no element made of it, no dialog
    page.click("#tab-tokens")
    page.fill("#prompt", XSS)
    page.click("#explain")
    expect(page.locator("#panels .panel[data-method] .strip").first).to_contain_text("alert", timeout=WAIT)
    strip = page.locator("#panels .strip").first.inner_text()
    assert "<script>alert(1)</script>" in strip and "<img src=x onerror=alert(1)>" in strip
    assert page.locator("#view script, #view img, body script:not([src])").count() == 0
    with page.expect_download() as download:
        page.click("#export-html")
    html = Path(download.value.path()).read_text(encoding="utf-8")
    assert "<script" not in html and "<img" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    with page.expect_download() as download:
        page.click("#export-png")
    png = Path(download.value.path()).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 1000  # the canvas's width
    shot(page, "5-markup-as-text")

    assert dialogs == [] and errors == []


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    """`attnlrp serve` with the digits ViT shipped for the evaluation (an 8×8 greyscale image classifier)."""
    import attnlrp.evaluation

    folder = Path(attnlrp.evaluation.__file__).parent / "datasets" / "digits-vit"
    yield from serve(tmp_path_factory.mktemp("serve-image"), ["--model", str(folder)])


def test_image_mode(image_server, browser_context, tmp_path):
    """An image classifier's server gives the image view: a file in, the patch heatmap drawn over the image."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path / "digit.png"
    Image.fromarray((digits.images[0] * (255 / 16)).astype("uint8"), mode="L").save(path)
    url, _ = image_server
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(url)
    page.wait_for_selector("#image-form:not([hidden])", timeout=WAIT)
    assert page.is_hidden("#text-form") and page.is_hidden("#tabs")
    page.set_input_files("#image-file", str(path))
    expect(page.locator("#image-result")).to_contain_text("Predicted class", timeout=WAIT)
    with page.expect_download() as download:  # the JSON export holds what the server answered
        page.click("#export-json")
    result = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))["data"]["primary"]
    expect(page.locator("#image-result")).to_contain_text(f"Predicted class {result['class_id']} ")
    assert len(result["relevance"]) == result["height"] and page.locator("#image-legend .legend").count() == 1

    def colour_channels_differ() -> bool:  # the image is grey (R = G = B); the heatmap over it is not
        return page.evaluate("""() => { const c = document.getElementById('image-canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            for (let i = 0; i < d.length; i += 4) if (d[i] !== d[i + 2]) return true; return false; }""")

    assert colour_channels_differ()
    page.uncheck("#image-overlay")
    assert not colour_channels_differ()
    page.check("#image-overlay")
    shot(page, "6-image")
    assert errors == []
