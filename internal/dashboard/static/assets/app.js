// Ferry dashboard: reads /ui/api/stream (server-sent events, one snapshot
// a second) with the token the user gave, renders hosts, VMs, migrations
// and events, and migrates through the API (a dry run first, confirmed).
// Every value from the server is put in the page as text, never as HTML.
"use strict";

const tokenKey = "ferry.token";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(tokenKey) || "";
let streamAbort = null;
let lastSnapshot = null;
let canOperate = false; // the token's role may migrate (operator, admin)
const livePlots = new Map(); // migration id -> {img, url, at}

function authHeaders(extra) {
  return Object.assign({ Authorization: "Bearer " + token }, extra || {});
}

// rpc calls a unary API method with the Connect protocol's JSON encoding.
async function rpc(method, body) {
  const resp = await fetch("/" + method, {
    method: "POST",
    headers: authHeaders({ "Content-Type": "application/json" }),
    body: JSON.stringify(body || {}),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error((data.code ? data.code + ": " : "") + (data.message || resp.statusText));
    err.status = resp.status;
    throw err;
  }
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function bar(fraction, label) {
  const pct = Math.max(0, Math.min(100, fraction * 100));
  const cls = fraction > 1 ? "bar over" : fraction > 0.85 ? "bar high" : "bar";
  const fill = el("div", { class: "fill" });
  fill.style.width = pct.toFixed(1) + "%"; // CSSOM: allowed by the CSP, unlike a style attribute
  return el("div", { class: cls, title: label }, fill, el("span", {}, label));
}

const mib = (b) => (Number(b) / 1048576).toFixed(1) + " MiB";
const gib = (m) => (Number(m) / 1024).toFixed(1) + " GiB";
function dur(seconds) {
  seconds = Math.round(seconds);
  if (seconds < 120) return seconds + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}
const ms = (v) => (v ? Number(v) + " ms" : "–");

function setRows(tableId, rows) {
  const tb = $(tableId).tBodies[0];
  tb.replaceChildren(...rows);
  if (rows.length === 0) {
    const cols = $(tableId).tHead.rows[0].cells.length;
    tb.append(el("tr", {}, el("td", { colspan: cols, class: "none" }, "none")));
  }
}

function renderHosts(s) {
  setRows("hosts", s.hosts.map((h) => el("tr", { "data-host": h.name },
    el("td", {}, h.name),
    el("td", { class: "state " + h.state }, h.state),
    el("td", {}, bar(h.cpuUse, h.vcpus + " / " + h.cpus)),
    el("td", {}, bar(h.memoryUse, gib(h.usedMemoryMiB) + " / " + gib(h.memoryMiB))),
    el("td", {}, h.vms),
    el("td", {}, h.heartbeatAgeSeconds < 0 ? "never" : h.heartbeatAgeSeconds.toFixed(1) + " s ago"),
    el("td", {}, h.qemu || ""),
    el("td", {}, h.version || ""))));
}

// renderVMs updates the VM rows in place (keyed by name), so a choice the
// user is making in a row's controls survives the next snapshot.
const vmRows = new Map(); // name -> {tr, cells, to, strategy, cap, btn, targets}
function renderVMs(s) {
  const ready = s.hosts.filter((h) => h.state === "ready").map((h) => h.name);
  const tb = $("vms").tBodies[0];
  const names = new Set(s.vms.map((v) => v.name));
  for (const [n, r] of vmRows) {
    if (!names.has(n)) { r.tr.remove(); vmRows.delete(n); }
  }
  tb.querySelectorAll("tr.empty").forEach((e) => e.remove());
  s.vms.forEach((v, i) => {
    let r = vmRows.get(v.name);
    if (!r) {
      r = { cells: [0, 1, 2, 3, 4, 5].map(() => el("td")), targets: null };
      r.to = el("select", { "aria-label": "destination of " + v.name });
      r.strategy = el("select", { "aria-label": "strategy for " + v.name },
        ...["auto", "precopy", "postcopy", "hybrid", "converge", "cold"].map((n) => el("option", { value: n }, n)));
      r.cap = el("input", { type: "number", min: "0", step: "1", placeholder: "MiB/s cap", class: "cap", "aria-label": "bandwidth cap for " + v.name });
      r.btn = el("button", { type: "button", class: "migrate", onclick: () => planMigration(v.name, r.to.value, r.strategy.value, Number(r.cap.value) || 0) }, "Migrate…");
      r.tr = el("tr", { "data-vm": v.name }, ...r.cells, el("td", {}, r.to, " ", r.strategy, " ", r.cap, " ", r.btn));
      vmRows.set(v.name, r);
    }
    const texts = [v.name, v.host, v.state, v.vcpus, v.memoryMiB + " MiB", v.uptimeSeconds ? dur(v.uptimeSeconds) : "–"];
    texts.forEach((t, k) => { if (r.cells[k].textContent !== String(t)) r.cells[k].textContent = t; });
    r.cells[2].className = "state " + v.state;
    r.cells[2].title = v.message || "";
    const targets = ready.filter((n) => n !== v.host);
    if (targets.join(",") !== r.targets) {
      const keep = r.to.value;
      r.to.replaceChildren(...targets.map((n) => el("option", { value: n }, n)));
      if (targets.includes(keep)) r.to.value = keep;
      r.targets = targets.join(",");
    }
    r.btn.disabled = !canOperate || v.state !== "running" || !!v.migrationId || targets.length === 0;
    r.btn.title = canOperate ? "" : "needs a token with the operator role";
    if (tb.children[i] !== r.tr) tb.insertBefore(r.tr, tb.children[i] || null);
  });
  if (s.vms.length === 0) tb.append(el("tr", { class: "empty" }, el("td", { colspan: 7, class: "none" }, "none")));
}

// showPlot fetches a migration's SVG with the token and shows it in img.
async function showPlot(img, id) {
  const resp = await fetch("/ui/api/plot?id=" + encodeURIComponent(id), { headers: authHeaders() });
  if (!resp.ok) {
    img.alt = (await resp.text()).trim();
    img.removeAttribute("src");
    return false;
  }
  const url = URL.createObjectURL(await resp.blob());
  const old = img.getAttribute("src");
  img.src = url;
  img.alt = "plot of " + id;
  if (old && old.startsWith("blob:")) URL.revokeObjectURL(old);
  return true;
}

function renderLive(s) {
  const box = $("live");
  const seen = new Set();
  if (s.live.length === 0) box.replaceChildren(el("p", { class: "none" }, "none"));
  else {
    box.replaceChildren(...s.live.map((m) => {
      seen.add(m.id);
      let p = livePlots.get(m.id);
      if (!p) {
        p = { img: el("img", { class: "plot", alt: "waiting for samples" }), at: 0 };
        livePlots.set(m.id, p);
      }
      if (Date.now() - p.at > 2000) { // the chart every 2 s
        p.at = Date.now();
        showPlot(p.img, m.id).catch(() => {});
      }
      return el("div", { class: "live", "data-migration": m.id },
        el("div", {}, el("strong", {}, m.id), " ", m.vm, " ", m.from, " → ", m.to, " (", m.strategy, ") ",
          el("span", { class: "state" }, m.state)),
        el("progress", { max: "1", value: String(m.progress) }),
        el("span", { class: "pct" }, (m.progress * 100).toFixed(0) + " %"),
        el("div", { class: "figures" },
          "remaining " + mib(m.remainingBytes) + " · sent " + mib(m.transferredBytes) +
          " · dirty " + m.dirtyRateMiBps.toFixed(1) + " MiB/s · " + dur(m.elapsedMs / 1000) +
          (m.predictedTotalMs ? " (predicted " + dur(m.predictedTotalMs / 1000) + ")" : "")),
        p.img);
    }));
  }
  for (const [id, p] of livePlots) {
    if (!seen.has(id)) {
      const src = p.img.getAttribute("src");
      if (src) URL.revokeObjectURL(src);
      livePlots.delete(id);
    }
  }
}

function phases(p) {
  if (!p) return "–";
  const parts = [["stop", p.stopMs], ["final round", p.finalRoundMs], ["switchover", p.switchoverMs], ["device state", p.deviceStateMs], ["resume", p.resumeMs]];
  return parts.map(([n, v]) => n + " " + Number(v || 0)).join(", ");
}

function renderFinished(s) {
  setRows("finished", s.finished.map((m) => el("tr", { "data-migration": m.id, class: m.status },
    el("td", {}, m.id), el("td", {}, m.vm), el("td", {}, m.from + " → " + m.to), el("td", {}, m.strategy),
    el("td", { class: "state " + m.status, title: m.error || (m.warnings || []).join("; ") }, m.status),
    el("td", {}, ms(m.elapsedMs) + " (" + ms(m.predictedTotalMs) + ")"),
    el("td", {}, ms(m.downtimeMs) + " (" + ms(m.predictedDowntimeMs) + ")"),
    el("td", { class: "small" }, phases(m.phases)),
    el("td", {}, mib(m.transferredBytes)),
    el("td", {}, el("button", { type: "button", onclick: () => showReport(m) }, "plot")))));
}

function showReport(m) {
  $("report").hidden = false;
  $("report-title").textContent = m.id + ": " + m.vm + " " + m.from + " → " + m.to + " (" + m.strategy + ", " + m.status + ")";
  $("report-text").textContent = m.error || (m.warnings || []).join("; ");
  showPlot($("report-plot"), m.id).catch((e) => { $("report-text").textContent = String(e); });
}

function renderEvents(s) {
  setRows("events", s.events.map((e) => el("tr", {},
    el("td", {}, new Date(e.time).toLocaleString()), el("td", {}, e.kind), el("td", {}, e.name),
    el("td", {}, (e.from || "–") + " → " + (e.to || "–")), el("td", {}, e.message || ""))));
}

function render(s) {
  lastSnapshot = s;
  renderHosts(s);
  renderVMs(s);
  renderLive(s);
  renderFinished(s);
  renderEvents(s);
  $("status").textContent = "live · " + new Date(s.at).toLocaleTimeString();
  $("status").className = "status ok";
}

// planMigration asks for a dry run and shows the plan; confirming starts it.
async function planMigration(vm, to, strategy, capMiBps) {
  const dlg = $("confirm");
  $("confirm-title").textContent = "Migrate " + vm + " to " + to + " (" + strategy + (capMiBps ? ", at most " + capMiBps + " MiB/s" : "") + ")?";
  $("confirm-plan").replaceChildren(el("p", {}, "planning (dry run)…"));
  $("confirm-error").textContent = "";
  $("confirm-go").disabled = true;
  dlg.showModal();
  const req = { vm: vm, to: to, options: { strategy: strategy, bandwidthMibps: capMiBps } };
  try {
    const r = await rpc("ferry.v1.MigrationService/Migrate", Object.assign({ dryRun: true }, req));
    const plan = r.plan || {};
    const rows = (plan.predictions || []).map((p) => el("tr", { class: p.strategy === plan.choice ? "chosen" : "" },
      el("td", {}, p.strategy), el("td", {}, p.converges ? "yes" : "no"), el("td", {}, ms(p.totalMs)),
      el("td", {}, ms(p.downtimeMs)), el("td", {}, p.reason || "")));
    $("confirm-plan").replaceChildren(
      el("p", {}, "The planner chooses ", el("strong", {}, plan.choice || strategy), ": ", plan.reason || ""),
      el("table", {}, el("thead", {}, el("tr", {}, ...["strategy", "converges", "total", "downtime", "why"].map((h) => el("th", {}, h)))), el("tbody", {}, ...rows)));
    $("confirm-go").disabled = false;
  } catch (e) {
    $("confirm-plan").replaceChildren();
    $("confirm-error").textContent = "dry run refused: " + e.message;
    return;
  }
  dlg.addEventListener("close", async function onClose() {
    dlg.removeEventListener("close", onClose);
    if (dlg.returnValue !== "go") return;
    try {
      await rpc("ferry.v1.MigrationService/Migrate", req);
      $("error").textContent = "";
    } catch (e) {
      $("error").textContent = "migrate " + vm + ": " + e.message;
    }
  });
}

// stream reads the server-sent events of /ui/api/stream until it ends,
// then reconnects after 2 s.
async function stream() {
  streamAbort = new AbortController();
  try {
    const resp = await fetch("/ui/api/stream", { headers: authHeaders(), signal: streamAbort.signal });
    if (resp.status === 401 || resp.status === 403) {
      const body = await resp.json().catch(() => ({}));
      logout(body.message || resp.statusText);
      return;
    }
    if (!resp.ok) throw new Error(resp.status + " " + (await resp.text()));
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (event === "snapshot") { render(JSON.parse(data)); $("error").textContent = ""; }
        else if (event === "error") $("error").textContent = JSON.parse(data).error;
      }
    }
  } catch (e) {
    if (e.name === "AbortError") return;
    $("status").textContent = "disconnected: " + e.message;
    $("status").className = "status bad";
  }
  if (token) setTimeout(stream, 2000);
}

function logout(why) {
  if (streamAbort) streamAbort.abort();
  token = "";
  sessionStorage.removeItem(tokenKey);
  $("main").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = why || "";
  $("status").textContent = "not connected";
  $("status").className = "status";
}

async function login(t) {
  token = t.trim();
  try {
    const who = await rpc("ferry.v1.AuthService/WhoAmI", {});
    sessionStorage.setItem(tokenKey, token);
    $("who").textContent = who.identity + " (" + who.role + ")";
    canOperate = ["operator", "admin", "server"].includes(who.role);
    $("login").hidden = true;
    $("main").hidden = false;
    $("logout").hidden = false;
    stream();
  } catch (e) {
    logout("log in: " + e.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => { ev.preventDefault(); login($("token").value); });
  $("logout").addEventListener("click", () => logout(""));
  if (token) login(token); else logout("");
});
