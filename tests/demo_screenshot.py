"""The screenshot in docs/demo.md: the demo serving the main job's NPR-mini checkpoint, scoring three
NPR-mini test images (a real one, an nn_conv fake and a CycleGAN fake) in headless Chromium.

    python train.py && python tests/demo_screenshot.py docs/demo.png
"""
import os
import socket
import sys
import time

sys.path[:0] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(os.path.abspath(__file__))]

from test_demo import browser  # noqa: E402

import demo  # noqa: E402
from data.discovery import list_images  # noqa: E402
from options import MINI_CHECKPOINT, MINI_ROOT  # noqa: E402


def main(out):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = demo.build_app(*demo.load_model(MINI_CHECKPOINT, "-1"), MINI_CHECKPOINT)
    demo.serve(app, port, prevent_thread_lock=True, quiet=True)
    test = os.path.join(MINI_ROOT, "test")
    images = [list_images(os.path.join(test, "bilinear_conv", "0_real"))[1],
              list_images(os.path.join(test, "nn_conv", "1_fake"))[0],
              list_images(os.path.join(test, "cyclegan_vintage", "1_fake"))[0]]
    driver = browser()
    driver.set_window_size(1300, 1500)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60)
        upload = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[type=file]")))
        upload.send_keys("\n".join(os.path.abspath(p) for p in images))
        time.sleep(3)  # the uploads finish
        next(b for b in driver.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Analyse").click()
        wait.until(lambda d: "Verdict: fake when" in d.find_element(By.TAG_NAME, "body").text)
        time.sleep(3)  # the figures render
        driver.save_screenshot(out)
    finally:
        driver.quit()
        app.close()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/demo.png")
