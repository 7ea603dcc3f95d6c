// Call Logs page: asks for an API key (kept in sessionStorage), then lists CDRs, KPIs and a
// chart through the authenticated API. Data is only ever written as text (textContent,
// SVG attributes), never parsed as HTML.
"use strict";

(function () {
  const KEY = "cdrpipe.apiKey";
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    direction: "outbound",
    params: null,       // URLSearchParams of the applied filters (no limit/cursor)
    limit: 100,
    cursors: [null],    // cursor of each page shown so far; last = current page
    next: null,
    me: null,
    seq: 0,
    kpiSeq: 0,
  };

  // --- API access ------------------------------------------------------------------------

  class AuthError extends Error {}

  async function api(path, params) {
    const key = sessionStorage.getItem(KEY);
    if (!key) { askKey(); throw new AuthError("no key"); }
    const url = params ? `${path}?${params}` : path;
    const resp = await fetch(url, { headers: { "X-API-Key": key } });
    if (resp.status === 401) {
      sessionStorage.removeItem(KEY);
      askKey("The API key was not accepted.");
      throw new AuthError("unauthorized");
    }
    if (!resp.ok) {
      let message = `${resp.status} ${resp.statusText}`;
      try { message = (await resp.json()).message || message; } catch (e) { /* not JSON */ }
      throw new Error(message);
    }
    return resp;
  }

  function askKey(error) {
    $("key-error").textContent = error || "";
    const dialog = $("key-dialog");
    if (!dialog.open) dialog.showModal();
    $("key-input").focus();
  }

  // --- filters ---------------------------------------------------------------------------

  function utcInput(d) { return d.toISOString().slice(0, 19).replace("T", " "); }
  function parseUtc(text) { return Date.parse(`${text.trim().replace(" ", "T")}Z`); }

  function defaultRange() {
    const end = new Date();
    end.setUTCHours(0, 0, 0, 0);
    end.setUTCDate(end.getUTCDate() + 1);
    const start = new Date(end);
    start.setUTCDate(start.getUTCDate() - 7);
    $("f-from").value = utcInput(start);
    $("f-to").value = utcInput(end);
  }

  function readFilters() {
    const p = new URLSearchParams();
    p.set("direction", state.direction);
    for (const name of ["from", "to", "account", "source", "destination", "type", "status",
      "rated", "flag"]) {
      const value = $(`f-${name}`).value.trim();
      if (value) p.set(name, value);
    }
    state.limit = Number($("f-limit").value) || 100;
    return p;
  }

  function withPage(cursor) {
    const p = new URLSearchParams(state.params);
    p.set("limit", String(state.limit));
    if (cursor) p.set("cursor", cursor);
    return p;
  }

  // --- rendering -------------------------------------------------------------------------

  const time = (v) => (v ? v.slice(0, 19).replace("T", " ") : "");
  const text = (v) => (v === null || v === undefined ? "" : String(v));
  const initiator = (v) => (v ? v.charAt(0).toUpperCase() + v.slice(1) : "");

  // Each layout's columns as CDR fields, in the seed's order.
  const FIELDS = {
    outbound: ["start_time", "connect_time", "end_time", "source", "cli", "destination",
      "duration", "billing_duration", "disconnect_code", "disconnect_reason", "rate", "charged",
      "cdr_type", "country_name", "network_name", "trunk"],
    inbound: ["start_time", "connect_time", "end_time", "source", "did", "destination",
      "duration", "disconnect_initiator", "disconnect_code", "disconnect_reason",
      "toll_free_amount", "termination_amount", "metered_amount"],
  };
  const SHOW = { start_time: time, connect_time: time, end_time: time,
    disconnect_initiator: initiator };
  const AMOUNTS = new Set(["toll_free_amount", "termination_amount", "metered_amount"]);

  const FLAG_TEXT = {
    account_mismatch: "Account mismatch: the event named another account; stored under the"
      + " trunk's or DID's owner",
    unknown_trunk: "Unrated: the trunk is not in the reference data",
    unknown_did: "Unrated: the DID is not in the reference data",
    no_rate: "Unrated: no rate row matched",
  };

  // Why a row needs a second look, one line each (the row's tooltip), and its badge.
  function notes(cdr) {
    const lines = cdr.flags.map((f) => FLAG_TEXT[f] || f);
    if (cdr.timed_out) {
      lines.push(cdr.rated ? "Timed out: billed up to the maximum call duration"
        : "Unrated: timed out (no end event before the maximum call duration)");
    }
    if (!cdr.rated && !lines.some((l) => l.startsWith("Unrated"))) lines.unshift("Unrated");
    return lines;
  }

  function badge(cdr) {
    const marks = [];
    if (!cdr.rated) marks.push("unrated");
    if (cdr.flags.includes("account_mismatch")) marks.push("account mismatch");
    if (cdr.timed_out) marks.push("timed out");
    return marks.join(" · ");
  }

  function renderRows(page) {
    const body = $("rows");
    body.replaceChildren();
    const fields = FIELDS[state.direction];
    for (const cdr of page.items) {
      const tr = document.createElement("tr");
      tr.dataset.id = cdr.id;
      tr.dataset.status = cdr.status;
      tr.dataset.rated = String(cdr.rated);
      tr.dataset.flags = cdr.flags.join(" ");
      const why = notes(cdr);
      if (why.length) tr.title = why.join("\n");
      const unrated = new Set(cdr.unrated_fields);
      for (const field of fields) {
        const td = document.createElement("td");
        const value = cdr[field];
        td.textContent = (SHOW[field] || text)(value);
        // Marks are CSS-drawn (::after), so a cell's text stays what the CSV holds.
        if (unrated.has(field)) {
          td.classList.add("unrated");
          td.title = "not rated";
        } else if (AMOUNTS.has(field) && (value === null || value === undefined)) {
          td.classList.add("unused");
          td.title = "service not used";
        }
        tr.appendChild(td);
      }
      const mark = badge(cdr);
      if (mark) tr.firstChild.dataset.badge = mark;
      body.appendChild(tr);
    }
    const pageNo = state.cursors.length;
    const first = (pageNo - 1) * state.limit + 1;
    $("summary").textContent = page.items.length
      ? `Rows ${first}–${first + page.items.length - 1}${page.next_cursor ? " (more)" : ""}`
      : "No CDRs match these filters";
    $("page-no").textContent = `Page ${pageNo}`;
    $("prev").disabled = pageNo <= 1;
    $("next").disabled = !page.next_cursor;
    state.next = page.next_cursor;
  }

  const num = (v, digits) => (v === null || v === undefined ? "–"
    : Number(v).toLocaleString("en-US", { maximumFractionDigits: digits }));

  // Every day (or hour) of the range, so that quiet periods show as gaps, not disappear.
  function timeline(groups, groupBy) {
    const from = parseUtc(state.params.get("from") || "");
    const to = parseUtc(state.params.get("to") || "");
    const step = groupBy === "hour" ? 3600e3 : 86400e3;
    if (Number.isNaN(from) || Number.isNaN(to) || (to - from) / step > 2000) return groups;
    const byKey = new Map(groups.map((g) => [g.key, g]));
    const out = [];
    for (let t = Math.floor(from / step) * step; t < to; t += step) {
      const iso = new Date(t).toISOString();
      const key = groupBy === "hour" ? `${iso.slice(0, 10)} ${iso.slice(11, 13)}:00`
        : iso.slice(0, 10);
      out.push(byKey.get(key) || { key, attempts: 0, asr_pct: null });
    }
    return out;
  }

  function renderKpis(k) {
    const t = k.totals;
    $("k-attempts").textContent = num(t.attempts, 0);
    $("k-answered").textContent = num(t.answered, 0);
    $("k-asr").textContent = t.asr_pct === null ? "–" : `${num(t.asr_pct, 2)} %`;
    $("k-acd").textContent = t.acd_s === null ? "–" : `${num(t.acd_s, 1)} s`;
    $("k-ner").textContent = t.ner_pct === null ? "–" : `${num(t.ner_pct, 2)} %`;
    $("k-minutes").textContent = num(t.minutes, 2);
    $("k-billed").textContent = num(t.billed_minutes, 2);
    $("k-charged").textContent = t.charged;
    $("k-unrated").textContent = num(t.unrated, 0);
    $("k-timedout").textContent = num(t.timed_out, 0);
    $("k-mismatch").textContent = num(t.account_mismatch, 0);
    $("k-unrated").parentElement.title = [
      `unknown trunk: ${num(t.unknown_trunk, 0)}`, `unknown DID: ${num(t.unknown_did, 0)}`,
      `no rate: ${num(t.no_rate, 0)}`, `timed out: ${num(t.unrated_timed_out, 0)}`,
    ].join("\n");
    renderChart(timeline(k.groups, k.group_by));
  }

  function el(name, attrs, content) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (content !== undefined) node.textContent = content;
    return node;
  }

  function renderChart(groups) {
    const svg = $("chart");
    svg.replaceChildren();
    const W = Math.max(svg.clientWidth, 300), H = 220, L = 48, R = 44, T = 10, B = 26;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const w = W - L - R, h = H - T - B;
    svg.appendChild(el("rect", { x: L, y: T, width: w, height: h, class: "plot" }));
    if (!groups.length) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" },
        "no calls"));
      return;
    }
    const max = Math.max(...groups.map((g) => g.attempts), 1);
    const step = w / groups.length;
    const points = [];
    groups.forEach((g, i) => {
      const bh = (g.attempts / max) * h;
      const bar = el("rect", { x: L + i * step + step * 0.1, y: T + h - bh,
        width: Math.max(step * 0.8, 1), height: bh, class: "bar" });
      bar.appendChild(el("title", {}, `${g.key}: ${g.attempts} calls, ASR ${
        g.asr_pct === null ? "–" : g.asr_pct + " %"}`));
      svg.appendChild(bar);
      if (g.asr_pct !== null) {
        points.push(`${L + (i + 0.5) * step},${T + h - (g.asr_pct / 100) * h}`);
      }
    });
    if (points.length) svg.appendChild(el("polyline", { points: points.join(" "), class: "asr" }));
    svg.appendChild(el("text", { x: L - 6, y: T + 10, "text-anchor": "end", class: "axis" },
      num(max, 0)));
    svg.appendChild(el("text", { x: L - 6, y: T + h, "text-anchor": "end", class: "axis" }, "0"));
    svg.appendChild(el("text", { x: L + w + 6, y: T + 10, class: "axis" }, "100%"));
    svg.appendChild(el("text", { x: L + w + 6, y: T + h, class: "axis" }, "0%"));
    const labels = groups.length > 1 ? [0, groups.length - 1] : [0];
    for (const i of labels) {
      svg.appendChild(el("text", { x: L + (i + 0.5) * step, y: H - 8,
        "text-anchor": i === 0 && groups.length > 1 ? "start" : "middle", class: "axis" },
      groups[i].key));
    }
  }

  // --- actions ---------------------------------------------------------------------------

  function showError(err) {
    if (err instanceof AuthError) return;
    $("message").textContent = err.message || String(err);
  }

  // After a failed request nothing answered for earlier filters may stay on screen: next to
  // the error it would pass for the answer to the filters now in the form.
  function clearRows() {
    $("rows").replaceChildren();
    $("summary").textContent = "-";
    $("prev").disabled = state.cursors.length <= 1;
    $("next").disabled = true;
    state.next = null;
  }

  function clearKpis() {
    for (const tile of document.querySelectorAll("#kpis b")) tile.textContent = "-";
    $("k-unrated").parentElement.title = "";
    $("chart").replaceChildren();
  }

  async function loadPage(cursor) {
    const seq = ++state.seq;
    $("message").textContent = "";
    try {
      const page = await (await api("/api/v1/cdrs", withPage(cursor))).json();
      if (seq === state.seq) renderRows(page);
    } catch (err) {
      if (seq === state.seq) clearRows();
      showError(err);
    }
  }

  async function loadKpis() {
    const p = new URLSearchParams(state.params);
    const from = parseUtc(p.get("from") || "");
    const to = parseUtc(p.get("to") || "");
    const hourly = !Number.isNaN(from) && !Number.isNaN(to) && to - from <= 3 * 86400e3;
    p.set("group_by", hourly ? "hour" : "day");
    const seq = ++state.kpiSeq;
    try {
      const kpis = await (await api("/api/v1/kpis", p)).json();
      if (seq === state.kpiSeq) renderKpis(kpis);
    } catch (err) {
      if (seq === state.kpiSeq) clearKpis();
      showError(err);
    }
  }

  function apply() {
    state.params = readFilters();
    state.cursors = [null];
    loadPage(null);
    loadKpis();
  }

  async function exportCsv() {
    const button = $("export");
    button.disabled = true;
    try {
      const p = new URLSearchParams(state.params);
      if ($("excel").checked) p.set("excel", "true");
      const resp = await api("/api/v1/cdrs.csv", p);
      const blob = await resp.blob();
      const match = /filename="([^"]+)"/.exec(resp.headers.get("Content-Disposition") || "");
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = match ? match[1] : `cdrs-${state.direction}.csv`;
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 60_000);
    } catch (err) { showError(err); } finally { button.disabled = false; }
  }

  function setDirection(direction) {
    state.direction = direction;
    for (const tab of document.querySelectorAll("[data-direction]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.direction === direction));
    }
    $("head-outbound").hidden = direction !== "outbound";
    $("head-inbound").hidden = direction !== "inbound";
    $("k-billed").parentElement.hidden = direction !== "outbound";
    apply();
  }

  async function start() {
    try {
      const me = await (await api("/api/v1/me")).json();
      state.me = me;
      $("who").textContent = me.admin ? "admin" : `account ${me.account}`;
      $("signout").hidden = false;
      const account = $("f-account");
      if (!me.admin) {
        account.value = me.account;
        account.readOnly = true;
      }
      apply();
    } catch (err) { showError(err); }
  }

  document.addEventListener("DOMContentLoaded", () => {
    defaultRange();
    $("key-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY, key);
      $("key-input").value = "";
      $("key-dialog").close();
      start();
    });
    $("key-dialog").addEventListener("cancel", (ev) => ev.preventDefault());
    $("signout").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      askKey();
    });
    $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); apply(); });
    $("filters").addEventListener("reset", () => {
      setTimeout(() => {
        defaultRange();
        if (state.me && !state.me.admin) $("f-account").value = state.me.account;
        apply();
      }, 0);
    });
    for (const tab of document.querySelectorAll("[data-direction]")) {
      tab.addEventListener("click", () => setDirection(tab.dataset.direction));
    }
    $("next").addEventListener("click", () => {
      if (!state.next) return;
      state.cursors.push(state.next);
      loadPage(state.next);
    });
    $("prev").addEventListener("click", () => {
      if (state.cursors.length <= 1) return;
      state.cursors.pop();
      loadPage(state.cursors[state.cursors.length - 1]);
    });
    $("export").addEventListener("click", exportCsv);
    if (sessionStorage.getItem(KEY)) start(); else askKey();
  });
})();
