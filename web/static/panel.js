// Side panel: live top outliers per scope and the profile of one individual.
// Every string that came from an event is inserted with textContent, never as HTML.

const SEP = "\u0000";

export function scopeKey(r) {
  return `${r.org ?? ""}${SEP}${r.source ?? ""}${SEP}${r.pop ?? ""}`;
}

/** Does result/entry ``r`` belong to the selected scope (empty string = any)? */
export function inScope(r, scope) {
  return (!scope.org || r.org === scope.org) && (!scope.source || r.source === scope.source) && (!scope.pop || r.pop === scope.pop);
}

/** Short text of the top reason in ``explain`` (the action contributing most bits). */
export function reasonText(explain) {
  const e = Array.isArray(explain) ? explain[0] : null;
  if (!e || typeof e !== "object") return "";
  const exp = Number(e.expected);
  const expText = Number.isFinite(exp) ? exp.toFixed(1) : "?";
  const obs = e.observed ?? e.count ?? "?";
  const verb = e.kind === "missing" ? "too few" : "too many";
  return `${verb} ${e.action}: ${obs} vs ${expText} expected (${Number(e.bits).toFixed(1)} bits)`;
}

/** Keeps, for each scope, the individuals with the highest latest zscore (bounded). */
export class Outliers {
  constructor(perScope = 25, maxScopes = 500) {
    this.perScope = perScope;
    this.maxScopes = maxScopes;
    this.scopes = new Map(); // scope key -> {entries: Map(id -> entry), floor}
    this.version = 0;
  }

  /** Take a result into account; ``ifAbsent``: only when the id is not known yet (stored snapshots). */
  offer(r, ifAbsent = false) {
    const z = Number(r.zscore);
    if (!Number.isFinite(z) || r.id === undefined) return;
    const sk = scopeKey(r);
    let s = this.scopes.get(sk);
    if (!s) {
      if (this.scopes.size >= this.maxScopes) this.scopes.delete(this.scopes.keys().next().value);
      s = { entries: new Map(), floor: -Infinity };
      this.scopes.set(sk, s);
    }
    const id = String(r.id);
    const known = s.entries.get(id);
    if (known && ifAbsent) return;
    if (!known && z <= s.floor && s.entries.size >= this.perScope) return;
    s.entries.set(id, {
      org: r.org, source: r.source, pop: r.pop, id,
      zscore: z, score: Number(r.score), count: Number(r.count),
      pscore: Number(r.pscore), learning: r.learning === true,
      reason: reasonText(r.explain), at: Date.now(), muted: r.muted === true,
    });
    this.version++;
    if (s.entries.size > 2 * this.perScope) {
      const kept = [...s.entries.values()].sort((a, b) => b.zscore - a.zscore).slice(0, this.perScope);
      s.entries = new Map(kept.map((e) => [e.id, e]));
      s.floor = kept[kept.length - 1].zscore;
    }
  }

  /** The ``n`` highest zscores among scopes matching ``scope``. */
  top(scope, n) {
    const all = [];
    for (const s of this.scopes.values()) {
      for (const e of s.entries.values()) if (inScope(e, scope)) all.push(e);
    }
    all.sort((a, b) => b.zscore - a.zscore || (a.id < b.id ? -1 : 1));
    return all.slice(0, n);
  }
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

const fmt = (v, d = 2) => (Number.isFinite(v) ? v.toFixed(d) : "");

/** Renders the outlier table; calls ``onPick(entry)`` when a row is clicked. */
export class OutlierTable {
  constructor(tbody, empty, onPick) {
    this.tbody = tbody;
    this.empty = empty;
    this.rows = [];
    this.selected = null;
    tbody.addEventListener("click", (ev) => {
      const tr = ev.target.closest("tr");
      if (!tr || !tr.dataset.index) return;
      const entry = this.rows[Number(tr.dataset.index)];
      if (entry) onPick(entry);
    });
  }

  render(entries, red) {
    this.rows = entries;
    const frag = document.createDocumentFragment();
    entries.forEach((e, i) => {
      const tr = document.createElement("tr");
      tr.dataset.index = String(i);
      // A muted individual (a mute rule) is never shown as an outlier: dimmed and tagged instead of red.
      if (e.muted) tr.classList.add("is-muted");
      else if (e.zscore >= red) tr.classList.add("red");
      if (e.learning) {
        tr.classList.add("learning"); // thin evidence: shown dimmed (style.css)
        tr.title = "learning: too few events, or too few individuals in its population, to be sure";
      }
      if (this.selected && this.selected === scopeKey(e) + SEP + e.id) tr.classList.add("selected");
      const idCell = cell(tr, e.id, "id");
      idCell.title = e.id;
      if (e.muted) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "muted";
        idCell.appendChild(tag);
      }
      cell(tr, e.pop ?? "", "pop").title = `${e.org} / ${e.source} / ${e.pop}`;
      cell(tr, fmt(e.zscore), "num z");
      cell(tr, fmt(e.score, 1), "num");
      cell(tr, String(e.count), "num");
      cell(tr, e.reason, "reason").title = e.reason;
      frag.appendChild(tr);
    });
    this.tbody.replaceChildren(frag);
    this.empty.hidden = entries.length > 0;
  }

  select(entry) {
    this.selected = entry ? scopeKey(entry) + SEP + entry.id : null;
  }
}

/** Normalise an /api/individual answer into rows {action, observed, expected, bits}. */
export function profileRows(data) {
  const list = data.actions ?? data.profile ?? data.explain ?? [];
  const rows = [];
  if (Array.isArray(list)) {
    for (const a of list) {
      rows.push({
        action: String(a.action ?? ""),
        observed: Number(a.count ?? a.observed ?? 0),
        normalised: Number(a.observed ?? a.count ?? 0),
        expected: Number(a.expected ?? 0),
        bits: Number(a.bits ?? 0),
      });
    }
  } else if (list && typeof list === "object") {
    for (const [action, a] of Object.entries(list)) {
      rows.push({ action, observed: Number(a.count ?? 0), normalised: Number(a.observed ?? a.count ?? 0), expected: Number(a.expected ?? 0), bits: Number(a.bits ?? 0) });
    }
  }
  rows.sort((a, b) => b.bits - a.bits || b.observed - a.observed);
  return rows;
}

/** Text of the analysts' rules and feedback on an /api/individual answer: muted, excluded, the mark. */
export function ruleTexts(data) {
  const out = [];
  if (data.muted === true) out.push(["muted", "muted"]);
  if (data.excluded === true) out.push(["excluded", "excluded from learning"]);
  const fb = data.feedback;
  if (fb && typeof fb === "object") {
    const when = Number.isFinite(Number(fb.at)) ? new Date(Number(fb.at)).toISOString().slice(0, 16).replace("T", " ") : "";
    const note = fb.note ? `: ${fb.note}` : "";
    out.push([`feedback ${fb.label}`, `${fb.label} by ${fb.by ?? "?"} ${when}${note}`]);
  }
  return out;
}

function ruleTags(data) {
  return ruleTexts(data).map(([cls, text]) => {
    const tag = document.createElement("span");
    tag.className = `tag ${cls}`;
    tag.textContent = text;
    return tag;
  });
}

/** Profile section: fetches /api/individual and draws counts vs expected and bits as bars. */
export class Profile {
  constructor(root) {
    this.root = root;
    this.title = root.querySelector("#profile-title");
    this.meta = root.querySelector("#profile-meta");
    this.status = root.querySelector("#profile-status");
    this.chart = root.querySelector("#profile-chart");
    this.rules = root.querySelector("#profile-rules");
    this.pending = null;
  }

  async open(entry) {
    this.root.hidden = false;
    this.title.textContent = entry.id;
    this.meta.textContent = `${entry.org} / ${entry.source} / ${entry.pop}`;
    this.status.textContent = "loading\u2026";
    this.chart.replaceChildren();
    if (this.rules) this.rules.replaceChildren();
    const q = new URLSearchParams({ org: entry.org ?? "", source: entry.source ?? "", pop: entry.pop ?? "", id: entry.id });
    const ctl = new AbortController();
    if (this.pending) this.pending.abort();
    this.pending = ctl;
    let data;
    try {
      const resp = await fetch(`/api/individual?${q}`, { signal: ctl.signal, headers: { Accept: "application/json" } });
      data = await resp.json().catch(() => ({}));
      if (!resp.ok) {
        this.status.textContent = `profile unavailable (${resp.status}${data.error ? ": " + data.error : ""})`;
        return;
      }
    } catch (err) {
      if (err.name !== "AbortError") this.status.textContent = `profile unavailable (${err.message})`;
      return;
    }
    this.render(entry, data);
  }

  render(entry, data) {
    const z = Number(data.zscore ?? entry.zscore);
    const score = Number(data.score ?? entry.score);
    const count = data.count ?? data.n ?? entry.count;
    const extra = [];
    if (Number.isFinite(Number(data.pscore))) extra.push(`percentile ${fmt(100 * Number(data.pscore), 1)}`);
    if (Number.isFinite(Number(data.rzscore))) extra.push(`robust z ${fmt(Number(data.rzscore))}`);
    if (data.learning === true) extra.push("learning");
    this.status.textContent = [`zscore ${fmt(z)}`, `score ${fmt(score, 1)} bits`, `${count} events`, ...extra].join(" \u00b7 ");
    this.root.classList.toggle("learning", data.learning === true);
    if (this.rules) this.rules.replaceChildren(...ruleTags(data));
    const rows = profileRows(data);
    const maxCount = Math.max(1, ...rows.map((r) => Math.max(r.normalised, r.expected)));
    const maxBits = Math.max(1e-9, ...rows.map((r) => r.bits));
    const frag = document.createDocumentFragment();
    for (const r of rows.slice(0, 40)) {
      const row = document.createElement("div");
      row.className = "prow";
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = r.action;
      name.title = r.action;
      const bars = document.createElement("span");
      bars.className = "bars";
      for (const [cls, v, max] of [["obs", r.normalised, maxCount], ["exp", r.expected, maxCount], ["bits", r.bits, maxBits]]) {
        const b = document.createElement("span");
        b.className = `bar ${cls}`;
        b.style.width = `${Math.max(0, Math.min(100, (100 * v) / max))}%`;
        bars.appendChild(b);
      }
      const val = document.createElement("span");
      val.className = "val";
      val.textContent = `${r.observed}/${fmt(r.expected, 1)} ${fmt(r.bits, 1)}b`;
      val.title = `observed ${r.observed} (normalised ${r.normalised}), expected ${fmt(r.expected, 2)}, ${fmt(r.bits, 2)} bits`;
      row.append(name, bars, val);
      frag.appendChild(row);
    }
    this.chart.replaceChildren(frag);
    if (!rows.length) this.status.textContent += " \u00b7 no actions";
  }
}

/** ``scope`` "ORG/SOURCE/POP" of an alert as {org, source, pop} (empty strings when malformed). */
export function alertScope(alert) {
  const parts = typeof alert.scope === "string" ? alert.scope.split("/") : [];
  return parts.length === 3 ? { org: parts[0], source: parts[1], pop: parts[2] } : { org: "", source: "", pop: "" };
}

/** Text of an alert's top ``n`` reasons, one per reason (same wording as the outlier table). */
export function reasonsText(reasons, n = 3) {
  const list = Array.isArray(reasons) ? reasons.slice(0, n) : [];
  return list.map((r) => reasonText([r])).filter((t) => t);
}

/** The alerts that fired, newest first, at most ``max`` (deduplicated by their stream id). */
export class Alerts {
  constructor(max = 50) {
    this.max = max;
    this.list = [];
    this.ids = new Set();
    this.version = 0;
  }

  /** Take one alert (from the websocket or /api/alerts); false when known, malformed or too old to keep. */
  add(alert) {
    if (!alert || typeof alert !== "object" || typeof alert.alert_id !== "string" || this.ids.has(alert.alert_id)) return false;
    const at = Number(alert.at);
    const entry = {
      ...alertScope(alert), alert, at: Number.isFinite(at) ? at : 0, id: String(alert.id ?? ""),
      zscore: Number(alert.zscore), score: Number(alert.score), count: alert.count,
    };
    // Stream ids grow with time: keep the list sorted newest first (a pre-fill may come after live ones).
    let i = 0;
    while (i < this.list.length && this.list[i].at > entry.at) i++;
    if (i >= this.max) return false;
    this.list.splice(i, 0, entry);
    this.ids.add(alert.alert_id);
    while (this.list.length > this.max) this.ids.delete(this.list.pop().alert.alert_id);
    this.version++;
    return true;
  }

  /** The alerts of scopes matching ``scope``, newest first. */
  matching(scope) {
    return this.list.filter((e) => inScope(e, scope));
  }
}

const clock = (ms) => (ms > 0 ? new Date(ms).toISOString().slice(11, 19) : "");

/** Renders the alert list; clicking an id opens its profile in the panel (``onPick(entry)``). */
export class AlertList {
  constructor(list, empty, onPick) {
    this.list = list;
    this.empty = empty;
    list.addEventListener("click", (ev) => {
      const a = ev.target.closest("a.alert-id");
      if (!a || !a.dataset.index) return;
      const entry = this.rows[Number(a.dataset.index)];
      if (!entry || ev.button !== 0 || ev.ctrlKey || ev.metaKey || ev.shiftKey) return; // new tab: the JSON profile
      ev.preventDefault();
      onPick(entry);
    });
    this.rows = [];
  }

  render(entries) {
    this.rows = entries;
    const items = entries.map((e, i) => {
      const a = e.alert;
      const li = document.createElement("li");
      li.className = "alert";
      const head = document.createElement("div");
      head.className = "alert-head";
      const time = document.createElement("time");
      time.textContent = clock(e.at);
      if (e.at > 0) time.dateTime = new Date(e.at).toISOString();
      const rule = document.createElement("span");
      rule.className = "alert-rule";
      rule.textContent = String(a.rule ?? "");
      const link = document.createElement("a");
      link.className = "alert-id";
      link.dataset.index = String(i);
      link.textContent = e.id;
      // Built here from the alert's fields (never its "profile" text): an href can only be this API path.
      link.href = `/api/individual?${new URLSearchParams({ org: e.org, source: e.source, pop: e.pop, id: e.id })}`;
      link.title = `profile of ${e.id}`;
      const z = document.createElement("span");
      z.className = "alert-z";
      z.textContent = `z ${fmt(Number(a.zscore))}`;
      head.append(time, rule, link, z);
      if (a.test === true) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "test";
        head.appendChild(tag);
      }
      const scope = document.createElement("div");
      scope.className = "alert-scope";
      scope.textContent = `${e.org} / ${e.source} / ${e.pop}`;
      li.append(head, scope);
      for (const text of reasonsText(a.reasons)) {
        const r = document.createElement("div");
        r.className = "alert-reason";
        r.textContent = text;
        r.title = text;
        li.appendChild(r);
      }
      return li;
    });
    this.list.replaceChildren(...items);
    this.empty.hidden = entries.length > 0;
  }
}
