"""bloodcv serve in a real browser: the test starts `bloodcv serve` (the C++ program hands over to Python) and
drives headless Chromium with Selenium through a technician's and reviewer's day: log in, create a sample,
upload the bundled smear, wait for the analysis, see the cells drawn, correct one cell's type, see the counts
change, export labelme JSON. Screenshots go to build/web/."""
import io
import json
import shutil
import subprocess
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from pg_server import free_port  # noqa: E402
from web_helpers import ROOT, SMEAR  # noqa: E402

CHROMEDRIVER = shutil.which("chromedriver")
BLOODCV = ROOT / "build" / "bloodcv"
SHOTS = ROOT / "build" / "web"

pytestmark = [pytest.mark.skipif(CHROMEDRIVER is None, reason="chromium-driver is not installed"),
              pytest.mark.skipif(not BLOODCV.exists(), reason=f"{BLOODCV} is not built")]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    process = subprocess.Popen([str(BLOODCV), "serve", "--data", str(tmp_path / "data"), "--port", str(port),
                                "--admin", "admin:admin-pass-1"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"{url}/login", timeout=1)
                break
            except OSError:
                if process.poll() is not None:
                    raise AssertionError("bloodcv serve exited: " + (tmp_path / "server.log").read_text())
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1500,1000", "--disable-gpu"):
        options.add_argument(argument)
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads"),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def shot(driver, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / name))


def test_a_day_at_the_laboratory_in_the_browser(server, browser, tmp_path):
    wait = WebDriverWait(browser, 120)
    browser.get(f"{server}/")
    assert "/login" in browser.current_url  # every page needs a session
    browser.find_element(By.ID, "username").send_keys("admin")
    browser.find_element(By.ID, "password").send_keys("admin-pass-1")
    browser.find_element(By.ID, "login").click()
    wait.until(EC.presence_of_element_located((By.ID, "create-sample")))

    browser.find_element(By.ID, "patient").send_keys("P-2026-041")
    browser.find_element(By.ID, "sample-name").send_keys("peripheral smear, 22 Nov")
    browser.find_element(By.ID, "create-sample").click()
    wait.until(EC.presence_of_element_located((By.ID, "file"))).send_keys(str(SMEAR))
    browser.find_element(By.ID, "upload").click()
    # the page polls while the worker analyses, then reloads with the result
    wait.until(EC.text_to_be_present_in_element((By.CSS_SELECTOR, "#images .status"), "done"))
    assert "36" in browser.find_element(By.CSS_SELECTOR, "#images tbody tr").text
    shot(browser, "sample.png")

    browser.find_element(By.CSS_SELECTOR, "#images tbody a").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#overlay rect.cell")) == 36)
    assert browser.find_element(By.CSS_SELECTOR, "#label-counts").text.split() == ["WBC", "1", "RBC", "35"]
    assert "neutrophil 1" in browser.find_element(By.ID, "type-counts").text
    shot(browser, "viewer.png")

    browser.find_element(By.CSS_SELECTOR, '#overlay rect[data-class="neutrophil"]').click()
    wait.until(EC.visibility_of_element_located((By.ID, "cell-panel")))
    assert "neutrophil" in browser.find_element(By.ID, "cell-info").text
    Select(browser.find_element(By.ID, "cell-type")).select_by_value("lymphocyte")
    wait.until(EC.text_to_be_present_in_element((By.ID, "type-counts"), "lymphocyte 1"))
    assert "neutrophil" not in browser.find_element(By.ID, "type-counts").text
    assert "100.0 %" in browser.find_element(By.ID, "differential-table").text
    wait.until(EC.text_to_be_present_in_element((By.ID, "cell-history"), "admin: type"))
    assert browser.find_elements(By.CSS_SELECTOR, '#overlay rect[data-class="lymphocyte"]')
    shot(browser, "viewer_corrected.png")

    browser.find_element(By.CSS_SELECTOR, "h1 a").click()
    wait.until(EC.presence_of_element_located((By.ID, "export-labelme"))).click()
    downloads = tmp_path / "downloads"
    for _ in range(300):
        done = [p for p in downloads.glob("*.zip")] if downloads.exists() else []
        if done:
            break
        time.sleep(0.1)
    assert done, "the labelme export was not downloaded"
    z = zipfile.ZipFile(io.BytesIO(done[0].read_bytes()))
    (document,) = [json.loads(z.read(n)) for n in z.namelist() if n.endswith(".json")]
    assert sorted(s["label"] for s in document["shapes"] if s["label"] not in ("RBC", "Platelets")) == ["lymphocyte"]
    assert len(document["shapes"]) == 36 and document["imageWidth"] == 640
