// Concierge playground: renders the server's state snapshots and sends the page's actions.
// One websocket, no framework: every message from the server is the whole state.
"use strict";

const $ = (id) => document.getElementById(id);
let ws = null;
let state = null;
const shown = {};  // section -> JSON last rendered, so unchanged sections keep their scroll

function send(action) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(action));
}

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}

function linkify(text) {
  return esc(text).replace(/https?:\/\/[^\s<]+/g, (url) => `<a href="${url}" target="_blank" rel="noopener">${url}</a>`);
}

function changed(section, value) {
  const json = JSON.stringify(value);
  if (shown[section] === json) return false;
  shown[section] = json;
  return true;
}

function stickToBottom(el, render) {
  const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
  render();
  if (atBottom) el.scrollTop = el.scrollHeight;
}

function renderModel() {
  const m = $("model");
  m.textContent = "model: " + state.model.label;
  m.classList.toggle("real", state.model.real);
}

function renderChat() {
  if (!changed("chat", state.chat)) return;
  const box = $("chat");
  stickToBottom(box, () => {
    box.innerHTML = state.chat.map((b) => {
      let html = `<div class="bubble ${b.from}" data-id="${b.id}">`;
      if (b.file) {
        html += `<details><summary>File: ${esc(b.file.name)}</summary><pre>${esc(b.file.text)}</pre></details>`;
      }
      html += linkify(b.text);
      if (b.edited) html += `<span class="edited">edited</span>`;
      if (b.buttons.length) {
        html += `<div class="buttons">` + b.buttons.map((btn) =>
          `<button class="ghost" data-message="${b.id}" data-data="${esc(btn.data)}">${esc(btn.label)}</button>`
        ).join("") + `</div>`;
      }
      return html + `</div>`;
    }).join("");
  });
}

function renderJobs() {
  if (!changed("jobs", state.jobs)) return;
  $("jobs").textContent = state.jobs.length
    ? "Errands: " + state.jobs.map((j) => `${j.id} ${j.state}`).join(", ")
    : "";
}

function renderCallees() {
  const sel = $("callee");
  if (changed("callees", state.callees)) {
    sel.innerHTML = state.callees.map((c) =>
      `<option value="${esc(c.name)}">${esc(c.name === "you" ? "You (type the receptionist's lines)" : c.name + ": " + c.description)}</option>`
    ).join("");
  }
  if (document.activeElement !== sel) sel.value = state.callee;
}

// How the sandbox Twilio says a call ended, in words.
function ended(by) {
  return {
    callee: "the receptionist hung up", api: "the assistant hung up", stream_closed: "the assistant hung up",
    time_limit: "the call time limit was reached", drop: "the line dropped",
  }[by] || `ended: ${by}`;
}

function renderCall() {
  const live = state.calls.find((c) => c.live);
  const last = state.calls[state.calls.length - 1];
  const you = state.callee === "you";
  let status = "No call yet: send a request and press Confirm.";
  if (live) {
    status = `Call to ${live.to}: ${live.status}` + (you ? " — you are the receptionist." : ` — scripted receptionist (${state.callee}).`);
  } else if (last) {
    status = `Last call to ${last.to}: ${last.status}` + (last.ended_by ? ` (${ended(last.ended_by)})` : "");
  }
  $("call-status").textContent = status;
  const canTalk = Boolean(live) && you;
  for (const id of ["say-input", "say-button", "hangup"]) $(id).disabled = !canTalk;
  for (const b of $("keypad").querySelectorAll("button")) b.disabled = !canTalk;
  if (!changed("calls", state.calls.map((c) => [c.sid, c.status, c.lines, c.hearing]))) return;
  const box = $("call");
  stickToBottom(box, () => {
    box.innerHTML = state.calls.map((c, i) =>
      `<div class="call-head">Call ${i + 1} to ${esc(c.to)} · ${esc(c.status)}${c.ended_by ? " · " + esc(ended(c.ended_by)) : ""}</div>` +
      c.lines.map((l) =>
        `<div class="line ${l.who}"><b>${l.who === "callee" ? "Receptionist" : "Assistant (as heard)"}</b>${esc(l.text)}</div>`
      ).join("") +
      (c.hearing ? `<div class="line assistant hearing"><b>Assistant (speaking…)</b>${esc(c.hearing)}</div>` : "")
    ).join("");
  });
}

function renderCalendar() {
  if (!changed("calendar", state.calendar)) return;
  $("calendar").innerHTML = state.calendar.map((item) =>
    `<li class="${item.link ? "event" : "busy"}"><span class="when">${esc(item.start)}–${esc(item.end)}</span>` +
    `<span class="what">${item.link ? `<a href="${esc(item.link)}" target="_blank" rel="noopener">${esc(item.title)}</a>` : esc(item.title)}</span>` +
    `<button class="ghost" data-remove="${esc(item.id)}" title="remove">×</button></li>`
  ).join("") || `<li class="muted">Nothing in the calendar.</li>`;
}

// The latency chart: one row per assistant turn, bars from the end of the callee's speech.
function renderLatency() {
  const heard = [];
  state.calls.forEach((c, ci) => c.heard.forEach((t, ti) => heard.push({call: ci + 1, turn: ti + 1, ...t})));
  const data = {turns: state.latency, heard};
  if (!changed("latency", data)) return;
  const rows = [];
  state.latency.forEach((t, i) => rows.push({
    label: `${i + 1}. ${t.text}`,
    bars: [[0, t.stt_final_ms, "var(--stt)"], [t.stt_final_ms, t.first_token_ms, "var(--token)"],
           [t.first_token_ms, t.first_audio_ms, "var(--audio)"]],
    value: t.first_audio_ms,
  }));
  heard.forEach((h) => rows.push({
    label: `heard: call ${h.call}, turn ${h.turn} (${h.kind})`, bars: [[0, h.gap_ms, "var(--heard)"]], value: h.gap_ms,
  }));
  const box = $("latency");
  if (!rows.length) {
    box.innerHTML = `<p class="muted">Turns appear here as the call goes on.</p>`;
    return;
  }
  const values = rows.flatMap((r) => r.bars.flatMap((b) => [b[0], b[1]])).filter((v) => typeof v === "number");
  const max = Math.max(100, ...values);
  const W = 640, L = 250, R = 60, H = 18, top = 20;
  const x = (ms) => L + Math.max(0, ms) / max * (W - L - R);
  const height = top + rows.length * (H + 4) + 4;
  let svg = `<svg viewBox="0 0 ${W} ${height}" role="img" aria-label="latency per turn">`;
  const step = Math.pow(10, Math.floor(Math.log10(max))) * (max / Math.pow(10, Math.floor(Math.log10(max))) > 5 ? 2 : 1);
  for (let ms = 0; ms <= max; ms += step) {
    svg += `<line x1="${x(ms)}" x2="${x(ms)}" y1="${top - 4}" y2="${height}" stroke="#e3e6ea"/>` +
           `<text x="${x(ms)}" y="12" text-anchor="middle">${ms} ms</text>`;
  }
  rows.forEach((r, i) => {
    const y = top + i * (H + 4);
    const label = r.label.length > 40 ? r.label.slice(0, 39) + "…" : r.label;
    svg += `<text x="${L - 6}" y="${y + 13}" text-anchor="end"><title>${esc(r.label)}</title>${esc(label)}</text>`;
    for (const [from, to, color] of r.bars) {
      if (typeof from !== "number" || typeof to !== "number" || to < from) continue;
      svg += `<rect class="bar" x="${x(from)}" y="${y}" width="${Math.max(1, x(to) - x(from))}" height="${H}" fill="${color}"/>`;
    }
    if (typeof r.value === "number") svg += `<text x="${x(r.value) + 4}" y="${y + 13}">${Math.round(r.value)}</text>`;
  });
  box.innerHTML = svg + `</svg>`;
}

function renderNotices() {
  if (!changed("notices", state.notices)) return;
  $("notices").innerHTML = state.notices.map((n) => `<div>${esc(n)}</div>`).join("");
}

function render() {
  renderModel();
  renderNotices();
  renderJobs();
  renderChat();
  renderCallees();
  renderCall();
  renderCalendar();
  renderLatency();
  document.body.dataset.ready = "1";
}

function connect() {
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.onmessage = (ev) => {
    const first = state === null;
    state = JSON.parse(ev.data);
    if (first && !$("chat-input").value) $("chat-input").value = state.message;
    render();
  };
  ws.onclose = () => {
    $("model").textContent = "disconnected: is `concierge playground` still running?";
    setTimeout(connect, 1500);
  };
}

function nextTuesday() {
  const d = new Date();
  d.setDate(d.getDate() + ((9 - d.getDay()) % 7 || 7));
  return d.toISOString().slice(0, 10);
}

function setup() {
  $("chat-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("chat-input").value.trim();
    if (text) send({type: "chat", text});
    $("chat-input").value = "";
  });
  $("chat").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-message]");
    if (b) send({type: "press", message: Number(b.dataset.message), data: b.dataset.data});
  });
  $("say-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("say-input").value.trim();
    if (text) send({type: "say", text});
    $("say-input").value = "";
  });
  const keypad = $("keypad");
  for (const key of "123456789*0#") {
    const b = document.createElement("button");
    b.textContent = key;
    b.disabled = true;
    b.className = "ghost";
    b.addEventListener("click", () => send({type: "dtmf", text: key}));
    keypad.appendChild(b);
  }
  $("hangup").addEventListener("click", () => send({type: "hangup"}));
  $("callee").addEventListener("change", (ev) => send({type: "callee", name: ev.target.value}));
  $("busy-date").value = nextTuesday();
  $("busy-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    send({type: "busy_add", date: $("busy-date").value, start: $("busy-start").value, end: $("busy-end").value});
  });
  $("calendar").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-remove]");
    if (b) send({type: "busy_remove", id: b.dataset.remove});
  });
  connect();
}

setup();
