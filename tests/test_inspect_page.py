"""检视器网页（/inspect）：在无头 Chromium 里输入一段文字、点“检视”，核对页面画出来的东西
与 /v1/inspect 给的报告一致——token 条、下一词预测、注意力热图（读回 canvas 的像素）、logit lens；
再确认模型给出的文字只当文字显示（"<script>" 不会变成页面里的元素）。

与 tests/test_web_page.py 一样标记为 browser，没有 chromium / chromedriver / selenium 时跳过
（浏览器和窗口就用那里的 browser fixture）。服务里是随机初始化的小模型，结果每次都一样。

顺便可以拍文档里的截图（训练好的模型检视“中国人民的艺术艺术”，选中最后一个 token）：
    TOWERGPT_WEB_CKPT=runs/quickstart/pretrain TOWERGPT_WEB_SCREENSHOT=docs/images/inspect.png \\
        python -m pytest -m browser tests/test_inspect_page.py
对话模型再加 TOWERGPT_INSPECT_CHAT=1：用对话模板检视一个问题，看模型打算怎样回答
    TOWERGPT_INSPECT_CHAT=1 TOWERGPT_WEB_CKPT=runs/quickstart/sft TOWERGPT_WEB_SCREENSHOT=docs/images/inspect_chat.png \\
        python -m pytest -m browser tests/test_inspect_page.py
"""

import json
import os
import re
import time

import pytest

import test_web_page                      # 没有浏览器时，import 它就会跳过本文件（与它同样的条件）

pytestmark = pytest.mark.browser

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from conftest import tiny_gpt  # noqa: E402
from test_serve import LiveServer, http  # noqa: E402
from towergpt.checkpoint import load, resolve_checkpoint  # noqa: E402
from towergpt.server.app import create_app  # noqa: E402
from towergpt.server.launch import default_model_name  # noqa: E402
from towergpt.server.settings import ServerSettings  # noqa: E402
from towergpt.tokenizer import Tokenizer  # noqa: E402

browser = test_web_page.browser           # 同一个无头 Chromium fixture
SCREENSHOT = test_web_page.SCREENSHOT
TRAINED_CKPT = test_web_page.TRAINED_CKPT
CHAT_SHOT = bool(os.environ.get("TOWERGPT_INSPECT_CHAT"))
# 截图里选哪一层、哪个头（0 起）：普通文本看第 1 层的头 2（多半看前一个 token）；
# 对话看第 2 层的头 1（最后一个 token 最看重评论里的“热情”“很干净”）
SHOT_LAYER, SHOT_HEAD = (1, 1) if CHAT_SHOT else (0, 2)
BYTE_PIECE = re.compile(r"^<0x([0-9A-F]{2})>$")


@pytest.fixture(scope="module")
def server(news_tokenizer_dir):
    settings = ServerSettings(model_name="towergpt-inspect-test")
    if TRAINED_CKPT:
        model, tokenizer = load(TRAINED_CKPT)
        settings.model_name = default_model_name(resolve_checkpoint(TRAINED_CKPT))
    else:
        tokenizer = Tokenizer.load(news_tokenizer_dir)
        # 权重放大到 std 0.3（见 conftest.tiny_gpt）：注意力和预测才有高有低，不是一片均匀
        model = tiny_gpt(tokenizer.vocab_size, max_seq_len=128, weight_std=0.3)
    with LiveServer(create_app(model, tokenizer, settings)) as live:
        yield live


def shown(token: dict) -> str:
    """页面上 token 的样子（inspect.js 的 shown）：空格、换行看得见；字节和控制 token 显示 piece。"""
    if token["kind"] == "byte" and token["piece"] == "<0x0A>":
        return "↵"
    if token["kind"] != "text":
        return token["piece"]
    return token["text"].replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def api_report(server, text, top_k=5, chat=False):
    status, body = http(server.url + "/v1/inspect", {"text": text, "top_k": top_k, "chat": chat})
    assert status == 200, body
    return json.loads(body)


def inspect_in_page(driver, text, top_k=5, chat=False, expect="done"):
    """在页面里填好文字、top-k、对话模板，点“检视”，等页面的 data-state 变成 done（或 error）。"""
    driver.execute_script("document.getElementById('text').value = arguments[0];"
                          "document.getElementById('top-k').value = arguments[1];"
                          "document.body.dataset.state = 'idle';", text, str(top_k))
    checkbox = driver.find_element(By.ID, "chat")
    if checkbox.is_selected() != chat:
        checkbox.click()
    driver.find_element(By.ID, "run").click()
    body = driver.find_element(By.TAG_NAME, "body")
    WebDriverWait(driver, 60, poll_frequency=0.02).until(lambda d: body.get_attribute("data-state") in ("done", "error"))
    assert body.get_attribute("data-state") == expect, driver.find_element(By.ID, "status").text


def chips(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#tokens .chip")


def bar_rows(driver, list_id):
    """一个概率条列表的 [(id, prob)]。"""
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{list_id} .bar-row")
    return [(int(row.get_attribute("data-id")), float(row.get_attribute("data-prob"))) for row in rows]


def masked_cells(driver):
    """读回热图 canvas 上每一格中心的像素：这一格是不是“不许看”的颜色（未来）。"""
    return driver.execute_script("""
        const canvas = document.getElementById('heatmap'), d = canvas.dataset;
        const context = canvas.getContext('2d'), size = Number(d.size), cell = Number(d.cell);
        const result = [];
        for (let i = 0; i < size; i++) {
          const row = [];
          for (let j = 0; j < size; j++) {
            const x = (Number(d.left) + (j + 0.5) * cell) * Number(d.scale);
            const y = (Number(d.top) + (i + 0.5) * cell) * Number(d.scale);
            const pixel = context.getImageData(Math.floor(x), Math.floor(y), 1, 1).data;
            row.push([pixel[0], pixel[1], pixel[2]].join(',') === MASK_COLOUR.join(','));
          }
          result.push(row);
        }
        return result;""")


def test_tokens_predictions_attention_and_lens_match_the_report(server, browser):
    started = time.perf_counter()
    browser.get(server.url + "/inspect")
    assert browser.title.startswith("TowerGPT 检视器")
    assert browser.find_element(By.ID, "chat-link").get_attribute("href") == server.url + "/"
    text = "中国人民的艺术艺术" if TRAINED_CKPT else "中国人民的艺术🙂，人民的艺术"    # 🙂 不在小词表里：字节回退
    chat = CHAT_SHOT and bool(TRAINED_CKPT)
    if chat:
        text = "这条评论是正面还是负面？\n房间很干净，服务员也很热情，下次还来。"
    inspect_in_page(browser, text, chat=chat)
    report = api_report(server, text, chat=chat)
    tokens = report["tokens"]

    # token 条：一个 token 一块，编号、id、种类、显示的文字都与报告相同；颜色来自惊讶度
    seen = [(int(c.get_attribute("data-index")), int(c.get_attribute("data-id")), c.get_attribute("data-kind"),
             c.find_element(By.CLASS_NAME, "label").get_attribute("textContent")) for c in chips(browser)]
    assert seen == [(t["index"], t["id"], t["kind"], shown(t)) for t in tokens]
    if not TRAINED_CKPT:
        assert "byte" in {t["kind"] for t in tokens}
    surprisal = [c.get_attribute("data-surprisal") for c in chips(browser)]
    assert surprisal[0] is None
    assert [float(s) for s in surprisal[1:]] == [p["next"]["surprisal_bits"] for p in report["predictions"][:-1]]

    # 点一个 token：它之后的 top-k 预测（从大到小，都是概率），和真正的下一个 token 排第几
    position = 2
    chips(browser)[position].click()
    prediction = report["predictions"][position]
    top = bar_rows(browser, "top-list")
    assert [token_id for token_id, _ in top] == [c["id"] for c in prediction["top"]]
    probs = [prob for _, prob in top]
    assert probs == sorted(probs, reverse=True) and all(0 < p <= 1 for p in probs)
    assert browser.find_element(By.ID, "actual").get_attribute("data-rank") == str(prediction["next"]["rank"])

    # 注意力：换到第 2 层、头 3（标签写出它属于哪组键值），热图是下三角
    layer, head = report["model"]["n_layer"] - 1, report["model"]["n_head"] - 1
    browser.find_element(By.CSS_SELECTOR, f"#layer-buttons [data-layer='{layer}']").click()
    head_button = browser.find_element(By.CSS_SELECTOR, f"#head-buttons [data-head='{head}']")
    assert head_button.text == f"头 {head} · 组 {report['attention']['head_group'][head]}"
    head_button.click()
    canvas = browser.find_element(By.ID, "heatmap")
    assert (canvas.get_attribute("data-layer"), canvas.get_attribute("data-head")) == (str(layer), str(head))
    assert browser.execute_script("return currentMatrix();") == report["attention"]["weights"][layer][head]
    size = len(tokens)
    assert masked_cells(browser) == [[j > i for j in range(size)] for i in range(size)]
    # 选中的 token 作为查询：列出的只有它自己和前面的 token，权重从大到小，与矩阵的那一行相同
    row = report["attention"]["weights"][layer][head][position]
    attends = bar_rows(browser, "attends")
    assert sorted(attends, key=lambda item: -item[1]) == attends
    assert [weight for _, weight in attends] == sorted(row[:position + 1], reverse=True)
    assert sum(row) == pytest.approx(1, abs=1e-4) and not any(row[position + 1:])

    # logit lens 走到最后一层：那就是模型真正的输出，首选必须与预测的首选相同
    browser.execute_script("const s = document.getElementById('lens-layer'); s.value = s.max;"
                           "s.dispatchEvent(new Event('input'));")
    assert browser.find_element(By.ID, "lens-name").get_attribute("data-layer") == str(report["model"]["n_layer"])
    assert bar_rows(browser, "lens-top")[0][0] == prediction["top"][0]["id"]
    browser.find_element(By.ID, "lens-prev").click()
    assert bar_rows(browser, "lens-top") == [(c["id"], c["prob"]) for c in report["logit_lens"][-2]["top"][position]]
    cell = browser.find_element(By.CSS_SELECTOR, f"#lens-table td[data-layer='0'][data-position='{position}']")
    assert int(cell.get_attribute("data-id")) == report["logit_lens"][0]["top"][position][0]["id"]
    print(f"\ninspect page test: {time.perf_counter() - started:.1f} s")
    if SCREENSHOT:
        take_screenshot(browser, report)


def take_screenshot(driver, report):
    """截图：选中最后一个 token、一个有意思的头，logit lens 停在中间一层（与最后一层的输出对照着看）。"""
    driver.set_window_size(1400, 1000)
    chips(driver)[-1].click()
    driver.find_element(By.CSS_SELECTOR, f"#layer-buttons [data-layer='{SHOT_LAYER}']").click()
    driver.find_element(By.CSS_SELECTOR, f"#head-buttons [data-head='{SHOT_HEAD}']").click()
    driver.execute_script("const s = document.getElementById('lens-layer'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('input'));", report["model"]["n_layer"] // 2)
    # 窗口拉到整页的高度（外加浏览器自己的边框），一张图里放下全部内容
    chrome = driver.get_window_size()["height"] - driver.execute_script("return window.innerHeight;")
    driver.set_window_size(1400, driver.execute_script("return document.documentElement.scrollHeight;") + chrome)
    driver.execute_script("window.scrollTo(0, 0);")
    driver.save_screenshot(SCREENSHOT)


def test_model_text_is_shown_as_text_never_as_html(server, browser):
    browser.get(server.url + "/inspect")
    text = "<b>x</b><script>window.pwned=1</script>"
    inspect_in_page(browser, text)
    report = api_report(server, text)
    labels = [c.find_element(By.CLASS_NAME, "label").get_attribute("textContent") for c in chips(browser)]
    assert labels == [shown(t) for t in report["tokens"]]
    # 把页面上的 token（字节 piece 换回字节）接起来，恰好是输入的原文：原样显示，一个字符也没被“解释”掉
    pieces = [bytes([int(BYTE_PIECE.match(label)[1], 16)]) if BYTE_PIECE.match(label) else label.encode()
              for label, token in zip(labels, report["tokens"]) if token["kind"] in ("text", "byte")]
    assert b"".join(pieces).decode() == text
    assert browser.execute_script("return document.querySelectorAll('b').length + "
                                  "document.querySelectorAll('#tokens script, .views script').length;") == 0
    assert browser.execute_script("return window.pwned === undefined && [...document.scripts].every("
                                  "script => script.src.startsWith(location.origin + '/static/'));")
    # 页面自己也没有出错：没有脚本异常，也没有被 CSP 拦下的东西（都会记成 SEVERE；浏览器自己要的 favicon 不算）
    problems = [entry for entry in browser.get_log("browser")
                if entry["level"] == "SEVERE" and "favicon.ico" not in entry["message"]]
    assert problems == []


def test_chat_template_tokens_and_errors_are_shown(server, browser):
    browser.get(server.url + "/inspect")
    inspect_in_page(browser, "你好", chat=True)
    report = api_report(server, "你好", chat=True)
    templated = [c.get_attribute("data-template") == "true" for c in chips(browser)]
    assert templated == [t["template"] for t in report["tokens"]] and any(templated)
    # 每条消息从新的一行开始：<|im_start|> 之前有一个换行块
    starts = sum(t["piece"] == "<|im_start|>" for t in report["tokens"])
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tokens .break")) == starts
    assert browser.find_element(By.ID, "chat-fields").is_displayed()

    inspect_in_page(browser, "", expect="error")                      # 空文字：服务回 400，页面说出原因
    status = browser.find_element(By.ID, "status").text
    assert "text" in status and "空" in status
    assert len(chips(browser)) == len(report["tokens"])               # 上一次的结果还在
