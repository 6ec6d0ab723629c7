"""`yayi web`: the chat page in a real browser (Debian's Chromium, driven by selenium) on a tiny model taught to answer.

The page is checked as a person uses it: type, press Enter or Send, read the streamed answer; the answers must be
`yayi chat --greedy`'s, token for token.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ANSWER, QUESTION, OutputReader, alive, free_port, start, teach, tree, wait_until, yayi
from yayi_cli.web.client import api_base, as_messages, as_text
from yayi_cli.web.options import WebOptions


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FOLLOW_UP = "然后呢？"
"""Not taught: the tiny model's answer to it depends on what came before."""
LONG_QUESTION, LONG_ANSWER = "从一数到很多", "一二三四五六七八九十" * 25
MAX_NEW_TOKENS = 400
SCREENSHOT = os.environ.get("YAYI_WEB_SCREENSHOT")
"""Also keep the page's picture here (docs/web.png comes from a run with it set)."""


# --- without a browser ------------------------------------------------------------------------------


@pytest.mark.parametrize(("chosen", "words"), [
    ({}, "give --model MODEL to chat with, or --api URL"),
    ({"model": "m", "api": "http://127.0.0.1:8000"}, "not both"),
    ({"api": "127.0.0.1:8000"}, "expected an http:// or https:// address"),
    ({"api": "http://h:1", "trust_remote_code": True}, "--trust-remote-code only matters with --model"),
    ({"model": "m", "top_p": 0}, "--top-p"),
])
def test_what_cannot_work_is_refused_in_one_line(chosen, words):
    result = yayi("web", *[part for key, value in chosen.items() for part in
                           ([f"--{key.replace('_', '-')}"] if value is True else [f"--{key.replace('_', '-')}", str(value)])])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and words in result.stderr, result.output


def test_the_page_sends_its_system_text_as_it_is_even_empty_and_reads_gradio_message_parts():
    history = [{"role": "user", "content": [{"type": "text", "text": "问"}]}, {"role": "assistant", "content": "答"},
               {"role": "user", "content": "再问"}]
    assert as_messages(history, "") == [{"role": "system", "content": ""}, {"role": "user", "content": "问"},
                                        {"role": "assistant", "content": "答"}, {"role": "user", "content": "再问"}]
    assert as_text([{"type": "text", "text": "a"}, {"type": "file"}, {"type": "text", "text": "b"}]) == "ab"
    assert api_base("http://h:8000/") == api_base("http://h:8000/v1") == "http://h:8000/v1"
    assert WebOptions(api="http://h:1").host == "127.0.0.1"  # the network only when asked


def test_the_page_and_its_engine_are_reached_without_a_proxy(monkeypatch):
    from yayi_cli.web.command import local_without_proxy

    monkeypatch.setenv("NO_PROXY", "intranet.example,localhost")
    monkeypatch.delenv("no_proxy", raising=False)
    local_without_proxy()
    assert os.environ["NO_PROXY"] == "intranet.example,localhost,127.0.0.1"
    assert os.environ["no_proxy"] == "127.0.0.1,localhost"


# --- in a browser ------------------------------------------------------------------------------------

needs_browser = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                        reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


@pytest.fixture(scope="module")
def taught(tiny_model_dirs, tmp_path_factory) -> Path:
    """The tiny Llama taught a greeting and one long answer (to stop)."""
    directory = Path(shutil.copytree(tiny_model_dirs["llama"], tmp_path_factory.mktemp("web") / "tiny-yayi"))
    teach(directory, None, [(QUESTION, ANSWER), (LONG_QUESTION, LONG_ANSWER)], steps=160)
    return directory


def chat_answers(model: Path, conversations: list[list[dict]]) -> list[str]:
    """What `yayi chat --greedy` answers to each conversation (the page's settings: no repetition penalty, as
    OpenAI's API has none)."""
    stdin = "".join(json.dumps({"messages": messages}, ensure_ascii=False) + "\n" for messages in conversations)
    result = subprocess.run(
        [sys.executable, "-m", "yayi_cli", "chat", "--model", str(model), "--greedy", "--repetition-penalty", "1.0",
         "--max-new-tokens", str(MAX_NEW_TOKENS), "--jsonl"], input=stdin, capture_output=True, text=True, check=True)
    return [json.loads(line)["answer"] for line in result.stdout.splitlines()]


def start_web(*args: str, log: Path) -> tuple[subprocess.Popen, str]:
    """`yayi web` on a free port, until it prints the page's address."""
    port = free_port()
    with log.open("w") as stderr:
        process = start([sys.executable, "-m", "yayi_cli", "web", "--port", str(port), *args],
                        stdout=subprocess.PIPE, stderr=stderr, text=True)
    reader = OutputReader(process.stdout)
    try:
        line = reader.wait_for(lambda text: text.startswith("chat page for "), timeout=180)
    except AssertionError as error:
        process.kill()
        pytest.fail(f"yayi web did not start ({error}): {log.read_text()[-3000:]}")
    assert f"at http://127.0.0.1:{port} " in line
    return process, f"http://127.0.0.1:{port}"


def stop_with_ctrl_c(process: subprocess.Popen, url: str) -> None:
    """Ctrl-C ends the page and the engine: exit 130, no process left (so the engine's port is free), the page's port
    free."""
    family = tree(process.pid)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=30) == 130
    wait_until(lambda: not any(alive(pid) for pid in family), 15, lambda: f"still running: {family}")
    with socket.socket() as probe:  # bound as the page bound it (SO_REUSEADDR, like uvicorn): it is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))


@pytest.fixture(scope="module")
def served_page(taught, tmp_path_factory):
    """`yayi web --model` greedy (temperature 0), stopped with Ctrl-C at the end."""
    log = tmp_path_factory.mktemp("web-log") / "stderr.txt"
    process, url = start_web("--model", str(taught), "--temperature", "0", "--max-new-tokens", str(MAX_NEW_TOKENS),
                             log=log)
    yield {"url": url, "log": log}
    stop_with_ctrl_c(process, url)


@pytest.fixture
def browser():
    """Headless Chromium, its language chosen on opening: `browser("zh-CN")`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opened = []

    def open_browser(language: str = "en-US"):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1000",
                         f"--lang={language}"):
            options.add_argument(argument)
        options.add_experimental_option("prefs", {"intl.accept_languages": language})
        opened.append(webdriver.Chrome(service=Service(CHROMEDRIVER), options=options))
        return opened[-1]

    yield open_browser
    for driver in opened:
        driver.quit()


class Page:
    """The chat page as a person sees it, by the ids it gives its elements (web/page.py ELEMENT_IDS)."""

    def __init__(self, driver, url: str) -> None:
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        # the page redraws its elements as an answer streams: a read that meets a replaced one is tried again
        self.wait = WebDriverWait(driver, 120, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
        driver.get(url)
        self.wait.until(lambda _: self.shown("#message textarea") and self.shown("#send"))

    def elements(self, css: str) -> list:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def shown(self, css: str):
        found = [element for element in self.elements(css) if element.is_displayed()]
        return found[0] if found else None

    def answers(self) -> list[str]:
        return [element.text.strip() for element in self.elements('#chat [data-testid="bot"]')]

    def questions(self) -> list[str]:
        return [element.text.strip() for element in self.elements('#chat [data-testid="user"]')]

    def status(self) -> str:
        shown = self.shown("#status")
        return shown.text.strip() if shown else ""

    def idle(self) -> bool:
        """Send is back and Stop gone: no answer is coming."""
        return self.shown("#send") is not None and self.shown("#stop") is None

    def click(self, css: str) -> None:
        def clicked(_) -> bool:
            element = self.shown(css)
            if element is not None:
                element.click()
            return element is not None

        self.wait.until(clicked)

    def ask(self, text: str, *, enter: bool = True) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.shown("#message textarea")
        box.clear()
        box.send_keys(text)
        if enter:
            box.send_keys(Keys.ENTER)
        else:
            self.click("#send")

    def answered(self, count: int) -> str:
        """The `count`th answer, once it is complete."""
        self.wait.until(lambda _: len(self.answers()) == count and self.idle())
        return self.answers()[-1]

    def unchanging(self, read, polls: int = 5):
        """`read()` once it gave the same value `polls` times in a row (0.1 s apart)."""
        seen: list = []

        def settled(_) -> bool:
            seen.append(read())
            return len(seen) >= polls and all(value == seen[-1] for value in seen[-polls:])

        self.wait.until(settled)
        return seen[-1]


@pytest.mark.launch
@needs_browser
def test_the_page_answers_as_yayi_chat_keeps_the_history_and_stops_a_long_answer(served_page, taught, browser, tmp_path):
    from yayi_cli.core.prompt import resolve_template

    system = resolve_template(None, str(taught))[0].system
    greeting = [{"role": "user", "content": QUESTION}]
    expected, follow_up, without_history, long = chat_answers(taught, [
        greeting, [*greeting, {"role": "assistant", "content": ANSWER}, {"role": "user", "content": FOLLOW_UP}],
        [{"role": "user", "content": FOLLOW_UP}], [{"role": "user", "content": LONG_QUESTION}]])
    assert expected == ANSWER and follow_up != without_history  # the model: its answer to the follow-up needs history

    driver = browser()
    page = Page(driver, served_page["url"])
    assert page.shown("#model-name").text.strip() == "yayi · tiny-yayi"
    assert page.elements("#system textarea")[0].get_attribute("value") == system  # the template's, editable
    page.ask(QUESTION)
    assert page.answered(1) == expected
    driver.save_screenshot(str(tmp_path / "page.png"))
    if SCREENSHOT:
        driver.save_screenshot(SCREENSHOT)
    page.ask(FOLLOW_UP, enter=False)
    assert page.answered(2) == follow_up  # the page sent the first exchange with it
    assert page.questions() == [QUESTION, FOLLOW_UP]

    page.click("#clear")  # a new conversation
    page.wait.until(lambda _: not page.answers() and not page.questions())
    page.ask(LONG_QUESTION)
    page.wait.until(lambda _: len(page.answers()) == 1 and len(page.answers()[-1]) >= 10)
    page.click("#stop")
    page.wait.until(lambda _: page.idle())
    stopped = page.unchanging(lambda: page.answers()[-1])
    assert 10 <= len(stopped) < len(long) and long.startswith(stopped)
    assert not [tracker for tracker in page.elements('#chat [data-testid="status-tracker"]') if "Error" in tracker.text]

    page.ask("<|End|>")  # a marker: the server refuses it, and the page says why, keeping the question
    page.wait.until(lambda _: page.status())
    assert page.status().startswith("⚠️ the server refused the request (HTTP 400)"), page.status()
    assert "Traceback" not in driver.page_source and page.answers() == [stopped]
    assert page.shown("#message textarea").get_attribute("value") == "<|End|>"


@pytest.mark.launch
@needs_browser
def test_a_chinese_browser_gets_chinese_labels(served_page, browser):
    page = Page(browser("zh-CN"), served_page["url"])
    assert [page.shown(f"#{name}").text.strip() for name in ("send", "clear")] == ["发送", "清空"]


@pytest.mark.launch
@needs_browser
def test_a_server_that_is_down_is_a_readable_message_on_the_page(browser, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    process, url = start_web("--api", down, log=tmp_path / "stderr.txt")
    try:
        assert f"{down}/v1 does not answer yet" in (tmp_path / "stderr.txt").read_text()
        page = Page(browser(), url)
        page.ask(QUESTION)
        page.wait.until(lambda _: page.status())
        assert page.status() == (f"⚠️ the server at {down}/v1 does not answer (Connection refused); start it, or check "
                                 "the address")
        assert not page.answers() and page.shown("#message textarea").get_attribute("value") == QUESTION
    finally:
        stop_with_ctrl_c(process, url)
