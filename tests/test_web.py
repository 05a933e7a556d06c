"""`linearsr serve`: the upscaling function behind the page, the page itself in headless Chromium, and the
default listening address. The browser tests need gradio (`linearsr[web]`), selenium and Debian's
`chromium` + `chromium-driver` (.ci/install-browser); they are skipped, with the reason, when any is missing."""

import importlib.util
import json
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import free_port, randomize, tiny_config, write_png
from linearsr.imageio import ImageError
from linearsr.inference.pipeline import LinearSR
from linearsr.inference.jobs import run_upscale
from linearsr.model.network import LinearSRModel

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
HAS_GRADIO = importlib.util.find_spec("gradio") is not None
needs_gradio = pytest.mark.skipif(not HAS_GRADIO, reason="gradio is not installed (pip install 'linearsr[web]')")
needs_browser = pytest.mark.skipif(
    not (HAS_GRADIO and importlib.util.find_spec("selenium") and Path(CHROMIUM).exists()
         and Path(CHROMEDRIVER).exists()),
    reason="needs gradio, selenium and Debian's chromium + chromium-driver (run .ci/install-browser)")
WAIT = 30  # seconds for any one thing to appear in the page


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    # a tag width MiniLM (384) cannot serve: tags are ignored with one warning and no encoder is ever loaded
    randomize(LinearSRModel(tiny_config(cond_dim=12))).eval().save_pretrained(path)
    return path




def can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


# ---- run_upscale, no gradio needed --------------------------------------------------------------------
def test_run_upscale_writes_result_and_bicubic_and_reports_settings(tmp_path, tiny_model):
    pipe = LinearSR(tiny_model, device="cpu")
    src = write_png(tmp_path / "in.png", 20, 24)
    seen = []
    r = run_upscale(pipe, src, tmp_path / "out", name="holiday photo.png", scale=2, preset="fidelity", seed=3,
                    progress=lambda done, total: seen.append((done, total)))
    assert Image.open(r.after).size == Image.open(r.before).size == r.size == (48, 40)
    assert r.after.name == "holiday_photo_x2.png" and tmp_path / "out" in r.after.parents
    assert seen == [(1, 1)]  # fidelity = 1 step
    s = r.settings
    assert (s["preset"], s["steps"], s["color_fix"], s["seed"]) == ("fidelity", 1, "none", 3)
    assert s["output"]["size"] == [48, 40] and s["input"] == {"name": "holiday photo.png", "size": [24, 20]}
    json.dumps(s)  # shown as JSON in the page


def test_oversized_uploads_are_refused_with_a_one_line_message(tmp_path, tiny_model):
    pipe = LinearSR(tiny_model, device="cpu")
    src = write_png(tmp_path / "upload_3f2a.png", 24, 24)
    with pytest.raises(ImageError, match=r"^big\.png: 24x24 = 576 pixels exceeds the 500 pixels limit"):
        run_upscale(pipe, src, tmp_path / "out", name="big.png", max_pixels=500)
    size = src.stat().st_size
    refused = rf"^big\.png: {size} bytes exceeds the 100 bytes upload limit \(--max-upload-mb\)$"
    with pytest.raises(ImageError, match=refused):
        run_upscale(pipe, src, tmp_path / "out", name="big.png", max_upload_bytes=100)
    assert not (tmp_path / "out").exists()  # refused before any work or output


# ---- the page in headless Chromium ----------------------------------------------------------------------
@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1300", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait_for(driver, script: str, what: str):
    """Poll a JavaScript expression until it is truthy; fail naming `what`."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; page text: {driver.execute_script('return document.body.innerText')!r}")


def upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    wait_for(driver, "document.querySelector('#input-image input[type=file]')", "the upload area")
    driver.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(path))
    wait_for(driver, "document.querySelector('#input-image img')", "the uploaded image preview")


@needs_browser
@pytest.mark.filterwarnings("ignore::Warning:gradio")  # gradio's own deprecation noise from its queue
def test_page_upscales_an_image_in_headless_chromium(tmp_path, model_dir, browser):
    from linearsr.inference.web import serve

    small, big = write_png(tmp_path / "small.png", 24, 24), write_png(tmp_path / "big.png", 32, 32, seed=1)
    demo = serve(str(model_dir), port=free_port(), device="cpu", max_pixels=24 * 24, block=False, quiet=True,
                 tagger=lambda image: ["Tiny", f"{image.width} px wide"])
    try:
        base = demo.local_url
        browser.set_window_size(1400, 1000)
        browser.get(base)
        wait_for(browser, "document.querySelector('#run')", "the Upscale button")
        # above the fold of a 1400x1000 window, without scrolling
        assert browser.execute_script("return document.querySelector('#run').getBoundingClientRect().bottom "
                                      "<= window.innerHeight")
        browser.set_window_size(1400, 1300)
        upload(browser, small)
        tags = wait_for(browser, "document.querySelector('#tags textarea').value", "the tagger's tags")
        assert sorted(tags.split(", ")) == ["24 px wide", "tiny"]  # normalised by parse_tags
        browser.execute_script("document.querySelector('#preset [data-testid=fidelity-radio-label]').click()")
        wait_for(browser, "document.querySelector('#steps input[type=number]').value === '1'", "1 step (the preset)")
        browser.execute_script("document.querySelector('#run').click()")
        wait_for(browser, "document.querySelector('#download')?.innerText.includes('96×96')", "the download button")
        assert wait_for(browser, "document.querySelectorAll('#compare img').length", "the slider's images") == 2
        settings = browser.execute_script("return document.querySelector('#settings').innerText")
        assert '"preset":"fidelity"' in "".join(settings.split()) and '"steps":1,' in "".join(settings.split())
        assert "small.png" in settings
        browser.execute_script("document.querySelector('#download').click()")
        deadline = time.monotonic() + WAIT
        while not (done := list(browser.downloads.glob("*.png"))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p.name for p in done] == ["small_x4.png"], list(browser.downloads.iterdir())
        assert Image.open(done[0]).size == (96, 96)  # full resolution: the tiny model is x4
        # the tiny model cannot use the tags: the pipeline's warning reaches the page (a toast) and the settings
        wait_for(browser, "document.body.innerText.includes('tags are ignored')", "the warning about tags")
        assert "tags are ignored" in settings
        browser.execute_script("document.querySelectorAll('[data-testid=toast-close]').forEach(b => b.click())")
        wait_for(browser, "!document.querySelector('[data-testid=toast-body]')", "the toast to close")
        browser.save_screenshot(str(tmp_path / "web.png"))
        # everything the page loaded came from our server: no CDN, fonts or analytics elsewhere
        urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert urls and all(u.startswith(base) or u.startswith(("data:", "blob:")) for u in urls), urls

        browser.get(base)  # a fresh page; the larger image is refused with the reason in the page
        upload(browser, big)
        browser.execute_script("document.querySelector('#run').click()")
        wait_for(browser, "document.body.innerText.includes('32x32 = 1024 pixels exceeds the 576 pixels limit')",
                 "the refusal message")
        workdir = demo.linearsr_workdir
        assert all(workdir in p.parents for p in workdir.rglob("*"))  # uploads and results in the temp folder
    finally:
        demo.close()
    shutil.rmtree(demo.linearsr_workdir, ignore_errors=True)


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port` (Linux /proc/net), as text."""
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(addr)
                if v6:
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
                else:
                    found.add(socket.inet_ntoa(raw[::-1]))
    return found


def _own_outward_ip() -> str | None:
    """This machine's address on its default route (a UDP connect sends nothing), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only selects the route, no packet leaves
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


@needs_gradio
def test_serve_listens_on_loopback_only_by_default(model_dir):
    from linearsr.inference.web import serve

    port = free_port()
    demo = serve(str(model_dir), port=port, device="cpu", block=False, quiet=True)  # host left at its default
    try:
        assert demo.server_name == "127.0.0.1"
        assert can_connect("127.0.0.1", port)
        if Path("/proc/net/tcp").exists():
            assert _listening_addresses(port) == {"127.0.0.1"}
        ip = _own_outward_ip()
        if ip is not None:
            assert not can_connect(ip, port), f"the page is reachable on {ip}"
    finally:
        demo.close()
    shutil.rmtree(demo.linearsr_workdir, ignore_errors=True)


@needs_gradio
@pytest.mark.slow  # starting gradio in a child process takes 10-40 s on a busy 2-core machine
def test_sigterm_stops_serve_with_one_line_and_exit_status_0(model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "linearsr.cli", "serve", "--model", str(model_dir), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not can_connect("127.0.0.1", port) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert can_connect("127.0.0.1", port), proc.stdout.read() if proc.poll() is not None else "not up"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)  # a hang fails here; it took 10 s before the fix, ~0.5 s after
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert out.splitlines() == [f"LinearSR page on http://localhost:{port} (Ctrl-C to stop)",
                                "linearsr: SIGTERM: stopping the page"], out
    assert not list(tmp_path.glob("linearsr-serve-*"))  # its temporary folder is gone
