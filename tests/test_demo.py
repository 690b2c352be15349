"""demo.py against its real server on 127.0.0.1: through gradio_client and in a real browser
(Chromium from the system's packages, driven by Selenium), checked against predict.py.

The demo's packages are an extra (requirements-demo.txt). Without them these tests are
skipped, unless NPR_REQUIRE_DEMO=1 (what CI sets after installing them), where a missing
package or browser is a failure.
"""
import json
import os
import shutil
import time

import numpy as np
import pytest
import torch
from conftest import free_port, need_extra, need_program, run_script
from PIL import Image

import demo
from networks import resnet50

gradio_client = need_extra("gradio_client")
need_extra("gradio")
need_extra("demo_limits")

pytestmark = [pytest.mark.slow, pytest.mark.extra]  # a server, a browser and predict.py launches


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, checkpoint, images): the app on a free port, a checkpoint with a stored threshold,
    and images: three PNGs, a corrupt file and a 1x1 image."""
    tmp = tmp_path_factory.mktemp("demo")
    torch.manual_seed(0)
    ckpt = str(tmp / "m.pth")
    torch.save({"model": resnet50().state_dict(), "threshold": 0.3}, ckpt)
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        p = str(tmp / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(p)
        images.append(p)
    (tmp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp / "tiny.png")
    images += [str(tmp / "corrupt.png"), str(tmp / "tiny.png")]
    app = demo.build_app(*demo.load_model(ckpt, "-1"), ckpt)
    port = free_port()
    demo.serve(app, port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", ckpt, images, tmp
    app.close()


def predict_py(ckpt, paths, out, *extra):
    r = run_script("predict.py", *paths, "--model_path", ckpt, "--gpu_ids", "-1", "--output", out,
                   *extra, timeout=300)
    assert r.returncode == 0, r.stderr
    return {os.path.basename(p["path"]): p for p in json.load(open(out + ".json"))["predictions"]}


def test_page_and_predict_py_give_the_same_numbers(served):
    url, ckpt, images, tmp = served
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp / "dl"))
    table, gallery, status, details = client.predict([gradio_client.handle_file(p) for p in images], "0.5", 0.5,
                                                     False, api_name="/analyse")
    ours = {d["file"]: d for d in details}
    cli = predict_py(ckpt, images, str(tmp / "pred"), "--threshold", "0.5")
    assert set(ours) == set(cli) == {os.path.basename(p) for p in images}
    for name, row in cli.items():
        assert ours[name]["verdict"] == row["verdict"], name
        if row["prob_fake"] is None:
            assert ours[name]["prob_fake"] is None
        else:
            assert ours[name]["prob_fake"] == pytest.approx(row["prob_fake"], abs=1e-6), name
    assert ours["corrupt.png"]["verdict"] == "unreadable" and ours["tiny.png"]["verdict"] == "too small"
    rows = {r[0]: r for r in table["data"]}
    assert "cannot be read" in rows["corrupt.png"][5] and "2x2" in rows["tiny.png"][5]
    assert len(gallery) == 3 and "0.5000" in status and "Traceback" not in json.dumps(table)


def test_stored_and_custom_thresholds(served):
    url, ckpt, images, tmp = served
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp / "dl2"))
    files = [gradio_client.handle_file(p) for p in images[:3]]
    _, _, status, details = client.predict(files, "auto", 0.5, False, api_name="/analyse")
    assert "0.3000" in status and "stored by train.py" in status
    assert all(d["verdict"] == ("fake" if d["prob_fake"] > 0.3 else "real") for d in details)
    _, _, status, details = client.predict(files, "custom", 0.999, True, api_name="/analyse")
    assert "0.9990" in status and all(d["verdict"] == "real" and d["resized"] for d in details)
    assert all(d["size"] == "256x256" for d in details)


def test_missing_checkpoint_is_one_line(tmp_path):
    r = run_script("demo.py", "--model_path", str(tmp_path / "none.pth"), timeout=120)
    assert r.returncode == 2 and "no checkpoint" in r.stderr and "Traceback" not in r.stderr


def browser():
    """Headless Chromium from the system's packages through Selenium (no driver download)."""
    webdriver = need_extra("selenium.webdriver")
    chrome, driver = need_program("chromium", "chromedriver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))


def test_in_a_real_browser(served):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, ckpt, images, tmp = served
    cli = predict_py(ckpt, images[:1], str(tmp / "pred1"), "--threshold", "stored")
    driver = browser()
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
        upload.send_keys(images[0])
        wait.until(lambda d: "img0.png" in d.page_source)
        time.sleep(1)  # the upload finishes
        next(b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Analyse").click()
        wait.until(lambda d: "Verdict: fake when" in d.find_element(By.TAG_NAME, "body").text)
        text = driver.find_element(By.TAG_NAME, "body").text
        expected = cli["img0.png"]
        assert f"{expected['prob_fake']:.4f}" in text and expected["verdict"] in text
        shot = os.environ.get("NPR_DEMO_SCREENSHOT", str(tmp / "demo.png"))
        driver.save_screenshot(shot)
        assert os.path.getsize(shot) > 10_000
    finally:
        driver.quit()


def test_uploads_over_the_limit_are_refused(served):
    import httpx
    url = served[0]
    big = b"\0" * (50 * 2**20 + 1)  # MAX_UPLOAD is 50 MB
    r = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", big, "image/png")}, timeout=120)
    assert r.status_code == 413, (r.status_code, r.text[:200])
    ok = httpx.post(url + "gradio_api/upload", files={"files": ("small.png", b"\0" * 1000, "image/png")}, timeout=60)
    assert ok.status_code == 200


def test_mini_checkpoint_is_flagged_and_old_figures_are_deleted(tmp_path):
    assert "NPR-mini checkpoint" in demo.mini_note(demo.MINI_CHECKPOINT) and "NPR.pth" in demo.mini_note(
        demo.MINI_CHECKPOINT)
    assert demo.mini_note("NPR.pth") == ""
    old, new = tmp_path / "old.png", tmp_path / "new.png"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (time.time() - 2 * demo.KEEP_SECONDS,) * 2)
    demo.prune(str(tmp_path))
    assert not old.exists() and new.exists()


def stream_post(url, path, head, chunk, n_chunks, tail=b"", content_type=None):
    """POST ``head``, then ``n_chunks`` times ``chunk``, then ``tail`` (chunked transfer: no length
    announced, and the sender never holds the body); (status, body) of the answer, which may come
    before the body is sent."""
    import http.client
    import urllib.parse
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)

    def body():
        yield head
        for _ in range(n_chunks):
            yield chunk
        yield tail
    try:
        conn.request("POST", path, body=body(), encode_chunked=True,
                     headers={"Content-Type": content_type or "application/octet-stream"})
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the end of the body
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_request_bodies_are_limited_before_gradio_parses_them(served):
    """A form field without a file name (gradio keeps those in memory, whatever their size), a
    file over 50 MB and a JSON body over 1 MiB are refused as they arrive (413); the server's
    memory does not grow with what was sent, and the page answers afterwards."""
    import httpx
    url = served[0]
    boundary = b"npr-test-boundary"
    ctype = f"multipart/form-data; boundary={boundary.decode()}"
    field = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"\r\n\r\n'
    before = rss_mib()
    status, text = stream_post(url, "/gradio_api/upload", field, b"a" * 2**20, 400,  # 400 MiB
                               b"\r\n--" + boundary + b"--\r\n", ctype)
    assert status == 413 and b"form field" in text
    assert rss_mib() - before < 100
    a_file = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
    status, text = stream_post(url, "/gradio_api/upload", a_file, b"\0" * 2**20, 60, b"\r\n--" + boundary + b"--\r\n",
                               ctype)
    assert status == 413 and b"file" in text
    status, _ = stream_post(url, "/gradio_api/queue/join", b'{"data": "', b"x" * 2**20, 3, b'"}', "application/json")
    assert status == 413
    r = httpx.post(url + "gradio_api/upload", files={"files": ("small.png", b"\0" * 1000, "image/png")}, timeout=60)
    assert r.status_code == 200
    r = httpx.post(url + "gradio_api/upload", files=[("files", (f"{i}.png", b"\0" * 1000, "image/png")) for i in range(3)],
                   timeout=60)
    assert r.status_code == 200 and len(r.json()) == 3  # several files in one request, as the page sends them


def test_the_page_survives_its_figures_folder_being_removed(served):
    import glob
    import tempfile
    url, ckpt, images, tmp = served
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), "npr-demo-*")):
        shutil.rmtree(folder, ignore_errors=True)  # what a cleaner of /tmp does to a demo left running
    client = gradio_client.Client(url, verbose=False, download_files=str(tmp / "dl3"))
    table, gallery, status, details = client.predict([gradio_client.handle_file(p) for p in images[:2]], "0.5", 0.5,
                                                     False, api_name="/analyse")
    assert len(details) == 2 and len(gallery) == 2 and "Verdict" in status
