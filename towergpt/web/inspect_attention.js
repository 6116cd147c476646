// TowerGPT 检视器的注意力面板：选层、选头，画 T×T 的注意力热图，列出选中的 token 最看重谁。
//
// 热图的第 i 行第 j 列 = 位置 i（查询，正在读的 token）分给位置 j（键，被看的 token）多少注意力，每行加起来是 1。
// 因果掩码让每个 token 只能看自己和前面，所以只有下三角有颜色；上三角（未来）画成灰色。
// 画在 canvas 上：几百个 token 时就是几万个格子，做成 DOM 元素太慢；canvas 上的字也只是像素，不会变成 HTML。
// 用到 inspect.js 里的 state、$、el、shown、barRow、select（inspect.js 先加载）。
"use strict";

const MASK_COLOUR = [236, 239, 243];        // 热图里“不许看”（未来）的格子
const ATTENDED_SHOWN = 8;                   // 列出最受关注的几个 token

function segmentButton(text, selected, onClick, data) {
  const button = el("button", "segment", text);
  button.type = "button";
  button.setAttribute("aria-pressed", String(selected));
  Object.assign(button.dataset, data);
  button.addEventListener("click", onClick);
  return button;
}

function renderLayerButtons() {
  const buttons = [];
  for (let layer = 0; layer < state.report.model.n_layer; layer++) {
    buttons.push(segmentButton(`第 ${layer + 1} 层`, layer === state.layer, () => {
      state.layer = layer;
      renderLayerButtons();
      renderAttention();
    }, { layer: String(layer) }));
  }
  $("layer-buttons").replaceChildren(el("span", "segment-label", "层 / layer"), ...buttons);
}

function renderHeadButtons() {
  const groups = state.report.attention.head_group;
  const buttons = groups.map((group, head) => segmentButton(`头 ${head} · 组 ${group}`, head === state.head, () => {
    state.head = head;
    renderHeadButtons();
    renderAttention();
  }, { head: String(head), group: String(group) }));
  $("head-buttons").replaceChildren(el("span", "segment-label", "头 / head"), ...buttons);
}

function currentMatrix() {
  return state.report.attention.weights[state.layer][state.head];
}

function renderAttention() {
  const matrix = currentMatrix();
  const i = state.selected;
  drawHeatmap(matrix, i);
  const row = matrix[i];
  // token 条上的细线：选中的 token（作为查询）分给前面每个 token 多少注意力
  for (const chip of $("tokens").querySelectorAll(".chip")) {
    const j = Number(chip.dataset.index);
    chip.style.setProperty("--attn", j <= i ? String(row[j]) : "0");
  }
  const tokens = state.report.tokens;
  $("attends-title").textContent = `#${i}「${shown(tokens[i])}」在第 ${state.layer + 1} 层 · 头 ${state.head} ` +
    `最看重 / attends most to`;
  const keys = row.slice(0, i + 1).map((weight, j) => ({ weight, j }));
  keys.sort((a, b) => b.weight - a.weight);
  $("attends").replaceChildren(...keys.slice(0, ATTENDED_SHOWN).map(({ weight, j }) =>
    barRow("#" + j, weight, tokens[j])));
}

// 权重 → 颜色：白到深蓝。用平方根拉开小权重，不然 0.05 和 0 看起来一样白
function weightColour(weight) {
  const t = Math.sqrt(Math.min(Math.max(weight, 0), 1));
  return `rgb(${Math.round(255 - 226 * t)}, ${Math.round(255 - 177 * t)}, ${Math.round(255 - 39 * t)})`;
}

// 热图的几何：每格多大、留多少边给标签。把它写进 canvas 的 data-*，测试据此读回像素
function heatmapGeometry(size) {
  const cell = Math.max(1, Math.min(36, Math.floor(300 / size)));
  const labelled = cell >= 12;                       // 格子太小时不写标签，鼠标悬停看读数
  return { cell, left: labelled ? 86 : 0, top: labelled ? 18 : 0, labelled };
}

function drawHeatmap(matrix, query) {
  const canvas = $("heatmap");
  const size = matrix.length;
  const { cell, left, top, labelled } = heatmapGeometry(size);
  const width = left + cell * size, height = top + cell * size;
  const scale = window.devicePixelRatio || 1;
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  canvas.style.width = width + "px";
  canvas.style.height = height + "px";
  Object.assign(canvas.dataset, { cell: String(cell), left: String(left), top: String(top), scale: String(scale),
                                  size: String(size), layer: String(state.layer), head: String(state.head),
                                  query: String(query) });
  const context = canvas.getContext("2d");
  context.setTransform(scale, 0, 0, scale, 0, 0);
  context.clearRect(0, 0, width, height);
  for (let i = 0; i < size; i++) {
    for (let j = 0; j < size; j++) {
      context.fillStyle = j <= i ? weightColour(matrix[i][j]) : `rgb(${MASK_COLOUR.join(",")})`;
      context.fillRect(left + j * cell, top + i * cell, cell, cell);
    }
  }
  if (labelled) drawLabels(context, size, cell, left, top);
  context.strokeStyle = "#d63a3a";                     // 选中的查询行
  context.lineWidth = 2;
  context.strokeRect(left + 1, top + query * cell + 1, cell * size - 2, cell - 2);
}

// 左边：每一行（查询）是哪个 token；上边：每一列（键）的编号。canvas 上的字只是像素，不会变成 HTML
function drawLabels(context, size, cell, left, top) {
  context.fillStyle = "#6a737d";
  context.font = `${Math.min(12, cell - 1)}px system-ui, sans-serif`;
  context.textBaseline = "middle";
  context.textAlign = "right";
  for (let i = 0; i < size; i++) {
    const label = `${i} ${shown(state.report.tokens[i])}`;
    context.fillText(label.length > 9 ? label.slice(0, 8) + "…" : label, left - 6, top + (i + 0.5) * cell, left - 8);
  }
  context.textAlign = "center";
  const step = cell >= 18 ? 1 : 5;                   // 格子窄时列号每 5 个写一个，免得挤在一起
  for (let j = 0; j < size; j += step) context.fillText(String(j), left + (j + 0.5) * cell, top / 2);
}

// 鼠标在热图上：说出这一格是谁看谁、权重多少；点一下就选中那一行的 token
function heatmapCell(event) {
  const canvas = $("heatmap");
  const rect = canvas.getBoundingClientRect();
  const cell = Number(canvas.dataset.cell);
  const j = Math.floor((event.clientX - rect.left - Number(canvas.dataset.left)) / cell);
  const i = Math.floor((event.clientY - rect.top - Number(canvas.dataset.top)) / cell);
  const size = Number(canvas.dataset.size);
  return i >= 0 && j >= 0 && i < size && j < size ? { i, j } : null;
}

function showHeatmapCell(event) {
  const spot = state.report && heatmapCell(event);
  if (!spot) return;
  const tokens = state.report.tokens;
  const weight = spot.j <= spot.i ? currentMatrix()[spot.i][spot.j].toFixed(3) : "—（未来，看不到 / future）";
  $("heat-readout").textContent = `#${spot.i}「${shown(tokens[spot.i])}」看 #${spot.j}「${shown(tokens[spot.j])}」` +
    `：权重 / weight ${weight}`;
}

document.addEventListener("DOMContentLoaded", () => {
  $("heatmap").addEventListener("mousemove", showHeatmapCell);
  $("heatmap").addEventListener("click", (event) => {
    const spot = state.report && heatmapCell(event);
    if (spot) select(spot.i);
  });
});
