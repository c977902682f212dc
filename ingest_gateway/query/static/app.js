/* procfleet dashboard: top processes by CPU / memory and the selected one over time.
 * Talks to the gateway's query API with a read token (localStorage, or #token=… once).
 * document.body.dataset.state = loading | ready | empty | error | token (tests wait on it). */
"use strict";

(() => {
  const REFRESH_MS = 30000;
  const TOKEN_KEY = "procfleet.token";
  const SETTINGS_KEY = "procfleet.dashboard";
  const $ = (id) => document.getElementById(id);

  const saved = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
  const state = {
    token: localStorage.getItem(TOKEN_KEY) || "",
    metric: saved.metric === "memory" ? "memory" : "cpu",
    hours: [1, 6, 24, 168].includes(saved.hours) ? saved.hours : 1,
    servers: null, // null = every server, else an array of ids
    allServers: [],
    top: null,
    series: null,
    selected: null,
    controller: null,
    timer: null,
    generation: 0,
  };

  class AuthError extends Error {}

  // -- token -------------------------------------------------------------------------------
  function takeFragmentToken() {
    const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (!match) return;
    state.token = decodeURIComponent(match[1]);
    localStorage.setItem(TOKEN_KEY, state.token);
    // Do not leave the token in the address bar or the history.
    history.replaceState(null, "", location.pathname + location.search);
  }

  function askForToken(message) {
    $("token-card").hidden = false;
    $("token-error").hidden = !message;
    $("token-error").textContent = message || "";
    $("content").hidden = true;
    setStatus("error", message || "A read token is needed.");
    document.body.dataset.state = "token";
    $("token-input").focus();
  }

  // -- API ---------------------------------------------------------------------------------
  async function api(path, params, signal) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (Array.isArray(value)) value.forEach((v) => query.append(key, v));
      else if (value !== undefined && value !== null) query.append(key, value);
    }
    const response = await fetch(`${path}?${query}`, {
      headers: { Authorization: `Bearer ${state.token}` }, signal, cache: "no-store",
    });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (response.status === 401) throw new AuthError("The token was rejected.");
    if (response.status === 403) throw new AuthError("This token has no read scope.");
    if (!response.ok) {
      const reason = body && body.error ? body.error.reason : response.statusText;
      throw new Error(`${response.status}: ${reason}`);
    }
    return body;
  }

  // -- formatting --------------------------------------------------------------------------
  const fmtCpu = (v) => `${v >= 100 ? v.toFixed(0) : v.toFixed(v >= 10 ? 1 : 2)} %`;
  const fmtMem = (mb) => (mb >= 1024 ? `${(mb / 1024).toFixed(2)} GB` :
    `${mb.toFixed(mb >= 100 ? 0 : 1)} MB`);
  // Axis labels: no decimals a reader does not need ("0 %", "250 %", "1.5 GB").
  const axisCpu = (v) => `${v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1)} %`;
  const axisMem = (mb) => (mb >= 1024 ? `${+(mb / 1024).toFixed(1)} GB` : `${+mb.toFixed(0)} MB`);
  const fmtNum = (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(1));
  const rangeLabel = (h) => ({ 1: "last hour", 6: "last 6 hours", 24: "last 24 hours",
    168: "last 7 days" })[h];
  const clock = (d) => d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit",
    second: "2-digit" });

  function setStatus(kind, text) {
    $("status-dot").className = `dot ${kind}`;
    $("status-text").textContent = text;
  }

  function showState(id, kind, text) {
    const el = $(id);
    el.hidden = !kind;
    el.className = `state ${kind || ""}`;
    el.textContent = text || "";
  }

  // -- servers -----------------------------------------------------------------------------
  async function loadServers() {
    const body = await api("/api/servers");
    state.allServers = body.servers;
    renderServers();
  }

  function renderServers() {
    const list = $("server-list");
    const filter = $("servers-filter").value.trim().toLowerCase();
    list.textContent = "";
    for (const server of state.allServers) {
      const label = server.hostname && server.hostname !== server.server_id ?
        `${server.server_id} (${server.hostname})` : server.server_id;
      if (filter && !label.toLowerCase().includes(filter)) continue;
      const row = document.createElement("label");
      row.className = "check";
      const box = document.createElement("input");
      box.type = "checkbox";
      box.value = server.server_id;
      box.checked = state.servers === null || state.servers.includes(server.server_id);
      box.addEventListener("change", onServerToggle);
      const text = document.createElement("span");
      text.textContent = label;
      row.append(box, text);
      if (server.stale) {
        const stale = document.createElement("span");
        stale.className = "stale";
        stale.textContent = "stale";
        row.append(stale);
      }
      list.append(row);
    }
    $("servers-all").checked = state.servers === null;
    $("servers-label").textContent = state.servers === null ?
      `all (${state.allServers.length})` : `${state.servers.length} selected`;
  }

  function onServerToggle(event) {
    const id = event.target.value;
    let chosen = state.servers === null ? state.allServers.map((s) => s.server_id) :
      [...state.servers];
    chosen = event.target.checked ? [...new Set([...chosen, id])] :
      chosen.filter((s) => s !== id);
    state.servers = chosen.length === state.allServers.length ? null : chosen;
    renderServers();
    refresh(true);
  }

  // -- top table ---------------------------------------------------------------------------
  function cell(row, text, value, className) {
    const td = document.createElement("td");
    td.className = className || "num";
    td.textContent = text;
    if (value !== undefined) td.dataset.value = value;
    row.append(td);
    return td;
  }

  function renderTable(top) {
    const rows = $("top-rows");
    rows.textContent = "";
    const metricKey = state.metric === "cpu" ? "avg_cpu_percent" : "avg_memory_mb";
    const max = Math.max(...top.processes.map((p) => p[metricKey]), 1e-9);
    document.querySelectorAll(".top th[data-col]").forEach((th) => {
      th.classList.toggle("sorted", th.dataset.col === state.metric);
    });
    top.processes.forEach((p, i) => {
      const tr = document.createElement("tr");
      tr.dataset.name = p.name;
      tr.classList.toggle("selected", p.name === state.selected);
      cell(tr, String(i + 1), undefined, "rank");
      const name = cell(tr, p.name, undefined, "name");
      name.title = p.name;
      const cpu = cell(tr, fmtCpu(p.avg_cpu_percent), p.avg_cpu_percent);
      cpu.dataset.field = "avg_cpu_percent";
      cell(tr, fmtCpu(p.peak_cpu_percent), p.peak_cpu_percent).dataset.field =
        "peak_cpu_percent";
      const mem = cell(tr, fmtMem(p.avg_memory_mb), p.avg_memory_mb);
      mem.dataset.field = "avg_memory_mb";
      cell(tr, fmtMem(p.peak_memory_mb), p.peak_memory_mb).dataset.field = "peak_memory_mb";
      cell(tr, fmtNum(p.avg_num_procs), p.avg_num_procs).dataset.field = "avg_num_procs";
      cell(tr, String(p.servers), p.servers).dataset.field = "servers";
      const barred = state.metric === "cpu" ? cpu : mem;
      barred.classList.add("barcell");
      const bar = document.createElement("div");
      bar.className = "bar-fill";
      const fill = document.createElement("span");
      fill.style.width = `${Math.max(2, (100 * p[metricKey]) / max)}%`;
      bar.append(fill);
      barred.append(bar);
      tr.addEventListener("click", () => select(p.name));
      rows.append(tr);
    });
  }

  function select(name) {
    state.selected = name;
    document.querySelectorAll("#top-rows tr").forEach((tr) => {
      tr.classList.toggle("selected", tr.dataset.name === name);
    });
    loadSeries(state.generation);
  }

  // -- chart -------------------------------------------------------------------------------
  function renderFacts(p) {
    const facts = $("facts");
    facts.textContent = "";
    if (!p) return;
    const items = state.metric === "cpu" ?
      [["Average CPU", fmtCpu(p.avg_cpu_percent)], ["Peak CPU", fmtCpu(p.peak_cpu_percent)],
        ["Servers", String(p.servers)]] :
      [["Average memory", fmtMem(p.avg_memory_mb)], ["Peak memory", fmtMem(p.peak_memory_mb)],
        ["Servers", String(p.servers)]];
    for (const [label, value] of items) {
      const div = document.createElement("div");
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value;
      div.append(dt, dd);
      facts.append(div);
    }
  }

  function redraw() {
    const series = state.series || { points: [], from: new Date(Date.now() - 36e5),
      to: new Date() };
    drawChart($("chart-svg"), $("chart-tip"), series.points, {
      from: series.from, to: series.to, format: state.metric === "cpu" ? fmtCpu : fmtMem,
      axis: state.metric === "cpu" ? axisCpu : axisMem,
      // Memory axes in round GB once values pass 1 GB (20 GB, not 19.5 GB).
      niceMax: state.metric === "cpu" ? undefined :
        (mb) => (mb >= 1024 ? niceMax(mb / 1024) * 1024 : niceMax(mb)),
    });
  }

  async function loadSeries(generation) {
    const name = state.selected;
    const p = state.top && state.top.processes.find((x) => x.name === name);
    $("chart-title").textContent = name || "—";
    renderFacts(p);
    if (!name) {
      state.series = null;
      $("chart-meta").textContent = "";
      showState("chart-state", "empty", "Nothing to plot.");
      redraw();
      return;
    }
    try {
      const body = await api(`/api/processes/${encodeURIComponent(name)}/series`, {
        metric: state.metric, hours: state.hours, source: state.top.source,
        "server_ids[]": state.servers || undefined,
      });
      if (generation !== state.generation || name !== state.selected) return;
      const points = body.points.map((pt) => ({ t: new Date(pt.ts), v: pt.value }));
      state.series = { points, from: new Date(body.from), to: new Date(body.to) };
      showState("chart-state", "", "");
      $("chart-meta").textContent = `${body.step_s >= 3600 ? `${body.step_s / 3600} h` :
        `${body.step_s / 60} min`} steps · summed over servers`;
      redraw();
    } catch (error) {
      if (error.name === "AbortError") return;
      showState("chart-state", "error", `Could not load the series: ${error.message}`);
    }
  }

  // -- refresh -----------------------------------------------------------------------------
  async function refresh(userAction) {
    if (!state.token) {
      askForToken();
      return;
    }
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    const generation = ++state.generation;
    document.body.dataset.state = "loading";
    document.body.dataset.query = `${state.metric}:${state.hours}`;
    setStatus("loading", "Loading…");
    if (userAction || !state.top) {
      showState("table-state", "loading", "Loading…");
      $("top-table").hidden = true;
    }
    $("table-title").textContent = `Top 10 by ${state.metric === "cpu" ? "CPU" : "memory"}`;
    try {
      if (!state.allServers.length) await loadServers();
      if (state.servers && !state.servers.length) {
        state.top = { processes: [], source: "groups" };
        state.selected = null;
        $("top-table").hidden = true;
        showState("table-state", "empty", "No server selected.");
        await loadSeries(generation);
        setStatus("ok", "No server selected.");
        document.body.dataset.state = "empty";
        return;
      }
      const top = await api("/api/processes/top", {
        metric: state.metric, hours: state.hours, limit: 10,
        "server_ids[]": state.servers || undefined,
      }, controller.signal);
      if (generation !== state.generation) return;
      state.top = top;
      $("token-card").hidden = true;
      $("content").hidden = false;
      $("table-meta").textContent = `${rangeLabel(state.hours)} · ${top.source}`;
      if (!top.processes.length) {
        showState("table-state", "empty", "No samples in this window for these servers.");
        $("top-table").hidden = true;
        state.selected = null;
      } else {
        showState("table-state", "", "");
        $("top-table").hidden = false;
        if (!top.processes.some((p) => p.name === state.selected)) {
          state.selected = top.processes[0].name;
        }
        renderTable(top);
      }
      await loadSeries(generation);
      if (generation !== state.generation) return;
      const upTo = new Date(top.to);
      setStatus("ok", `Updated ${clock(new Date())} · data up to ${clock(upTo)} · ` +
        `${top.path === "rollup" ? "from rollups" : "from raw samples"}`);
      document.body.dataset.state = top.processes.length ? "ready" : "empty";
    } catch (error) {
      if (error.name === "AbortError" || generation !== state.generation) return;
      if (error instanceof AuthError) {
        askForToken(error.message);
        return;
      }
      setStatus("error", `${error.message} — retrying in ${REFRESH_MS / 1000} s`);
      if (!state.top) {
        showState("table-state", "error", `Could not load the top processes: ${error.message}`);
      }
      document.body.dataset.state = "error";
    }
  }

  function schedule() {
    clearInterval(state.timer);
    state.timer = setInterval(() => {
      if (!document.hidden) refresh(false);
    }, REFRESH_MS);
  }

  function persist() {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify({ metric: state.metric,
      hours: state.hours }));
  }

  // -- wiring ------------------------------------------------------------------------------
  function activate(groupId, attr, value) {
    document.querySelectorAll(`#${groupId} button`).forEach((b) => {
      b.classList.toggle("active", b.dataset[attr] === String(value));
    });
  }

  function wire() {
    document.querySelectorAll("#metric button").forEach((b) => b.addEventListener("click",
      () => {
        state.metric = b.dataset.metric;
        activate("metric", "metric", state.metric);
        persist();
        refresh(true);
      }));
    document.querySelectorAll("#range button").forEach((b) => b.addEventListener("click",
      () => {
        state.hours = Number(b.dataset.hours);
        activate("range", "hours", state.hours);
        persist();
        refresh(true);
      }));
    $("refresh").addEventListener("click", () => refresh(false));
    $("token-button").addEventListener("click", () => askForToken());
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      state.token = $("token-input").value.trim();
      localStorage.setItem(TOKEN_KEY, state.token);
      $("token-input").value = "";
      state.allServers = [];
      refresh(true);
    });
    const popover = $("servers-popover");
    $("servers-button").addEventListener("click", (event) => {
      event.stopPropagation();
      popover.hidden = !popover.hidden;
      $("servers-button").setAttribute("aria-expanded", String(!popover.hidden));
      if (!popover.hidden) $("servers-filter").focus();
    });
    popover.addEventListener("click", (event) => event.stopPropagation());
    document.addEventListener("click", () => { popover.hidden = true; });
    $("servers-filter").addEventListener("input", renderServers);
    $("servers-all").addEventListener("change", (event) => {
      state.servers = event.target.checked ? null : [];
      renderServers();
      refresh(true);
    });
    window.addEventListener("resize", redraw);
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh(false);
    });
  }

  takeFragmentToken();
  activate("metric", "metric", state.metric);
  activate("range", "hours", state.hours);
  wire();
  schedule();
  refresh(true);
})();
