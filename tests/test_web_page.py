"""网页聊天：用无头 Chromium（Debian 的 chromium + chromedriver，由 selenium 驱动）打开页面，
发一句话，看着回答一段一段流式出现，再发第二句（多轮），最后点“新对话”。

需要：apt-get install chromium chromium-driver；pip install selenium。缺了就跳过。
标记为 browser：默认的 `pytest` 不跑它，`pytest -m browser tests/test_web_page.py` 才跑。

顺便可以拍文档里的截图：
    TOWERGPT_WEB_CKPT=runs/quickstart/sft TOWERGPT_WEB_SCREENSHOT=docs/images/web_chat.png \\
        python -m pytest -m browser tests/test_web_page.py
"""

import os
import shutil
import tempfile
import time

import pytest

pytestmark = pytest.mark.browser

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("没有 chromium / chromedriver（apt-get install chromium chromium-driver）", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from conftest import tiny_gpt  # noqa: E402
from test_serve import LiveServer  # noqa: E402
from towergpt.checkpoint import load, resolve_checkpoint  # noqa: E402
from towergpt.server.launch import default_model_name  # noqa: E402
from towergpt.server.app import create_app  # noqa: E402
from towergpt.server.settings import ServerSettings  # noqa: E402
from towergpt.tokenizer import Tokenizer  # noqa: E402

SCREENSHOT = os.environ.get("TOWERGPT_WEB_SCREENSHOT")
TRAINED_CKPT = os.environ.get("TOWERGPT_WEB_CKPT")      # 给了就用训练好的模型（拍截图用）


@pytest.fixture(scope="module")
def server(news_tokenizer_dir):
    name = "towergpt-web-test"
    if TRAINED_CKPT:
        model, tokenizer = load(TRAINED_CKPT)
        name = default_model_name(resolve_checkpoint(TRAINED_CKPT))
    else:
        tokenizer = Tokenizer.load(news_tokenizer_dir)
        model = tiny_gpt(tokenizer.vocab_size, max_seq_len=256)
        # 每次前向慢 15 ms：回答要好几百毫秒才说完，才看得到“说到一半”的样子
        model.register_forward_pre_hook(lambda module, inputs: time.sleep(0.015))
    with LiveServer(create_app(model, tokenizer, ServerSettings(model_name=name))) as live:
        yield live


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="towergpt-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", f"--user-data-dir={profile}", "--window-size=1000,720", "--lang=zh-CN"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def assistant_rows(driver):
    return driver.find_elements(By.CSS_SELECTOR, ".message.assistant")


def ask(driver, text, wait_s=60):
    """输入一句话并回车；先等到回答“说到一半”（流式），再等它说完，返回回答气泡的文字。"""
    before = len(assistant_rows(driver))
    box = driver.find_element(By.ID, "input")
    driver.execute_script("arguments[0].value = arguments[1];", box, text)
    box.send_keys(Keys.END, Keys.ENTER)
    wait = WebDriverWait(driver, wait_s, poll_frequency=0.02)
    row = wait.until(lambda d: assistant_rows(d)[before] if len(assistant_rows(d)) > before else None)
    if not TRAINED_CKPT:
        # 还在生成，气泡里却已经有字：这就是流式
        wait.until(lambda d: row.get_attribute("data-state") == "streaming" and row.text.strip())
    wait.until(lambda d: row.get_attribute("data-state") in ("done", "error"))
    assert row.get_attribute("data-state") == "done", driver.find_element(By.ID, "status").text
    return row


def test_page_streams_a_reply_keeps_history_and_starts_over(server, browser):
    started = time.perf_counter()
    browser.get(server.url + "/")
    assert browser.title == "TowerGPT 聊天"
    WebDriverWait(browser, 20).until(lambda d: "towergpt-web-test" in d.find_element(By.ID, "model-name").text
                                     or TRAINED_CKPT)
    if TRAINED_CKPT:
        browser.execute_script("const t = document.getElementById('temperature');"
                               "t.value = '0'; t.dispatchEvent(new Event('input'));")
    else:
        max_tokens = browser.find_element(By.ID, "max-tokens")
        max_tokens.clear()
        max_tokens.send_keys("30")

    first = ask(browser, "这条评论是正面还是负面？\n房间很干净，服务员也很热情，下次还来。")
    assert first.find_element(By.CLASS_NAME, "bubble").text.strip()
    if not TRAINED_CKPT:
        assert int(first.get_attribute("data-chunks")) > 3             # 回答是一段一段到的
    ask(browser, "这条评论是正面还是负面？\n客服态度很差，再也不会买了。")
    history = browser.execute_script("return state.history.map(m => m.role);")
    assert history == ["user", "assistant", "user", "assistant"]      # 第二轮带着第一轮的历史
    assert browser.find_elements(By.CLASS_NAME, "note") == []         # 没有因为上下文不够而丢掉历史
    if SCREENSHOT:
        browser.save_screenshot(SCREENSHOT)

    browser.find_element(By.ID, "new-chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".message") == []
    assert browser.execute_script("return state.history.length;") == 0
    print(f"\nbrowser test: {time.perf_counter() - started:.1f} s")
