// TowerGPT 网页聊天的逻辑。
//
// 流程：用户发一句话 → 把“系统提示词 + 整段历史”POST 到 /v1/chat/completions（stream: true）
// → 用 fetch 的 ReadableStream 一块一块读服务器推来的 server-sent events（每行 "data: {...}"），
// 每读到一段文字就追加到回答气泡里 → 读到 "data: [DONE]" 结束，回答记入历史。
//
// 为什么不用 EventSource？它只能发 GET 请求，而聊天接口要 POST 一个 JSON 请求体。
// 模型的回答一律用 textContent 显示（不是 innerHTML）：模型输出 "<script>" 也只是几个字符。
"use strict";

const SETTINGS_KEY = "towergpt.settings";
const $ = (id) => document.getElementById(id);

const state = {
  history: [],        // [{role: "user" | "assistant", content}]，不含系统提示词
  model: null,        // /v1/models 给出的模型名
  controller: null,   // 正在进行的请求的 AbortController（“停止”按钮用它）
  conversation: 0,    // 每点一次“新对话”加 1：旧对话里迟到的回答不会混进新对话
};

// ---- 设置：保存在 localStorage，刷新页面后还在 ---------------------------------------

const SETTING_FIELDS = ["system", "temperature", "top-p", "max-tokens", "api-key"];

function loadSettings() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
  } catch (error) {
    saved = {};
  }
  for (const id of SETTING_FIELDS) {
    if (saved[id] !== undefined) $(id).value = saved[id];
    $(id).addEventListener("input", saveSettings);
  }
  showSliderValues();
}

function saveSettings() {
  const values = {};
  for (const id of SETTING_FIELDS) values[id] = $(id).value;
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(values));
  showSliderValues();
}

function showSliderValues() {
  $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  $("top-p-value").textContent = Number($("top-p").value).toFixed(2);
}

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  return headers;
}

// ---- 界面小工具 ---------------------------------------------------------------------

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

function addMessage(role, text) {
  $("empty-hint").hidden = true;
  const row = document.createElement("div");
  row.className = "message " + role;
  const label = document.createElement("span");
  label.className = "role";
  label.textContent = role === "user" ? "你" : "助手";
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  if (role === "user") row.append(bubble, label);
  else row.append(label, bubble);
  $("messages").append(row);
  scrollToBottom();
  return row;
}

function addNote(text) {
  const note = document.createElement("p");
  note.className = "note";
  note.textContent = text;
  $("messages").append(note);
}

function scrollToBottom() {
  $("messages").scrollTop = $("messages").scrollHeight;
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  $("input").disabled = busy;
}

// ---- 与服务对话 -----------------------------------------------------------------------

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: requestHeaders() });
    if (response.status === 401) {
      $("model-name").textContent = "需要 API 密钥";
      setStatus("服务要求 API 密钥：请在右侧“设置”里填写后刷新页面。", true);
      return;
    }
    const card = (await response.json()).data[0];
    state.model = card.id;
    $("model-name").textContent = `模型：${card.id} · 上下文 ${card.max_model_len} token`;
    // 默认最多生成上下文的一半，给对话历史留出地方
    const limit = Math.max(1, Math.floor(card.max_model_len / 2));
    if (Number($("max-tokens").value) > limit) $("max-tokens").value = limit;
  } catch (error) {
    $("model-name").textContent = "未连接";
    setStatus("连不上服务：" + error, true);
  }
}

function chatRequest() {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  return {
    model: state.model,
    messages: messages.concat(state.history),
    stream: true,
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Math.max(1, Math.floor(Number($("max-tokens").value) || 1)),
  };
}

// 丢掉最早的一轮（一问一答）；只剩当前这个问题时返回 false
function dropOldestTurn() {
  if (state.history.length <= 1) return false;
  state.history.splice(0, 2);
  return true;
}

async function send(text) {
  if (!state.model) await loadModel();
  addMessage("user", text);
  state.history.push({ role: "user", content: text });
  const row = addMessage("assistant", "");
  const bubble = row.querySelector(".bubble");
  row.dataset.state = "streaming";
  row.dataset.chunks = "0";
  state.controller = new AbortController();
  setBusy(true);
  setStatus("正在生成…");

  const conversation = state.conversation;
  let reply = "";
  let dropped = 0;
  try {
    let response;
    for (;;) {
      response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: requestHeaders(),
        body: JSON.stringify(chatRequest()),
        signal: state.controller.signal,
      });
      if (response.ok) break;
      const error = (await response.json().catch(() => ({}))).error || {};
      // 对话太长、超出模型的上下文：从最早的一轮开始丢，再试
      if (error.code === "context_length_exceeded" && dropOldestTurn()) {
        dropped += 1;
        continue;
      }
      throw new Error(error.message || `HTTP ${response.status}`);
    }
    if (dropped) addNote(`较早的 ${dropped} 轮对话超出了模型的上下文长度，已不再发送给模型。`);

    for await (const piece of readEvents(response)) {
      reply += piece;
      bubble.textContent = reply;
      row.dataset.chunks = String(Number(row.dataset.chunks) + 1);
      scrollToBottom();
    }
    row.dataset.state = "done";
    setStatus("");
  } catch (error) {
    if (error.name === "AbortError") {
      row.dataset.state = "done";
      setStatus("已停止。");
    } else {
      row.dataset.state = "error";
      bubble.textContent = reply || "出错了：" + error.message;
      setStatus("出错了：" + error.message, true);
      if (!reply && conversation === state.conversation) state.history.pop();   // 没有得到回答的问题不留在历史里
    }
  } finally {
    if (reply && conversation === state.conversation) state.history.push({ role: "assistant", content: reply });
    state.controller = null;
    setBusy(false);
    $("input").focus();
  }
}

// 逐段产出回答文字。SSE 的格式：事件之间空一行，事件里以 "data: " 开头的行是数据。
// 网络传来的一块数据可能在一个事件（甚至一个汉字的 UTF-8 字节）中间断开，
// 所以先用 TextDecoder 的 stream 模式解码，再只处理已经完整的事件，剩下的留到下一块。
async function* readEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
        if (piece) yield piece;
      }
    }
  }
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.conversation += 1;
  state.history = [];
  $("messages").replaceChildren($("empty-hint"));
  $("empty-hint").hidden = false;
  setStatus("");
  $("input").focus();
}

// ---- 事件绑定 -------------------------------------------------------------------------

function submitInput(event) {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.controller) return;
  $("input").value = "";
  send(text);
}

document.addEventListener("DOMContentLoaded", () => {
  loadSettings();
  $("composer").addEventListener("submit", submitInput);
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) submitInput(event);
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("new-chat").addEventListener("click", newChat);
  loadModel();
  $("input").focus();
});
