"""The review page in a real browser (docs/review.md): a headless Chromium (the distribution's
package, driven through its chromedriver; nothing downloads a browser) against the real
``llava-batch serve`` process, on SQLite and PostgreSQL. It loads the jobs page, opens the job,
filters to failures, reviews 10 items by keyboard alone, edits one, exports and compares the
export with the rows; on every page, the script that the job's file names, custom ids, name,
metadata and outputs carry must not run. It takes the screenshot docs/review.md shows.

A machine without Chromium or chromedriver fails here, loudly: ``.ci/run`` installs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from jobs.db import SessionFactory
from jobs.review import ItemFilter, item_detail, list_items
from storage import Blobs
from tests.integration.cli.conftest import CLI
from tests.integration.web.conftest import (
    HOSTILE,
    HOSTILE_FILE,
    SCRIPT,
    ReviewJob,
    build_review_job,
)
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[3]
SCREENSHOT = ROOT / "docs" / "images" / "review.png"
REVIEWER = "grace"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless Chromium for the module (each start costs about a second)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail(
            "the browser tests need chromium and chromedriver (apt-get install chromium "
            "chromium-driver; .ci/run installs them)",
            pytrace=False,
        )
    options = Options()
    options.binary_location = chromium  # given, so Selenium Manager looks nothing up
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    chrome.set_page_load_timeout(30)
    yield chrome
    chrome.quit()


@contextmanager
def _serving(env: dict[str, str], logs: Path) -> Iterator[str]:
    """``llava-batch serve`` on a free loopback port; its base URL once it answers."""
    port = free_port()
    log = (logs / "serve.log").open("w")
    process = subprocess.Popen(
        [CLI, "serve", "--port", str(port), "--reviewer", REVIEWER],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/fleet", timeout=5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError((logs / "serve.log").read_text()) from None
            time.sleep(0.1)
    try:
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _env(cli_env: dict[str, str], db_url: str, tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        **cli_env,
        "LLAVA_BATCH_DATABASE_URL": db_url,
        "LLAVA_BATCH_STORAGE_URL": str(tmp_path / "blobs"),
        **more,
    }


@pytest.fixture
def server(
    db_url: str, session_factory: SessionFactory, tmp_path: Path, cli_env: dict[str, str]
) -> Iterator[str]:
    """``serve`` over the test's (migrated) database and store."""
    with _serving(_env(cli_env, db_url, tmp_path), tmp_path) as base:
        yield base


def _ran_nothing(browser: WebDriver) -> None:
    """No script of the job's data ran: no flag set, no alert open."""
    assert browser.execute_script("return window.__pwned === undefined") is True
    try:
        alert = browser.switch_to.alert
    except NoAlertPresentException:
        return
    raise AssertionError(f"an alert ran: {alert.text}")


def _keys(browser: WebDriver, keys: str) -> None:
    ActionChains(browser).send_keys(keys).perform()


def _badges(browser: WebDriver) -> list[str]:
    return [badge.text for badge in browser.find_elements(By.CSS_SELECTOR, "#items .review")]


def test_review_a_job_by_keyboard_in_a_real_browser(
    browser: WebDriver,
    server: str,
    session_factory: SessionFactory,
    blobs: Blobs,
    tmp_path: Path,
    db_url: str,
    cli_env: dict[str, str],
) -> None:
    job: ReviewJob = build_review_job(session_factory, blobs, tmp_path)
    # a page being replaced (a form's redirect) is waited through
    wait = WebDriverWait(
        browser, 20, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
    )

    # the jobs page
    browser.get(server + "/")
    row = browser.find_element(By.ID, f"job-{job.job_id}")
    assert row.find_element(By.CSS_SELECTOR, ".status").text == "completed"
    assert HOSTILE in row.text  # its metadata, as text
    _ran_nothing(browser)

    # open the job, filter to its failures
    row.find_element(By.CSS_SELECTOR, "a.job-link").click()
    assert browser.find_element(By.ID, "banner").text == "24 of 24 shown"
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#items .name")]
    assert HOSTILE_FILE in names
    custom_ids = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#items .custom-id")]
    assert f"{SCRIPT}-0" in custom_ids
    _ran_nothing(browser)
    browser.find_element(By.CSS_SELECTOR, 'a[data-status="failed"]').click()
    assert browser.find_element(By.ID, "banner").text == "12 of 24 shown"
    failures = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#items .failure")]
    assert len(failures) == 12 and HOSTILE in failures[0]
    assert all("image_decode_error" in f or "output_truncated" in f for f in failures)
    _ran_nothing(browser)

    # review 10 of them by keyboard alone: j/k move, y approves, n rejects
    _keys(browser, "jk" + "ynyynyynyy")
    wait.until(lambda b: _badges(b)[:10].count("approved") == 7)
    _keys(browser, "kn")  # back to the 10th: rejected after all
    expected = [{"y": "approved", "n": "rejected"}[key] for key in "ynyynyynyn"]
    wait.until(lambda b: _badges(b)[:10] == expected)
    page = list_items(session_factory, job.job_id, ItemFilter(status="failed"))
    assert [r.decision for r in page.rows] == [*expected, None, None]
    assert {r.reviewer for r in page.rows[:10]} == {REVIEWER}
    assert [r.item_id for r in page.rows] == job.failed
    _ran_nothing(browser)

    # the review chip narrows the failures to those left
    browser.find_element(By.CSS_SELECTOR, '#filters a[data-review="unreviewed"]').click()
    assert browser.find_element(By.ID, "banner").text == "2 of 24 shown"

    # edit one: the first item (its output is script), by keyboard too
    browser.get(server + f"/jobs/{job.job_id}")
    _keys(browser, "e")
    wait.until(lambda b: b.switch_to.active_element.tag_name == "textarea")
    _ran_nothing(browser)
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).perform()
    _keys(browser, "a corrected caption" + Keys.TAB + Keys.ENTER)
    wait.until(lambda b: "edit saved" in b.find_element(By.TAG_NAME, "main").text)
    edited = item_detail(session_factory, job.item_ids[0])
    assert edited is not None
    assert (edited.edited_text, edited.result_text) == ("a corrected caption", HOSTILE)
    assert (edited.decision, edited.reviewer) == ("approved", REVIEWER)
    assert "a corrected caption" in browser.find_element(By.CSS_SELECTOR, ".edited").text
    _ran_nothing(browser)

    # the item pages of the markup-named file and of a hostile custom id run nothing either
    browser.get(server + f"/items/{job.item_ids[2]}")
    assert HOSTILE_FILE in browser.find_element(By.TAG_NAME, "h1").text
    _ran_nothing(browser)
    browser.get(server + f"/items/{job.item_ids[3]}")
    assert browser.find_element(By.CSS_SELECTOR, ".custom-id").text == f"{SCRIPT}-3"
    _ran_nothing(browser)

    # the page a screenshot shows: the job, its failures filtered, reviewed
    browser.get(server + f"/jobs/{job.job_id}?status=failed")
    _ran_nothing(browser)
    shot = tmp_path / "review.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if "sqlite" in db_url and (not SCREENSHOT.exists() or os.environ.get("UPDATE_SCREENSHOTS")):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)

    # export: the page's link and `llava-batch results` give the same rows, the rows reviewed
    with urllib.request.urlopen(f"{server}/jobs/{job.job_id}/export", timeout=30) as response:
        exported = response.read().decode()
    env = _env(cli_env, db_url, tmp_path)
    cli = subprocess.run(
        [CLI, "results", job.job_id], env=env, capture_output=True, text=True, timeout=120
    )
    assert cli.returncode == 0, cli.stderr
    assert exported == cli.stdout
    lines = [json.loads(line) for line in exported.splitlines()]
    rows = list_items(session_factory, job.job_id, ItemFilter()).rows
    assert [line["item_id"] for line in lines] == [row.item_id for row in rows]
    for line, row in zip(lines, rows, strict=True):
        assert (line["status"], line["error_code"]) == (row.status, row.error_code)
        assert line["custom_id"] == row.custom_id
        assert line["result"] == row.result_text  # the model's own, edited or not
        assert (line["decision"], line["reviewer"]) == (row.decision, row.reviewer)
        assert line["edited"] == row.edited_text
    assert sum(line["decision"] is not None for line in lines) == 11  # 10 by keys, 1 edited
    assert [line["edited"] for line in lines if line["edited"]] == ["a corrected caption"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_with_a_token_the_page_asks_for_it_once(
    browser: WebDriver,
    db_url: str,
    session_factory: SessionFactory,
    tmp_path: Path,
    cli_env: dict[str, str],
) -> None:
    token = "correct-horse-battery-staple"
    env = _env(cli_env, db_url, tmp_path, LLAVA_BATCH_SERVE_TOKEN=token)
    with _serving(env, tmp_path) as base:
        browser.get(base + "/")
        browser.delete_all_cookies()  # another test's server, on another port, set some
        browser.get(base + "/")
        assert browser.current_url == base + "/login"
        wait = WebDriverWait(browser, 20, ignored_exceptions=(NoSuchElementException,))

        def sign_in(given: str) -> None:
            field = browser.find_element(By.NAME, "token")
            field.clear()
            field.send_keys(given + Keys.ENTER)

        sign_in("a guess")
        wait.until(lambda b: "That is not the token." in b.find_element(By.ID, "error").text)
        sign_in(token)
        wait.until(lambda b: b.current_url == base + "/")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Jobs"
        browser.get(base + "/fleet")  # asked once: the cookie keeps the session
        assert browser.current_url == base + "/fleet"
        session = browser.get_cookie("llava_batch_session")
        assert session is not None and token not in session["value"]
        assert (session["httpOnly"], session["secure"], session["sameSite"]) == (
            True,
            True,
            "Strict",
        )
        assert browser.execute_script("return document.cookie") == ""  # no script reads them
        # Sign out: a form the browser posts with its CSRF field and Origin; the session ends
        browser.find_element(By.CSS_SELECTOR, "form.sign-out button").click()
        wait.until(lambda b: b.current_url == base + "/login")
        assert browser.get_cookie("llava_batch_session") is None
        browser.get(base + "/fleet")
        assert browser.current_url == base + "/login"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_locate_item_shows_its_boxes_and_their_legend_in_a_real_browser(
    browser: WebDriver, server: str, session_factory: SessionFactory, blobs: Blobs, tmp_path: Path
) -> None:
    """Issue 26, point 5, in Chromium: the item page loads the picture with the boxes drawn
    (a real JPEG the browser decoded, at the image's size) and a legend that shows each
    expression, script included, as text; nothing of it runs. (The drawing itself, pixel by
    pixel and on both databases: test_web_pictures.py.)"""
    from tests.integration.web.conftest import LOCATE_BOXES, build_locate_item

    item_id = build_locate_item(session_factory, blobs, tmp_path)
    browser.get(f"{server}/items/{item_id}")
    legend = browser.find_elements(By.CSS_SELECTOR, "#boxes li")
    assert [entry.text for entry in legend] == [box["expression"] for box in LOCATE_BOXES]
    assert [entry.get_attribute("class") for entry in legend] == ["box-c0", "box-c1"]
    picture = browser.find_element(By.CSS_SELECTOR, "img.full")
    assert picture.get_attribute("src").endswith(f"/items/{item_id}/image?page=1&boxes=1")
    WebDriverWait(browser, 10).until(
        lambda b: b.execute_script("return arguments[0].complete", picture)
    )
    assert browser.execute_script("return arguments[0].naturalWidth", picture) == 400
    _ran_nothing(browser)
