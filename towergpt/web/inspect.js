// TowerGPT 检视器的逻辑。
//
// 流程：用户输入一段文字 → POST /v1/inspect → 服务返回一份报告（格式 "towergpt.inspect/1"，
// 见 towergpt/inspect/report.py）→ 画出四样东西，都围绕“选中的那个 token”（位置 i）：
//   1. token 条：每个 token 一块，颜色是模型读到它时的惊讶度 -log₂ p（越红越意外）；
//   2. 下一个 token：模型在位置 i 之后预测什么（top-k），真正的下一个 token 得到多少概率、排第几；
//   3. 注意力：某一层某一个头的 T×T 权重热图（只有下三角：每个 token 只能看自己和前面），
//      以及位置 i 作为“查询”时最看重前面哪些 token；
//   4. logit lens：把第 l 层的残差流直接送进输出头，看“如果模型在这一层就停下”会预测什么。
//
// 第 3 样（注意力面板和热图）在 inspect_attention.js，其余都在这里；两个文件共用这里的 state 和小工具。
//
// 安全：模型给出的文字可能是任何东西（包括 "<script>"），所以一律用 textContent / createElement
// 放进页面，从不用 innerHTML；热图画在 canvas 上。页面的 CSP 也只许加载本站的脚本。
"use strict";

const SETTINGS_KEY = "towergpt.settings";   // 与聊天页面共用这份设置：API 密钥只需填一次
const MAX_SURPRISAL = 16;                   // 颜色在 16 bit（概率 1/65536）处到最红
const $ = (id) => document.getElementById(id);

const state = {
  report: null,   // 最近一次检视的结果
  selected: 0,    // 选中的位置 i
  layer: 0,       // 注意力：第几层（0 起；界面上显示为第 1 层起）
  head: 0,        // 注意力：第几个头（0 起，与 towergpt inspect 的终端输出相同）
  lens: 0,        // logit lens：第几层（0 = 词向量，L = 最后一个 Block 的输出）
  request: 0,     // 每发一次请求加 1：迟到的旧回答不会盖掉新的
};

// ---- 小工具 -------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;    // 永远是纯文字
  return node;
}

// 给人看的 token 文字：空格、换行、制表符写成看得见的符号（␣ ↵ ⇥）；字节与控制 token 显示 piece 本身
// （换行的字节 <0x0A> 太常见，也写成 ↵，与 towergpt inspect 的终端输出一样）
function shown(token) {
  if (token.kind === "byte" && token.piece === "<0x0A>") return "↵";
  if (token.kind !== "text") return token.piece;
  return token.text.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥") || "∅";
}

function percent(p) {
  if (p >= 0.1) return (p * 100).toFixed(1) + "%";
  if (p >= 0.0001) return (p * 100).toFixed(2) + "%";
  return p > 0 ? "<0.01%" : "0%";
}

function bits(value) {
  return value.toFixed(2) + " bit";
}

// 模型读到第 i 个 token 时的惊讶度：第 i-1 个位置的预测给它的概率。第 0 个 token 前面没有预测。
function surprisalAt(index) {
  return index > 0 ? state.report.predictions[index - 1].next.surprisal_bits : null;
}

// 惊讶度 → 背景色：0 bit 淡黄，16 bit 及以上红；深色文字在两头都看得清
function surprisalColour(value) {
  const t = Math.min(value / MAX_SURPRISAL, 1);
  return `hsl(${50 - 50 * t}, 90%, ${93 - 28 * t}%)`;
}

function setState(name, message = "") {
  document.body.dataset.state = name;
  $("status").textContent = message;
  $("run").disabled = name === "loading";
}

// ---- 密钥与模型名 ---------------------------------------------------------------------

function savedSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
  } catch (error) {
    return {};
  }
}

function saveKey() {
  localStorage.setItem(SETTINGS_KEY, JSON.stringify({ ...savedSettings(), "api-key": $("api-key").value }));
}

function requestHeaders() {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  return headers;
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: requestHeaders() });
    if (response.status === 401) {
      $("model-name").textContent = "需要 API 密钥 / key required";
      return;
    }
    const card = (await response.json()).data[0];
    $("model-name").textContent = `模型 ${card.id} · 上下文 ${card.max_model_len} token`;
  } catch (error) {
    $("model-name").textContent = "未连接 / offline";
  }
}

// ---- 检视 -----------------------------------------------------------------------------

function inspectRequest() {
  const chat = $("chat").checked;
  const optional = (id) => (chat && $(id).value !== "" ? $(id).value : null);
  return { text: $("text").value, top_k: parseInt($("top-k").value, 10), chat,
           system: optional("system"), reply: optional("reply") };
}

async function runInspect(event) {
  if (event) event.preventDefault();
  const request = ++state.request;
  setState("loading", "正在检视… / inspecting…");
  try {
    const response = await fetch("/v1/inspect", {
      method: "POST", headers: requestHeaders(), body: JSON.stringify(inspectRequest()),
    });
    const body = await response.json().catch(() => ({}));
    if (request !== state.request) return;
    if (!response.ok) throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    render(body);
    setState("done");
  } catch (error) {
    if (request === state.request) setState("error", "出错了 / error: " + error.message);
  }
}

function render(report) {
  state.report = report;
  const model = report.model;
  state.layer = Math.min(state.layer, model.n_layer - 1);
  state.head = Math.min(state.head, model.n_head - 1);
  state.lens = model.n_layer;                        // logit lens 从最后一层（模型真正的输出）看起
  $("lens-layer").max = String(model.n_layer);
  const gqa = model.n_kv_head !== model.n_head ? ` · ${model.n_kv_head} 组键值 (GQA)` : "";
  $("model-name").title = `${model.n_layer} 层 × ${model.n_head} 头${gqa} · 词表 ${model.vocab_size}`;
  $("views").hidden = false;                         // 第一次有结果之前，下面几栏是空的，先藏起来
  $("lens-table-panel").hidden = false;
  renderTokens();
  renderSummary();
  renderLayerButtons();
  renderHeadButtons();
  renderLensTable();
  select(report.tokens.length - 1);                  // 先选最后一个 token：看模型接下来想说什么
}

// ---- 1. token 条 ----------------------------------------------------------------------

function tokenTitle(token) {
  const surprisal = surprisalAt(token.index);
  const lines = [`#${token.index} · id ${token.id} · ${token.kind}`, `piece: ${token.piece}`];
  if (token.role) lines.push(`角色 / role: ${token.role}${token.template ? "（模板 / template）" : ""}`);
  if (surprisal !== null) lines.push(`惊讶度 / surprisal: ${bits(surprisal)}`);
  return lines.join("\n");
}

function tokenChip(token) {
  const chip = el("button", "chip " + token.kind);
  chip.type = "button";
  chip.dataset.index = String(token.index);
  chip.dataset.id = String(token.id);
  chip.dataset.kind = token.kind;
  chip.dataset.template = String(Boolean(token.template));
  chip.classList.toggle("template", Boolean(token.template));
  chip.title = tokenTitle(token);
  chip.append(el("span", "label", shown(token)));
  const surprisal = surprisalAt(token.index);
  if (surprisal !== null) chip.dataset.surprisal = String(surprisal);
  // 模板 token 和控制 token 不上色（惊讶度仍在提示里）：它们不是谁说的话，对话微调也不在它们上面算损失，
  // 染成一片红只会抢走读者的注意
  if (surprisal !== null && !token.template && token.kind !== "control") {
    chip.style.backgroundColor = surprisalColour(surprisal);
  }
  chip.addEventListener("click", () => select(token.index));
  return chip;
}

function renderTokens() {
  const chips = [];
  for (const token of state.report.tokens) {
    // 对话模式：每条消息从新的一行开始（<|im_start|> 之前换行），一眼看出谁说了什么
    if (token.index > 0 && token.template && token.piece === "<|im_start|>") chips.push(el("span", "break"));
    chips.push(tokenChip(token));
  }
  $("tokens").replaceChildren(...chips);
}

function renderSummary() {
  const predictions = state.report.predictions;
  const total = predictions.reduce((sum, row) => sum + (row.next ? row.next.surprisal_bits : 0), 0);
  const count = Math.max(predictions.length - 1, 1);
  $("summary").textContent = `${predictions.length} 个 token · 惊讶度合计 ${total.toFixed(1)} bit，` +
    `平均每个 ${(total / count).toFixed(2)} bit / mean surprisal`;
}

function select(index) {
  const count = state.report.tokens.length;
  state.selected = Math.max(0, Math.min(index, count - 1));
  for (const chip of $("tokens").querySelectorAll(".chip")) {
    chip.setAttribute("aria-pressed", String(Number(chip.dataset.index) === state.selected));
  }
  renderPrediction();
  renderAttention();
  renderLens();
}

// ---- 2. 下一个 token ------------------------------------------------------------------

// 一行横条：名次、token、概率条、百分比。candidate 来自报告的 top 列表
function barRow(label, prob, token, extraClass = "") {
  const row = el("li", "bar-row " + extraClass);
  row.dataset.prob = String(prob);
  if (token) row.dataset.id = String(token.id);
  const tokenBox = el("span", "tok" + (token ? " " + token.kind : ""), token ? shown(token) : "");
  if (token) tokenBox.title = `id ${token.id} · piece: ${token.piece}`;
  const bar = el("span", "bar");
  const fill = el("span", "fill");
  fill.style.width = (Math.min(Math.max(prob, 0), 1) * 100).toFixed(2) + "%";
  bar.append(fill);
  row.append(el("span", "rank", label), tokenBox, bar, el("span", "value", percent(prob)));
  return row;
}

function nextTokenId(index) {
  const tokens = state.report.tokens;
  return index + 1 < tokens.length ? tokens[index + 1].id : null;
}

function renderPrediction() {
  const i = state.selected;
  const row = state.report.predictions[i];
  const token = state.report.tokens[i];
  $("prediction-title").textContent = `在 #${i}「${shown(token)}」之后，模型预测 / after this token the model predicts:`;
  const actualId = nextTokenId(i);
  $("top-list").replaceChildren(...row.top.map((candidate, rank) =>
    barRow(String(rank + 1), candidate.prob, candidate, candidate.id === actualId ? "actual" : "")));
  const facts = [["熵 / entropy", bits(row.entropy_bits) + "（越大越犹豫）"]];
  if (row.next) {
    facts.unshift(["真正的下一个 / actual next", `「${shown(row.next)}」 id ${row.next.id}`],
                  ["概率 / probability", percent(row.next.prob)],
                  ["惊讶度 / surprisal", bits(row.next.surprisal_bits)],
                  ["排名 / rank", `第 ${row.next.rank} 名`]);
  } else {
    facts.unshift(["真正的下一个 / actual next", "—（这是最后一个 token：上面就是模型接下来想说的）"]);
  }
  showFacts($("actual"), facts);
  $("actual").dataset.rank = row.next ? String(row.next.rank) : "";
  renderArrival();
}

function showFacts(list, facts) {
  list.replaceChildren(...facts.flatMap(([name, value]) => [el("dt", "", name), el("dd", "", value)]));
}

// 选中的 token 自己：模型在前一个位置上给了它多少概率、原本最期待的是什么
function renderArrival() {
  const i = state.selected;
  if (i === 0) {
    showFacts($("arrival"), [["—", "序列的第一个 token，前面没有预测 / the first token: nothing predicted it"]]);
    return;
  }
  const before = state.report.predictions[i - 1];
  showFacts($("arrival"), [
    ["概率 / probability", `${percent(before.next.prob)} · 第 ${before.next.rank} 名 / rank ${before.next.rank}`],
    ["惊讶度 / surprisal", bits(before.next.surprisal_bits)],
    ["原本最期待 / expected", `「${shown(before.top[0])}」 ${percent(before.top[0].prob)}`],
  ]);
}

// ---- 4. logit lens ----------------------------------------------------------------------

function renderLens() {
  const lens = state.report.logit_lens;
  const i = state.selected;
  const entry = lens[state.lens];
  $("lens-layer").value = String(state.lens);
  $("lens-name").textContent = state.lens === 0 ? "词向量 / embedding" : `第 ${state.lens} 层 / ${entry.name}`;
  $("lens-name").dataset.layer = String(state.lens);
  const actualId = nextTokenId(i);
  $("lens-top").replaceChildren(...entry.top[i].map((candidate, rank) =>
    barRow(String(rank + 1), candidate.prob, candidate, candidate.id === actualId ? "actual" : "")));
  if (actualId === null) {
    $("lens-next-probs").replaceChildren(el("li", "hint", "最后一个 token 之后还没有“真正的下一个” / nothing follows the last token"));
  } else {
    $("lens-next-probs").replaceChildren(...lens.map((layer) => barRow(
      layer.layer === 0 ? "词向量" : `第 ${layer.layer} 层`, layer.next_prob[i], null,
      layer.layer === state.lens ? "current" : "")));
  }
  highlightLensTable();
}

function stepLens(delta) {
  if (!state.report) return;
  state.lens = Math.max(0, Math.min(state.lens + delta, state.report.model.n_layer));
  renderLens();
}

function lensCell(entry, position) {
  const best = entry.top[position][0];
  const cell = el("td", best.id === nextTokenId(position) ? "hit" : "");
  Object.assign(cell.dataset, { layer: String(entry.layer), position: String(position), id: String(best.id) });
  cell.title = `${entry.name} · #${position} → id ${best.id} · ${percent(best.prob)}`;
  cell.append(el("span", "tok " + best.kind, shown(best)), el("small", "", percent(best.prob)));
  cell.style.setProperty("--p", String(best.prob));
  cell.addEventListener("click", () => {
    state.lens = entry.layer;
    select(position);
  });
  return cell;
}

function renderLensTable() {
  const { tokens, logit_lens: lens } = state.report;
  const head = el("tr");
  head.append(el("th", "", "层 \\ 位置"), ...tokens.map((token) => el("th", "", `${token.index} ${shown(token)}→`)));
  const rows = lens.map((entry) => {
    const row = el("tr");
    row.dataset.layer = String(entry.layer);
    row.append(el("th", "", entry.layer === 0 ? "词向量" : `第 ${entry.layer} 层`),
               ...tokens.map((token) => lensCell(entry, token.index)));
    return row;
  });
  $("lens-table").replaceChildren(head, ...rows);
}

function highlightLensTable() {
  for (const cell of $("lens-table").querySelectorAll("td, th")) {
    const row = cell.parentElement.dataset.layer;
    cell.classList.toggle("selected-column", cell.cellIndex === state.selected + 1);
    cell.classList.toggle("current-layer", row !== undefined && Number(row) === state.lens);
  }
  // 表比面板宽时，横向滚到选中的那一列（只滚这张表，不动整个页面）
  const header = $("lens-table").rows[0].cells[state.selected + 1];
  const box = $("lens-table").parentElement;
  if (header.offsetLeft < box.scrollLeft || header.offsetLeft + header.offsetWidth > box.scrollLeft + box.clientWidth) {
    box.scrollLeft = header.offsetLeft - box.clientWidth / 2;
  }
}

// ---- 事件绑定 -------------------------------------------------------------------------

function moveSelection(event) {
  if (!state.report || !["ArrowLeft", "ArrowRight"].includes(event.key)) return;
  event.preventDefault();
  select(state.selected + (event.key === "ArrowLeft" ? -1 : 1));
  $("tokens").querySelector(`.chip[data-index="${state.selected}"]`).focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = savedSettings()["api-key"] || "";
  $("api-key").addEventListener("input", saveKey);
  $("query").addEventListener("submit", runInspect);
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) runInspect(event);
  });
  $("chat").addEventListener("change", () => { $("chat-fields").hidden = !$("chat").checked; });
  $("tokens").addEventListener("keydown", moveSelection);
  $("lens-layer").addEventListener("input", () => stepLens(Number($("lens-layer").value) - state.lens));
  $("lens-prev").addEventListener("click", () => stepLens(-1));
  $("lens-next").addEventListener("click", () => stepLens(1));
  loadModel();
  $("text").focus();
});
