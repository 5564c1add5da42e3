// Binormal live view: wires the websocket, the Matrix canvas, the sliders, the scope
// selector, the status line and the outlier panel. No build step; plain ES modules.
import { Matrix, Sampler } from "./matrix.js";
import { LiveSocket } from "./socket.js";
import { Login, needsLogin } from "./login.js";
import { AlertList, Alerts, Outliers, OutlierTable, Profile, inScope, scopeKey } from "./panel.js";

const FADE_EVERY_MS = 100; // slow fade: 6 % darker ten times a second
const FADE_ALPHA = 0.06;
const PANEL_ROWS = 20;
const MAX_OPTIONS = 500; // values remembered per scope selector
const PREFILL_SCOPES = 50; // scopes whose stored top outliers pre-fill the panel on load
const ALERTS_KEPT = 50; // alerts the panel shows (newest first); the server keeps as many per page
const $ = (id) => document.getElementById(id);

const state = { z: -3, red: 3, size: 16, scope: { org: "", source: "", pop: "" }, panelOpen: true };
const counters = {
  received: 0, drawn: 0, drawnRed: 0, queuedRed: 0, sampledOut: 0, filtered: 0,
  droppedBase: 0, droppedConn: 0, connects: 0, status: "connecting",
};

const canvas = $("matrix");
const matrix = new Matrix(canvas);
const sampler = new Sampler(4000);
const outliers = new Outliers();
const profile = new Profile($("profile"));
const table = new OutlierTable($("outliers-body"), $("outliers-empty"), (entry) => {
  table.select(entry);
  panelDirty = true;
  profile.open(entry);
});
const alerts = new Alerts(ALERTS_KEPT);
const alertList = new AlertList($("alerts-list"), $("alerts-empty"), (entry) => profile.open(entry));
let panelDirty = true;
let alertsDirty = true;
let budget = 400; // characters drawn per animation frame; adapted to the time drawing takes

const keyOf = (r) => `${scopeKey(r)}\u0000${r.id}`;

// ------------------------------------------------------------------ sliders

const zIn = $("zfilter");
const redIn = $("redfilter");
const sizeIn = $("charsize");

function showSlider(input) {
  $(`${input.id}-value`).textContent = input.value;
}

zIn.addEventListener("input", () => { state.z = Number(zIn.value); showSlider(zIn); });
redIn.addEventListener("input", () => { state.red = Number(redIn.value); showSlider(redIn); panelDirty = true; });
sizeIn.addEventListener("input", () => { state.size = Number(sizeIn.value); showSlider(sizeIn); layout(); });

/** Seed behaviour: at its minimum the zscore filter follows lower zscores; its max widens. */
function stretchZ(z) {
  if (z < Number(zIn.min)) {
    const atMin = Number(zIn.value) <= Number(zIn.min);
    zIn.min = String(Math.floor(z));
    if (atMin) {
      zIn.value = zIn.min;
      state.z = Number(zIn.value);
      showSlider(zIn);
    }
  }
  if (z > Number(zIn.max)) zIn.max = String(Math.ceil(z));
}

// ------------------------------------------------------------------ scope selector

const selects = { org: $("scope-org"), source: $("scope-source"), pop: $("scope-pop") };
const seen = { org: new Set(), source: new Set(), pop: new Set() };
let scopesDirty = false;

function see(level, value) {
  if (typeof value !== "string" || seen[level].has(value) || seen[level].size >= MAX_OPTIONS) return;
  seen[level].add(value);
  scopesDirty = true;
}

function renderScopeOptions() {
  for (const level of Object.keys(selects)) {
    const sel = selects[level];
    const current = sel.value;
    const opts = [new Option("all", "")];
    for (const v of [...seen[level]].sort()) opts.push(new Option(v, v)); // Option(text): never parsed as HTML
    sel.replaceChildren(...opts);
    sel.value = current;
  }
  scopesDirty = false;
}

for (const [level, sel] of Object.entries(selects)) {
  sel.addEventListener("change", () => {
    state.scope[level] = sel.value;
    const s = state.scope;
    $("outliers-scope").textContent = s.org || s.source || s.pop ? [s.org || "*", s.source || "*", s.pop || "*"].join(" / ") : "all scopes";
    sampler.reset();
    layout(); // the selected scope gets the whole canvas
    panelDirty = true;
    alertsDirty = true;
  });
}

async function getJSON(url) {
  const resp = await fetch(url, { headers: { Accept: "application/json" } });
  if (!resp.ok) throw new Error(`${url}: ${resp.status}`);
  return resp.json();
}

// ------------------------------------------------------------------ dominated scopes

const DOMINANCE_REFRESH_MS = 10000;

/** Scopes one individual dominates (``dominated`` of /api/scopes), as text only: never parsed as HTML. */
function renderDominated(list) {
  const items = [];
  for (const s of list) {
    const d = s.dominated;
    if (!d || typeof d !== "object") continue;
    const li = document.createElement("li");
    li.className = "dominated-scope";
    const share = Math.round(Number(d.share) * 1000) / 10;
    li.textContent = `${s.org} / ${s.source} / ${s.pop}: ${d.id} has ${share} % of its events`;
    li.title = "its weight in the population is capped (BINORMAL_WEIGHT_CAP); see docs/quality.md";
    items.push(li);
  }
  $("dominated-list").replaceChildren(...items);
  $("dominated").hidden = items.length === 0;
}

async function scopeList() {
  const data = await getJSON("/api/scopes");
  return (Array.isArray(data) ? data : data.scopes ?? []).filter((s) => s && typeof s === "object");
}

setInterval(async () => {
  try { renderDominated(await scopeList()); } catch { /* logged out or API down: keep the last list */ }
}, DOMINANCE_REFRESH_MS);

/** Scope options from /api/scopes, then the panel pre-filled with each scope's stored top outliers. */
async function loadScopes() {
  let list = [];
  try {
    list = await scopeList();
  } catch { return; /* the live stream fills the selectors anyway */ }
  renderDominated(list);
  for (const s of list) {
    see("org", s.org);
    see("source", s.source);
    see("pop", s.pop);
  }
  for (const s of list.slice(0, PREFILL_SCOPES)) {
    // muted=1: muted individuals are listed too, and shown as muted (never red).
    const q = new URLSearchParams({ org: s.org, source: s.source, pop: s.pop, limit: "10", muted: "1" });
    try {
      const data = await getJSON(`/api/outliers?${q}`);
      for (const o of data.outliers ?? []) {
        // Only fills gaps: a live result for the same id replaces it.
        outliers.offer({ org: s.org, source: s.source, pop: s.pop, id: o.id, zscore: o.zscore,
          score: o.score, count: o.count, pscore: o.pscore, learning: o.learning, explain: o.reasons,
          muted: o.muted }, true);
      }
      panelDirty = true;
    } catch { /* scope vanished or API down: live results still arrive */ }
  }
}

// ------------------------------------------------------------------ alerts

/** The recent alerts of the viewer's orgs (/api/alerts), merged with those the socket pushed. */
async function loadAlerts() {
  try {
    const data = await getJSON(`/api/alerts?limit=${ALERTS_KEPT}`);
    for (const a of data.alerts ?? []) if (alerts.add(a)) alertsDirty = true;
  } catch { /* API down or no access: the live alerts still arrive */ }
}

// ------------------------------------------------------------------ results in

function onResults(results) {
  counters.received += results.length;
  for (const r of results) {
    const z = Number(r.zscore);
    if (!Number.isFinite(z)) continue;
    stretchZ(z);
    outliers.offer(r);
    see("org", r.org);
    see("source", r.source);
    see("pop", r.pop);
    if (z < state.z || !inScope(r, state.scope)) {
      counters.filtered++;
      continue;
    }
    const isRed = z >= state.red && r.muted !== true; // muted (a mute rule): never an outlier
    if (isRed) counters.queuedRed++;
    sampler.push(r, isRed);
  }
  panelDirty = true;
}

function onControl(msg) {
  if (msg.type === "alert") {
    if (alerts.add(msg.alert)) alertsDirty = true;
  } else if (msg.type === "hello") {
    loadAlerts(); // on every (re)connect: alerts that fired while the page was away
    counters.connects++;
    counters.droppedBase += counters.droppedConn;
    counters.droppedConn = 0;
  } else if (msg.type === "stats" && Number.isFinite(Number(msg.dropped))) {
    counters.droppedConn = Number(msg.dropped);
  }
}

function onState(status, delay) {
  if (status === "reconnecting" && !login.shown) checkSession();
  counters.status = status;
  const el = $("conn");
  el.className = `conn conn-${status}`;
  el.textContent = status === "reconnecting" && delay ? `reconnecting (retry in ${(delay / 1000).toFixed(1)} s)` : status;
}

// ------------------------------------------------------------------ drawing

function layout() {
  const panelW = state.panelOpen ? $("panel").getBoundingClientRect().width : 28;
  const width = document.documentElement.clientWidth - panelW;
  matrix.layout(width, window.innerHeight, state.size);
  sampler.reset();
}

let lastFade = 0;
function animate(now) {
  if (now - lastFade >= FADE_EVERY_MS) {
    matrix.fade(FADE_ALPHA);
    lastFade = now;
  }
  if (sampler.size) {
    const t0 = performance.now();
    const batch = sampler.take(budget);
    counters.drawnRed += matrix.draw(batch, state.red, keyOf);
    counters.drawn += batch.length;
    counters.sampledOut = sampler.sampledOut;
    const spent = performance.now() - t0;
    // Keep drawing under ~8 ms per frame so the page stays responsive.
    if (spent > 8) budget = Math.max(50, Math.floor(budget * 0.7));
    else if (spent < 4 && batch.length >= budget) budget = Math.min(4000, Math.ceil(budget * 1.25));
  }
  requestAnimationFrame(animate);
}

// ------------------------------------------------------------------ hover

const tip = $("tooltip");
canvas.addEventListener("mousemove", (ev) => {
  const rect = canvas.getBoundingClientRect();
  const hit = matrix.at(ev.clientX - rect.left);
  if (!hit || !hit.last) {
    tip.hidden = true;
    return;
  }
  const r = hit.last;
  const more = hit.owners > 1 ? ` (+${hit.owners - 1} more share this column)` : "";
  const learning = r.learning === true ? " \u00b7 learning" : "";
  tip.textContent = `${r.id} \u00b7 ${r.pop} \u00b7 z ${Number(r.zscore).toFixed(2)}${learning}${more}`;
  tip.hidden = false;
  tip.style.left = `${Math.min(ev.clientX + 12, window.innerWidth - tip.offsetWidth - 4)}px`;
  tip.style.top = `${ev.clientY + 14}px`;
});
canvas.addEventListener("mouseleave", () => { tip.hidden = true; });

// ------------------------------------------------------------------ panel and status

$("panel-toggle").addEventListener("click", () => {
  state.panelOpen = !state.panelOpen;
  const panel = $("panel");
  panel.classList.toggle("open", state.panelOpen);
  panel.classList.toggle("closed", !state.panelOpen);
  document.body.classList.toggle("panel-open", state.panelOpen);
  document.body.classList.toggle("panel-closed", !state.panelOpen);
  $("panel-toggle").setAttribute("aria-expanded", String(state.panelOpen));
  alertsDirty = true;
  layout();
});

setInterval(() => {
  if (scopesDirty) renderScopeOptions();
  if (panelDirty && state.panelOpen) {
    table.render(outliers.top(state.scope, PANEL_ROWS), state.red);
    panelDirty = false;
  }
  if (alertsDirty && state.panelOpen) {
    alertList.render(alerts.matching(state.scope));
    alertsDirty = false;
  }
}, 250);

let lastTick = performance.now();
let lastReceived = 0;
let lastDrawn = 0;
setInterval(() => {
  const now = performance.now();
  const secs = Math.max(0.001, (now - lastTick) / 1000);
  const rate = (counters.received - lastReceived) / secs;
  const drawn = (counters.drawn - lastDrawn) / secs;
  lastTick = now;
  lastReceived = counters.received;
  lastDrawn = counters.drawn;
  counters.rate = rate;
  $("rate").textContent = `${Math.round(rate)} results/s`;
  $("drawn").textContent = `${Math.round(drawn)} drawn/s${counters.sampledOut ? ` (${counters.sampledOut} sampled out)` : ""}`;
  $("dropped").textContent = `${counters.droppedBase + counters.droppedConn} dropped by server`;
}, 1000);

// ------------------------------------------------------------------ start

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(layout, 200);
});

document.body.classList.add("panel-open");
for (const input of [zIn, redIn, sizeIn]) showSlider(input);
state.z = Number(zIn.value);
state.red = Number(redIn.value);
state.size = Number(sizeIn.value);
layout();
requestAnimationFrame(animate);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/websocket?stats=1`;
const socket = new LiveSocket(wsUrl, { onResults, onControl, onState });
const login = new Login({ onLogin: () => { loadScopes(); socket.connect(); } });

/** The socket closed: if the session is gone (401), stop reconnecting and ask for the token. */
async function checkSession() {
  if (await needsLogin()) {
    socket.stop();
    onState("logged-out");
    login.show("session expired or revoked: log in again");
  }
}

(async () => {
  if (await needsLogin()) {
    onState("logged-out");
    login.show();
    return;
  }
  loadScopes();
  socket.connect();
})();

// Read-only hooks for the browser tests and for debugging from the console.
window.binormal = { state, counters, matrix, outliers, alerts, socket, login };
