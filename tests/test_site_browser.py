"""The microscope's site in a real browser: headless Chromium through Selenium opens every page
from file://, as a reader does with no server, and presses its keys.

Skipped when selenium, Chromium or chromedriver is missing, unless FVIS_BROWSER_TESTS=required
(as .ci/run sets once the browser is installed): then that is a failure. check_site does the
checks that hold for any site, so a test of a real `fvis microscope` build can call it too.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import unquote, urlsplit

import pytest
from test_site import CONV, LOGITS, make_site

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError as exc:  # reported by start_driver, as a skip or (when required) a failure
    SELENIUM_MISSING: str | None = f"selenium is not installed ({exc})"
else:
    SELENIUM_MISSING = None

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WAIT = 10  # seconds for a page, its pictures or a key's navigation
PNG = b"\x89PNG\r\n\x1a\n"

# Every picture of the page decoded, once lazy ones are asked for at once.
EAGER = "document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; });"
LOADED = "return Array.from(document.images).every(i => i.complete);"
BROKEN = "return Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src);"
# Every address the page names (links, pictures, stylesheet, script), resolved as the browser does.
ADDRESSES = """return Array.from(document.querySelectorAll('[href], [src]'), e =>
    new URL(e.getAttribute('href') || e.getAttribute('src'), document.baseURI).href);"""
OURS = "return !!document.querySelector('meta[name=generator][content^=\"fvis\"]');"


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail where the browser tests are required."""
    if os.environ.get("FVIS_BROWSER_TESTS") == "required":
        pytest.fail(f"FVIS_BROWSER_TESTS=required, but {reason}", pytrace=False)
    pytest.skip(reason)


def start_driver() -> WebDriver:
    """Headless Chromium with its console log kept; never asks the network for a driver (the
    chromedriver on PATH is named, so Selenium Manager stays idle)."""
    if SELENIUM_MISSING:
        unavailable(SELENIUM_MISSING)
    browser = next(filter(None, map(shutil.which, BROWSERS)), None)
    if browser is None:
        unavailable(f"no browser on PATH ({', '.join(BROWSERS)}): apt-get install chromium")
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        unavailable("no chromedriver on PATH: apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,900")
    options.binary_location = browser
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    except WebDriverException as exc:
        unavailable(f"{browser} with {chromedriver} did not start: {' '.join(str(exc).split())}")


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    browser = start_driver()
    yield browser
    browser.quit()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_site(tmp_path_factory.mktemp("site"))


# ----------------------------------------------------------------------------- any site


def check_site(driver: WebDriver, folder: Path) -> None:
    """Every page of the site in `folder` opens from file:// as an fvis page, with no error on
    the console, every picture decoded, and every address it names a file of the site."""
    pages = sorted(folder.rglob("*.html"))
    assert folder / "index.html" in pages, f"{folder}: no index.html"
    driver.get_log("browser")  # what came before is not the site's
    problems = [problem for page in pages for problem in page_problems(driver, folder, page)]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)


def page_problems(driver: WebDriver, folder: Path, page: Path) -> list[str]:
    """What is wrong with one page, each as a line naming it."""
    name = page.relative_to(folder).as_posix()
    driver.get(page.as_uri())
    if not driver.execute_script(OURS) or not driver.title:
        return [f"{name}: not an fvis page (title {driver.title!r}): an error page?"]
    problems = [f"{name}: {picture} not loaded" for picture in pictures_loaded(driver)]
    for address in driver.execute_script(ADDRESSES):
        problem = address_problem(folder, address)
        if problem:
            problems.append(f"{name}: {problem}")
    for entry in driver.get_log("browser"):
        if entry["level"] == "SEVERE":
            problems.append(f"{name}: console: {entry['message']}")
    return problems


def pictures_loaded(driver: WebDriver) -> list[str]:
    """Load every picture of the page now (lazy ones too); those that did not decode."""
    driver.execute_script(EAGER)
    WebDriverWait(driver, WAIT).until(lambda d: d.execute_script(LOADED))
    return list(driver.execute_script(BROKEN))


def address_problem(folder: Path, address: str) -> str | None:
    """Why an address a page names is wrong: outside the site, or no such file."""
    parts = urlsplit(address)
    if parts.scheme == "data":
        return None
    if parts.scheme != "file":
        return f"{address} is not in the site (pages must load nothing from a network)"
    target = Path(unquote(parts.path)).resolve()
    if folder.resolve() not in target.parents:
        return f"{address} is outside the site's folder"
    return None if target.is_file() else f"{address}: no such file"


# ----------------------------------------------------------------------------- the synthetic site


def test_every_page_loads_cleanly(driver: WebDriver, folder: Path) -> None:
    check_site(driver, folder)


def press(driver: WebDriver, key: str, modifier: str | None = None) -> None:
    actions = ActionChains(driver)
    if modifier:
        actions.key_down(modifier)
    actions.send_keys(key)
    if modifier:
        actions.key_up(modifier)
    actions.perform()


def arrives(driver: WebDriver, path: Path) -> None:
    """Wait until the browser shows `path`."""
    target = path.as_uri()
    WebDriverWait(driver, WAIT).until(lambda d: d.current_url.split("#")[0] == target)


def test_keys_move_between_channels_and_up(driver: WebDriver, folder: Path) -> None:
    layer = folder / CONV
    driver.get((layer / "0002.html").as_uri())
    for key, page in [
        (Keys.ARROW_RIGHT, "0003.html"),
        (Keys.ARROW_LEFT, "0002.html"),
        ("j", "0003.html"),
        ("k", "0002.html"),
        ("u", "index.html"),
    ]:
        press(driver, key)
        arrives(driver, layer / page)
    press(driver, Keys.ARROW_RIGHT)  # on a layer's page: the next layer, and up to the index
    arrives(driver, folder / LOGITS / "index.html")
    press(driver, "u")
    arrives(driver, folder / "index.html")


def stays(driver: WebDriver, key: str, modifier: str | None = None) -> bool:
    """Whether pressing `key` leaves the browser on its page (a moment is allowed for it)."""
    driver.execute_script("window.stayed = true;")
    press(driver, key, modifier)
    time.sleep(0.5)
    return bool(driver.execute_script("return window.stayed === true;"))


def test_keys_stop_at_the_ends_and_with_a_modifier(driver: WebDriver, folder: Path) -> None:
    driver.get((folder / CONV / "0000.html").as_uri())
    assert stays(driver, Keys.ARROW_LEFT)
    assert stays(driver, Keys.ARROW_RIGHT, Keys.CONTROL)
    driver.get((folder / LOGITS / "0002.html").as_uri())
    assert stays(driver, Keys.ARROW_RIGHT)


def channels_shown(driver: WebDriver) -> list[int]:
    return [
        int(li.get_attribute("data-channel"))
        for li in driver.find_elements(By.CSS_SELECTOR, "#units li")
    ]


def test_sorting_by_objective_reorders_and_is_kept(driver: WebDriver, folder: Path) -> None:
    driver.get((folder / CONV / "index.html").as_uri())
    assert channels_shown(driver) == list(range(6))
    Select(driver.find_element(By.ID, "sort")).select_by_value("objective")
    means = {c: (c * 7) % 11 + 0.125 for c in range(6)}
    highest = sorted(means, key=lambda c: -means[c])
    assert channels_shown(driver) == highest
    assert driver.current_url.endswith("#sort=objective")
    driver.refresh()  # the order is in the address: Back from a channel finds it again
    assert channels_shown(driver) == highest
    Select(driver.find_element(By.ID, "sort")).select_by_value("objective-low")
    assert channels_shown(driver) == highest[::-1]
    Select(driver.find_element(By.ID, "sort")).select_by_value("channel")
    assert channels_shown(driver) == list(range(6))
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_screenshots_of_the_index_and_a_channel(
    driver: WebDriver, folder: Path, tmp_path: Path
) -> None:
    """Saved where FVIS_SCREENSHOTS names a folder too: the README shows them."""
    folders = [tmp_path]
    if os.environ.get("FVIS_SCREENSHOTS"):
        folders.append(Path(os.environ["FVIS_SCREENSHOTS"]))
    for name, page in [
        ("microscope-index.png", folder / "index.html"),
        ("microscope-channel.png", folder / CONV / "0003.html"),
    ]:
        driver.get(page.as_uri())
        assert pictures_loaded(driver) == []
        for target in folders:
            target.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(str(target / name))
            data = (target / name).read_bytes()
            assert data.startswith(PNG) and len(data) > 10_000
