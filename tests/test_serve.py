"""talk3d serve: every endpoint over real HTTP, then the page in headless Chromium.

One subject is trained once for the module (the workflow at tiny budgets), the server runs in a
thread on a free loopback port. The browser test installs Debian's chromium and chromium-driver when
they are absent, and is skipped, saying why, only where that is impossible.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import decode_video, make_workflow_project
from PIL import Image

from talk3d_core.serve.app import Studio, make_app
from talk3d_core.util.media import probe

pytestmark = pytest.mark.workflow

BUDGETS = {"prior": {"steps": 4}, "train": {"steps": 2, "sr_steps": 1}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A workflow directory whose subject 'clip' is trained (tiny budgets)."""
    root = make_workflow_project(tmp_path_factory.mktemp("serve"))
    (root / "budgets.yaml").write_text(yaml.safe_dump(BUDGETS))
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--quiet", "all", "--configfile", "budgets.yaml",
         "--", "results/clip/train/deltaplane.pt"],
        cwd=root, check=True, capture_output=True, env=os.environ | {"PYTHONPATH": str(root)},
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def server(trained):
    """(base URL, studio) of the app serving ``trained``'s results on a free loopback port."""
    import uvicorn

    studio = Studio(trained / "results", max_upload_bytes=2 * 2**20, batch_size=4)
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    config = uvicorn.Config(make_app(studio), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", studio
    instance.should_exit = True
    thread.join(timeout=30)


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.status, response.read(), response.headers.get("content-type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("content-type", "")


def post_form(url: str, fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[int, bytes]:
    """multipart/form-data POST (what the page's FormData sends)."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        part = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        body.write(part.encode())
    for name, (filename, data) in files.items():
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(
        url, data=body.getvalue(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_for(base: str, job: str) -> dict:
    deadline = time.monotonic() + 300
    while True:
        status = json.loads(get(f"{base}/api/jobs/{job}")[1])
        if status["state"] not in ("queued", "rendering"):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.2)


def test_pages_and_frames(server):
    base, _ = server
    status, body, _ = get(f"{base}/")
    assert status == 200 and b'href="/s/clip"' in body
    status, body, _ = get(f"{base}/s/clip")
    assert status == 200 and b'id="render"' in body and b'id="yaw"' in body
    status, body, kind = get(f"{base}/api/s/clip/frame?yaw=20&pitch=-10&size=128")
    assert status == 200 and kind == "image/png"
    turned = np.asarray(Image.open(io.BytesIO(body)))
    assert turned.shape == (128, 128, 3)
    frontal = np.asarray(Image.open(io.BytesIO(get(f"{base}/api/s/clip/frame?yaw=0&pitch=0&size=128")[1])))
    assert np.abs(turned.astype(int) - frontal).mean() > 1  # another view is another picture
    for query, message in [
        ("yaw=120&pitch=0", "yaw must be within"),
        ("yaw=abc&pitch=0", "yaw must be a number"),
        ("yaw=0&pitch=0&size=77", "size must be one of"),
        ("yaw=0&pitch=0&frame=100000", "frame must be within"),
    ]:
        status, body, _ = get(f"{base}/api/s/clip/frame?{query}")
        assert status == 400 and message in json.loads(body)["error"], (query, body)
    assert get(f"{base}/s/nobody")[0] == 404
    assert get(f"{base}/api/jobs/0000")[0] == 404


def test_drive_jobs_in_parallel_tabs_keep_their_own_outputs(server, make_audio):
    base, _ = server
    short, longer = make_audio(fmt="mp3", duration=0.8), make_audio(fmt="wav", duration=1.6, tone=300.0)
    jobs = []
    for path, camera in ((short, "fixed"), (longer, "tracked")):  # two tabs, submitted back to back
        upload = {"audio": (path.name, path.read_bytes())}
        status, body = post_form(f"{base}/api/s/clip/drive", {"camera": camera, "size": "128"}, upload)
        assert status == 200, body
        jobs.append(json.loads(body)["job"])
    assert jobs[0] != jobs[1]
    for job, seconds in zip(jobs, (0.8, 1.6), strict=True):
        result = wait_for(base, job)
        assert result["state"] == "done" and result["done"] == result["total"] == round(seconds * 25), result
        status, video, kind = get(base + result["video"])
        assert status == 200 and kind == "video/mp4"
        path = Path(f"/tmp/talk3d_serve_{job}.mp4")
        path.write_bytes(video)
        try:
            info = probe(path)
            assert info.video.display_size == (128, 128) and info.audio is not None
            assert len(decode_video(path)) == round(seconds * 25)
        finally:
            path.unlink()


def test_uploads_are_checked_before_any_render(server):
    base, studio = server
    url = f"{base}/api/s/clip/drive"
    folders = set(studio.scratch.iterdir())
    status, body = post_form(url, {}, {"audio": ("notes.wav", b"this is text, not sound " * 40)})
    assert status == 400 and "notes.wav is not audio" in json.loads(body)["error"]
    status, body = post_form(url, {}, {})
    assert status == 400 and "no audio file" in json.loads(body)["error"]
    status, body = post_form(url, {}, {"audio": ("big.wav", b"\0" * (3 * 2**20))})
    assert status == 413 and "limit" in json.loads(body)["error"]
    status, body = post_form(url, {"camera": "orbit"}, {"audio": ("a.wav", _wav(0.5))})
    assert status == 400 and "camera must be one of" in json.loads(body)["error"]
    assert set(studio.scratch.iterdir()) == folders  # refused uploads leave nothing behind
    assert all(job.state == "done" for job in studio.jobs.values())  # none of these was queued


def test_live_streams_every_frame(server):
    base, _ = server
    status, body = post_form(f"{base}/api/s/clip/live", {"size": "128"}, {"audio": ("a.wav", _wav(0.6))})
    assert status == 200
    header, frames, offset = None, 0, 0
    while offset < len(body):
        (length,) = struct.unpack(">I", body[offset : offset + 4])
        payload = body[offset + 4 : offset + 4 + length]
        offset += 4 + length
        if header is None:
            header = json.loads(payload)
            continue
        assert Image.open(io.BytesIO(payload)).size == (128, 128)
        frames += 1
    assert header == {"frames": 15, "fps": 25.0, "size": 128} and frames == 15


def _wav(seconds: float) -> bytes:
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        t = np.arange(int(seconds * 16000)) / 16000
        out.writeframes((np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes())
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ browser


def _chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing Debian's packages when absent."""

    def found() -> tuple[str | None, str | None]:
        return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")

    browser, driver = found()
    if not (browser and driver) and shutil.which("apt-get"):
        quiet = {"capture_output": True, "timeout": 600}
        subprocess.run(["apt-get", "update", "-qq"], **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], **quiet)
        browser, driver = found()
    if not (browser and driver):
        pytest.skip("chromium and chromium-driver are not installed and apt-get could not install them")
    return browser, driver


def test_the_page_in_a_real_browser(server, make_audio, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, _ = server
    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    flags = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1600",
             "--autoplay-policy=no-user-gesture-required"]  # fmt: skip
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        wait = WebDriverWait(driver, 240, poll_frequency=0.2)
        driver.get(f"{base}/")
        driver.find_element(By.LINK_TEXT, "clip").click()
        wait.until(lambda d: d.find_element(By.ID, "frame").get_attribute("data-count") == "1")
        before = driver.find_element(By.ID, "frame").screenshot_as_png

        # Upload, render, and play the video.
        driver.find_element(By.ID, "audio-file").send_keys(str(make_audio(fmt="m4a", duration=1.2)))
        Select(driver.find_element(By.ID, "size")).select_by_value("128")
        driver.find_element(By.ID, "render").click()
        video = driver.find_element(By.ID, "video")
        wait.until(lambda d: d.execute_script("return arguments[0].readyState", video) >= 2)
        duration = driver.execute_script("return arguments[0].duration", video)
        assert duration == pytest.approx(1.2, abs=0.1)
        driver.execute_script("arguments[0].muted = true; arguments[0].play();", video)
        wait.until(lambda d: d.execute_script("return arguments[0].currentTime", video) > 0.3)
        assert "done in" in driver.find_element(By.ID, "render-status").text

        # Turning the head re-renders the picture.
        count = int(driver.find_element(By.ID, "frame").get_attribute("data-count"))
        driver.execute_script(
            "const s = document.getElementById('yaw'); s.value = 30; s.dispatchEvent(new Event('input'));"
        )
        wait.until(lambda d: int(d.find_element(By.ID, "frame").get_attribute("data-count")) > count)
        settled = "return !frameBusy && document.getElementById('frame').complete"
        wait.until(lambda d: d.execute_script(settled))
        assert driver.find_element(By.ID, "frame").screenshot_as_png != before

        # Live mode: frames stream in and the page measures them.
        driver.find_element(By.ID, "live").click()
        canvas = driver.find_element(By.ID, "live-canvas")
        wait.until(lambda d: canvas.get_attribute("data-finished") == "1")
        frames = int(canvas.get_attribute("data-frames"))
        latency, fps = float(canvas.get_attribute("data-latency-ms")), float(canvas.get_attribute("data-fps"))
        assert frames == 30 and latency > 0 and fps > 0
        print(f"\nlive mode: first frame after {latency:.0f} ms, {fps:.1f} frames/s over {frames} frames")
        shot = os.environ.get("TALK3D_SCREENSHOT")
        driver.save_screenshot(shot or str(tmp_path / "page.png"))
        assert driver.find_element(By.ID, "audio-error").text == ""
    finally:
        driver.quit()
