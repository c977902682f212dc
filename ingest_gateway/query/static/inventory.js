/* procfleet dashboard: the fleet process inventory (search box and "new since" panel).
 * Reads the read token app.js keeps in localStorage; renders with textContent only.
 * Each card's data-state = loading | ready | empty | error (tests wait on it). */
"use strict";

(() => {
  const TOKEN_KEY = "procfleet.token";
  const $ = (id) => document.getElementById(id);

  async function get(path, params) {
    const query = new URLSearchParams(params);
    const response = await fetch(`${path}?${query}`, {
      headers: { Authorization: `Bearer ${localStorage.getItem(TOKEN_KEY) || ""}` },
      cache: "no-store",
    });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const reason = body && body.error ? `${body.error.field}: ${body.error.reason}` :
        response.statusText;
      throw new Error(`${response.status}: ${reason}`);
    }
    return body;
  }

  const when = (iso) => (iso ? new Date(iso).toISOString().slice(0, 16).replace("T", " ") :
    "?");

  function fill(tbody, rows) {
    tbody.textContent = "";
    for (const cells of rows) {
      const tr = document.createElement("tr");
      for (const [field, text] of cells) {
        const td = document.createElement("td");
        td.dataset.field = field;
        if (field === "pid" || field === "servers") td.className = "num";
        td.textContent = text;
        tr.append(td);
      }
      tbody.append(tr);
    }
  }

  function settle(card, note, kind, text) {
    $(card).dataset.state = kind;
    $(note).textContent = text;
  }

  async function search() {
    const q = $("inv-q").value;
    if (!q.trim()) return;
    settle("inv-card", "inv-note", "loading", "Searching…");
    try {
      const body = await get("/api/processes/search",
        { q, hours: $("inv-hours").value, limit: "100" });
      fill($("inv-rows"), body.processes.map((p) => [
        ["host", p.hostname || p.server_id], ["pid", String(p.pid)],
        ["started", when(p.start_time)], ["command", p.command || p.name]]));
      settle("inv-card", "inv-note", body.processes.length ? "ready" : "empty",
        body.processes.length ? `${body.processes.length}${body.truncated ? "+" : ""} ` +
          "processes, newest first" : "No process matched.");
    } catch (error) {
      settle("inv-card", "inv-note", "error", error.message);
    }
  }

  async function loadNew() {
    const since = new Date(Date.now() - Number($("new-hours").value) * 3600e3).toISOString();
    settle("new-card", "new-note", "loading", "Loading…");
    try {
      const body = await get("/api/processes/new", { since, limit: "50" });
      fill($("new-rows"), body.names.map((n) => [
        ["name", n.name], ["servers", String(n.servers)], ["first_seen", when(n.first_seen)],
        ["command", n.example_command]]));
      settle("new-card", "new-note", body.names.length ? "ready" : "empty",
        body.names.length ? "" : "Nothing new.");
    } catch (error) {
      settle("new-card", "new-note", "error", error.message);
    }
  }

  $("inv-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
  $("new-hours").addEventListener("change", loadNew);
  // app.js may take the token from the URL fragment first: start once the page settled.
  window.addEventListener("load", () => setTimeout(loadNew, 0));
})();
