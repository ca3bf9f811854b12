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
    if (v === null || v === undefined) continue;
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

// renderHosts updates the host rows in place (keyed by name), so a click
// on a row's button is not lost to the next snapshot.
const hostRows = new Map(); // name -> {tr, cells, enter, exit, cancel}
function renderHosts(s) {
  const tb = $("hosts").tBodies[0];
  const names = new Set(s.hosts.map((h) => h.name));
  for (const [n, r] of hostRows) {
    if (!names.has(n)) { r.tr.remove(); hostRows.delete(n); }
  }
  tb.querySelectorAll("tr.empty").forEach((e) => e.remove());
  s.hosts.forEach((h, i) => {
    let r = hostRows.get(h.name);
    if (!r) {
      r = { cells: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map(() => el("td")) };
      r.enter = el("button", { type: "button", class: "maint-enter", onclick: () => planMaintenance(h.name) }, "Maintenance…");
      r.exit = el("button", { type: "button", class: "maint-exit", onclick: () => exitMaintenance(h.name) }, "Exit maintenance…");
      r.cancel = el("button", { type: "button", class: "maint-cancel", onclick: () => cancelEvacuation(h.name) }, "Cancel evacuation…");
      r.tr = el("tr", { "data-host": h.name }, ...r.cells, el("td", {}, r.enter, r.exit, r.cancel));
      hostRows.set(h.name, r);
    }
    const hb = h.heartbeatAgeSeconds < 0 ? "never" : h.heartbeatAgeSeconds.toFixed(1) + " s ago";
    const maint = h.maintenance ? "in maintenance" + (h.evacuation ? " (evacuation " + h.evacuation + ")" : "") : "–";
    const texts = [h.name, h.state, h.health + (h.healthDetail ? ": " + h.healthDetail : ""), null, null, h.vms, hb, maint, h.qemu || "", h.version || ""];
    texts.forEach((t, k) => { if (t !== null && r.cells[k].textContent !== String(t)) r.cells[k].textContent = t; });
    r.cells[1].className = "state " + h.state;
    r.cells[2].className = "health " + h.health;
    r.cells[7].className = h.maintenance ? "maintenance" : "";
    r.cells[3].replaceChildren(bar(h.cpuUse, h.vcpus + " / " + h.cpus));
    r.cells[4].replaceChildren(bar(h.memoryUse, gib(h.usedMemoryMiB) + " / " + gib(h.memoryMiB)));
    const evacRunning = h.evacuation === "running" || h.evacuation === "cancelling";
    r.enter.hidden = h.maintenance;
    r.cancel.hidden = !evacRunning;
    r.exit.hidden = !h.maintenance || evacRunning;
    for (const b of [r.enter, r.exit, r.cancel]) {
      b.disabled = !canOperate || (b === r.cancel && h.evacuation === "cancelling");
      b.title = canOperate ? "" : "needs a token with the operator role";
    }
    if (tb.children[i] !== r.tr) tb.insertBefore(r.tr, tb.children[i] || null);
  });
  if (s.hosts.length === 0) tb.append(el("tr", { class: "empty" }, el("td", { colspan: 11, class: "none" }, "none")));
}

// renderEvacuations shows each host's evacuation: state, counts, ETA and
// each VM's progress.
function renderEvacuations(s) {
  const box = $("evacuations");
  if (s.evacuations.length === 0) { box.replaceChildren(el("p", { class: "none" }, "none")); return; }
  box.replaceChildren(...s.evacuations.map((e) => el("div", { class: "evacuation", "data-evacuation": e.host },
    el("div", {}, el("strong", {}, e.host), " ", el("span", { class: "state " + e.state }, e.state), " (" + e.reason + ") · ",
      e.done + " / " + e.planned + " moved · " + e.failed + " failed · " + e.inFlight + " in flight · " +
      dur(Number(e.measuredMs) / 1000) + (Number(e.predictedEtaMs) ? " (ETA " + dur(Number(e.predictedEtaMs) / 1000) + ")" : "")),
    e.message ? el("div", { class: "small" }, e.message) : null,
    el("table", {}, el("thead", {}, el("tr", {}, ...["VM", "to", "strategy", "status", "progress", "attempts", "time (predicted)", ""].map((t) => el("th", {}, t)))),
      el("tbody", {}, ...e.items.map((it) => el("tr", { "data-vm": it.vm, class: it.status },
        el("td", {}, it.vm), el("td", {}, it.to || "–"), el("td", {}, it.strategy || "–"),
        el("td", { class: "state " + it.status }, it.status),
        el("td", {}, el("progress", { max: "1", value: String(it.progress || 0) }), " " + ((it.progress || 0) * 100).toFixed(0) + " %"),
        el("td", {}, it.attempts || 0), el("td", {}, ms(it.measuredMs) + " (" + ms(it.predictedMs) + ")"),
        el("td", { class: "small" }, it.error || ""))))))));
}

// renderBalancer shows the balancer's recommendations, each with an
// apply button (a migration, confirmed with its dry run).
function renderBalancer(s) {
  const b = s.balancer;
  $("balance-now").disabled = !canOperate;
  $("balance-now").title = canOperate ? "" : "needs a token with the operator role";
  if (!b) { $("balancer-summary").textContent = "no plan yet"; setRows("proposals", []); return; }
  $("balancer-summary").textContent = "mode " + b.mode + " · imbalance " + b.imbalanceBefore.toFixed(3) + " → " + b.imbalanceAfter.toFixed(3) +
    (b.plannedAt ? " · planned " + new Date(b.plannedAt).toLocaleTimeString() : "") + (b.why ? " · " + b.why : "");
  setRows("proposals", b.proposals.map((p) => el("tr", { "data-vm": p.vm },
    el("td", {}, p.vm), el("td", {}, p.from + " → " + p.to), el("td", {}, p.strategy), el("td", {}, p.gain.toFixed(3)),
    el("td", {}, ms(p.predictedMs) + " / " + ms(p.predictedDowntimeMs)), el("td", { class: "small" }, p.reason || ""),
    el("td", {}, el("button", { type: "button", class: "apply", disabled: canOperate ? null : "", title: canOperate ? "" : "needs a token with the operator role",
      onclick: () => planMigration(p.vm, p.to, p.strategy || "auto", 0) }, "Apply…")))));
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

// predicted is a forecast's figure: none, or "no convergence" when the
// planner predicted the strategy would not converge (its times are 0).
function predicted(m, v) {
  if (!m.predicted) return "–";
  return m.predictedConverges || m.strategy === "cold" ? ms(v) : "predicted not to converge";
}

function predictionTitle(m) {
  if (!m.predicted) return "no prediction";
  return (m.predictionReason || "") + (m.plannedBandwidthMiBps ? " (planned with dirty rate " + m.plannedDirtyRateMiBps.toFixed(1) +
    " MiB/s, bandwidth " + m.plannedBandwidthMiBps.toFixed(1) + " MiB/s)" : "");
}

function renderFinished(s) {
  setRows("finished", s.finished.map((m) => el("tr", { "data-migration": m.id, class: m.status },
    el("td", {}, m.id), el("td", {}, m.vm), el("td", {}, m.from + " → " + m.to), el("td", {}, m.strategy),
    el("td", { class: "state " + m.status, title: m.error || (m.warnings || []).join("; ") }, m.status),
    el("td", { title: predictionTitle(m) }, ms(m.elapsedMs) + " (" + predicted(m, m.predictedTotalMs) + ")"),
    el("td", { title: predictionTitle(m) }, ms(m.downtimeMs) + " (" + predicted(m, m.predictedDowntimeMs) + ")"),
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
  renderEvacuations(s);
  renderBalancer(s);
  renderVMs(s);
  renderLive(s);
  renderFinished(s);
  renderEvents(s);
  $("status").textContent = "live · " + new Date(s.at).toLocaleTimeString();
  $("status").className = "status ok";
}

// confirmAction opens the dialog: title, then plan() (a dry run: its
// nodes are shown; it throws to refuse), then on the go button act().
async function confirmAction(title, goLabel, plan, act) {
  const dlg = $("confirm");
  $("confirm-title").textContent = title;
  $("confirm-plan").replaceChildren(el("p", {}, "planning (dry run)…"));
  $("confirm-error").textContent = "";
  $("confirm-go").textContent = goLabel;
  $("confirm-go").disabled = true;
  dlg.showModal();
  try {
    $("confirm-plan").replaceChildren(...(await plan()));
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
      await act();
      $("error").textContent = "";
    } catch (e) {
      $("error").textContent = goLabel.toLowerCase() + ": " + e.message;
    }
  });
}

// planMigration asks for a dry run and shows the plan; confirming starts it.
function planMigration(vm, to, strategy, capMiBps) {
  const req = { vm: vm, to: to, options: { strategy: strategy, bandwidthMibps: capMiBps } };
  return confirmAction("Migrate " + vm + " to " + to + " (" + strategy + (capMiBps ? ", at most " + capMiBps + " MiB/s" : "") + ")?", "Migrate",
    async () => {
      const r = await rpc("ferry.v1.MigrationService/Migrate", Object.assign({ dryRun: true }, req));
      const plan = r.plan || {};
      const rows = (plan.predictions || []).map((p) => el("tr", { class: p.strategy === plan.choice ? "chosen" : "" },
        el("td", {}, p.strategy), el("td", {}, p.converges ? "yes" : "no"), el("td", {}, ms(p.totalMs)),
        el("td", {}, ms(p.downtimeMs)), el("td", {}, p.reason || "")));
      return [el("p", {}, "The planner chooses ", el("strong", {}, plan.choice || strategy), ": ", plan.reason || ""),
        el("table", {}, el("thead", {}, el("tr", {}, ...["strategy", "converges", "total", "downtime", "why"].map((h) => el("th", {}, h)))), el("tbody", {}, ...rows))];
    },
    () => rpc("ferry.v1.MigrationService/Migrate", req));
}

// evacuationPlan renders a dry run's evacuation: its ETA and plan lines.
function evacuationPlan(e) {
  const eta = Number(e.predictedEtaMs || 0);
  return [el("p", { class: "eta" }, "Predicted ETA: ", el("strong", {}, eta ? dur(eta / 1000) + " (" + eta + " ms)" : "none (no VM to move)")),
    el("pre", { class: "plan" }, (e.plan || []).join("\n") || "no VMs on the host")];
}

// planMaintenance shows the evacuation's dry run; confirming enters
// maintenance (the host takes no new VMs and its VMs move away).
function planMaintenance(host) {
  return confirmAction("Put " + host + " in maintenance and evacuate it?", "Enter maintenance",
    async () => evacuationPlan((await rpc("ferry.v1.FleetService/EnterMaintenance", { host: host, dryRun: true })).evacuation || {}),
    () => rpc("ferry.v1.FleetService/EnterMaintenance", { host: host }));
}

function exitMaintenance(host) {
  return confirmAction("Take " + host + " out of maintenance?", "Exit maintenance",
    async () => [el("p", {}, host + " becomes schedulable again: new VMs and migrations may be placed on it.")],
    () => rpc("ferry.v1.FleetService/ExitMaintenance", { host: host }));
}

function cancelEvacuation(host) {
  return confirmAction("Cancel the evacuation of " + host + "?", "Cancel evacuation",
    async () => [el("p", {}, "No more migrations start and those in flight roll back; " + host + " stays in maintenance.")],
    () => rpc("ferry.v1.FleetService/CancelEvacuation", { host: host }));
}

// planBalance shows the balancer's plan now (a dry run); confirming
// starts its migrations.
function planBalance() {
  return confirmAction("Balance the cluster now?", "Balance",
    async () => {
      const b = await rpc("ferry.v1.FleetService/Balance", { dryRun: true });
      const rows = (b.proposals || []).map((p) => el("tr", {}, el("td", {}, p.vm), el("td", {}, p.from + " → " + p.to), el("td", {}, p.strategy),
        el("td", {}, ms(p.predictedMs)), el("td", {}, p.reason || "")));
      return [el("p", {}, "imbalance " + Number(b.imbalanceBefore || 0).toFixed(3) + " → " + Number(b.imbalanceAfter || 0).toFixed(3) + (b.why ? ": " + b.why : "")),
        el("table", {}, el("thead", {}, el("tr", {}, ...["VM", "route", "strategy", "predicted", "why"].map((h) => el("th", {}, h)))), el("tbody", {}, ...rows))];
    },
    () => rpc("ferry.v1.FleetService/Balance", {}));
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
  $("token").value = "";
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
  $("balance-now").addEventListener("click", () => planBalance());
  if (token) login(token); else logout("");
});
