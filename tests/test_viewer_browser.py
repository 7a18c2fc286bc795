"""The viewer of a live ``ns-train csd-edit`` run, driven in a real browser.

``ns-train csd-edit`` trains a tiny sphere scene on CPU with the embedded model and the viewer on a free port.
Debian's chromium and chromium-driver (``make test`` installs them) open the page headless through Selenium,
with background networking off and every host name except 127.0.0.1 unresolvable, so the browser reaches
nothing but the viewer. The tests check that:

- the run listens on 127.0.0.1 only;
- the CSD controls are in the "Custom Elements" panel, showing the run's settings;
- a prompt typed into the page reaches training: the read-only "CSD status" element reports the new prompt,
  and further updates are done with it.

A screenshot of the panel is saved to the test's temporary folder and, when ``CSD_ARTIFACTS`` is set, there too.
Without chromium these tests skip, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import unavailable

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts (ns-train)
START_TIMEOUT = 300  # seconds for ns-train to import, load the model and open the viewer (2 busy cores)
UPDATE_TIMEOUT = 180  # seconds for the page to show a change the run made
PROMPT, NEW_PROMPT = "make it night", "invert the colors"  # two instructions the embedded model knows
CSD_CONTROLS = ["CSD prompt", "Text guidance", "Image guidance", "Views (N)", "Mode", "Pause editing", "CSD status"]
STATUS = re.compile(r"prompt: (?P<prompt>.*) \| updates: (?P<updates>\d+) \| last update: (?P<last>.*)")

# The run: csd-edit with the embedded model, shrunk to a 32 px sphere scene, few rays and samples, 24 px edits.
TINY_RUN = [
    "--machine.device-type", "cpu", "--mixed-precision", "False", "--max-num-iterations", "1000000",
    "--steps-per-save", "1000000", "--steps-per-eval-batch", "1000000", "--steps-per-eval-image", "1000000",
    "--steps-per-eval-all-images", "1000000",
    "--pipeline.prompt", PROMPT, "--pipeline.diffusion-model", "embedded", "--pipeline.diffusion-dtype", "float32",
    "--pipeline.edit.guidance-scale", "6.5", "--pipeline.edit.image-guidance-scale", "1.25", "--pipeline.edit.batch",
    "2", "--pipeline.edit-rate", "2", "--pipeline.edit.steps", "1", "--pipeline.render-max-side", "24",
    "--pipeline.pretrain-steps", "0",
    "--pipeline.datamanager.train-num-rays-per-batch", "64", "--pipeline.datamanager.eval-num-rays-per-batch", "64",
    "--pipeline.model.eval-num-rays-per-chunk", "1024", "--pipeline.model.num-proposal-samples-per-ray", "16", "8",
    "--pipeline.model.num-nerf-samples-per-ray", "8", "--pipeline.model.lpips", "False",
]
SHOWN = {"Text guidance": "6.5", "Image guidance": "1.25", "Views (N)": "2", "Mode": "dataset", "CSD prompt": PROMPT}

# Headless chromium that talks to nobody but the viewer.
CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
    "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--disable-breakpad",
    "--metrics-recording-only", "--disable-features=OptimizationHints,MediaRouter,Translate",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--enable-unsafe-swiftshader",  # software WebGL for the viewer's 3D canvas
]


@pytest.fixture(scope="module")
def chromium() -> tuple[str, str]:
    """Paths of Debian's chromium and its chromedriver."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        unavailable(f"chromium ({browser}) and chromedriver ({driver}) are not both on PATH "
                    "(`make test` installs them on Debian: apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        unavailable("the selenium package is missing (it is in the dev extra)")
    return browser, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A live ``ns-train csd-edit`` run with its viewer: yields (process, port, log path)."""
    from csd_nerfstudio.scenes import write_sphere_scene

    root = tmp_path_factory.mktemp("viewer_run")
    scene = write_sphere_scene(root / "scene", views=8, size=32)
    port = free_port()
    log = root / "ns-train.log"
    cmd = [str(BIN / "ns-train"), "csd-edit", "--output-dir", str(root / "outputs"), "--vis", "viewer",
           "--viewer.websocket-port", str(port), *TINY_RUN, "--data", str(scene), "nerfstudio-data", "--eval-mode", "all"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               HF_HUB_OFFLINE="1", COLUMNS="120")
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ns-train exited ({proc.returncode}) before its viewer opened:\n{log_tail(log)}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"ns-train's viewer did not open within {START_TIMEOUT} s:\n{log_tail(log)}")
            time.sleep(1)
        yield proc, port, log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # ns-train and its data-loader workers: the group it was started in
            proc.wait(timeout=30)
        except ProcessLookupError:  # it had already exited (the failure above says why)
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def page(chromium, run, tmp_path_factory):
    """Headless chromium with the viewer's page open, once the "Custom Elements" panel has its controls."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    proc, port, log = run
    browser, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"]:
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager (which would look for drivers online) never runs.
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"http://127.0.0.1:{port}")
        wait_for(driver, lambda: len(panel_controls(driver)) > 0, log, "the Custom Elements panel to show controls")
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, log: Path, what: str, timeout: float = UPDATE_TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; ns-train log:\n{log_tail(log)}")
        time.sleep(0.5)


CUSTOM_ELEMENTS = "//div[contains(@class,'mantine-Paper-root')][./div[normalize-space(.)='Custom Elements']]"


def panel_controls(driver) -> dict:
    """{label: {value, checked, disabled}} of every control in the viewer's "Custom Elements" folder."""
    from selenium.webdriver.common.by import By

    folders = driver.find_elements(By.XPATH, CUSTOM_ELEMENTS)
    if not folders:
        return {}
    return driver.execute_script(
        """const out = {};
        for (const label of arguments[0].querySelectorAll('label')) {
          const row = label.closest('.mantine-Flex-root');
          const input = row && row.querySelector('input');
          if (input) out[label.textContent.trim()] = {value: input.value, checked: input.checked, disabled: input.disabled};
        }
        return out;""",
        folders[0],
    )


def control_input(driver, label: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(
        By.XPATH, f"{CUSTOM_ELEMENTS}//label[normalize-space(.)='{label}']/ancestor::div[contains(@class,'mantine-Flex-root')][1]//input"
    )


def status(driver) -> dict | None:
    match = STATUS.fullmatch(panel_controls(driver).get("CSD status", {}).get("value", ""))
    return None if match is None else {**match.groupdict(), "updates": int(match["updates"])}


def save_screenshot(driver, tmp_path: Path, name: str) -> Path:
    """Scroll the Custom Elements panel into view and save a PNG (also to $CSD_ARTIFACTS when set)."""
    from selenium.webdriver.common.by import By

    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", driver.find_element(By.XPATH, CUSTOM_ELEMENTS))
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), "chromium returned no screenshot"
    if os.environ.get("CSD_ARTIFACTS"):
        artifacts = Path(os.environ["CSD_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, artifacts / name)
    return path


# ------------------------------------------------------------------------------------------------- tests
def test_viewer_listens_on_localhost_only(run):
    import psutil

    proc, port, _ = run
    parent = psutil.Process(proc.pid)
    listening = [
        c.laddr for p in [parent, *parent.children(recursive=True)] for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert port in [addr.port for addr in listening], f"nothing of the run listens on port {port}: {listening}"
    assert all(addr.ip in ("127.0.0.1", "::1") for addr in listening), f"the run listens beyond loopback: {listening}"


def test_csd_controls_are_in_the_custom_elements_panel(page):
    controls = panel_controls(page)
    assert set(CSD_CONTROLS) <= controls.keys(), f"missing: {set(CSD_CONTROLS) - controls.keys()}"
    for label, value in SHOWN.items():
        assert controls[label]["value"] == value, (label, controls[label])
    assert controls["Pause editing"]["checked"] is False
    assert controls["CSD status"]["disabled"] and not controls["CSD prompt"]["disabled"]
    assert status(page)["prompt"] == PROMPT


def test_prompt_typed_in_the_page_reaches_training(page, run, tmp_path):
    from selenium.webdriver.common.keys import Keys

    _, _, log = run
    box = control_input(page, "CSD prompt")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(NEW_PROMPT)
    # The pipeline re-encodes the prompt and the page shows its status: the round trip page -> run -> page.
    changed = wait_for(page, lambda: (s := status(page)) and s["prompt"] == NEW_PROMPT and s, log,
                       f"'CSD status' to report the prompt {NEW_PROMPT!r}")
    # Training goes on with it: more updates, each one timed.
    later = wait_for(page, lambda: (s := status(page)) and s["updates"] > changed["updates"] and s, log,
                     f"an update after the prompt change (status was {changed})")
    assert later["prompt"] == NEW_PROMPT
    assert re.fullmatch(r"\d+\.\d\d s", later["last"]), later
    assert panel_controls(page)["CSD prompt"]["value"] == NEW_PROMPT
    shot = save_screenshot(page, tmp_path, "viewer_custom_elements.png")
    print(f"viewer screenshot: {shot}")
