// The tuneforge dashboard: jobs (list, page, compare) and a new-job form that validates and previews the data
// first. Plain JS and inline SVG, nothing fetched from outside this server. It calls the public API (/v1, and
// /v1/tuneforge/ for validate, preview, adapter and export) with the key the user pasted, kept in localStorage
// and sent only in the Authorization header. Pages are built with DOM calls and textContent, never innerHTML:
// file names, messages and reports are user data.
"use strict";

const app = document.getElementById("app");
const keyInput = document.getElementById("api-key");
const KEY = "tuneforge-key";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const FIGURES = ["eval", "forgetting", "verdict", "training_metrics"]; // extra job fields, shown when present
const state = { selectedJobs: new Set(), selectedCheckpoints: new Map(), reports: new Map(), checks: new Map() };
let timer = null;

// The key arrives once: typed into the form, or in a link's fragment, `/#key=KEY` (or `/#key=KEY&job=ID`):
// a fragment is never sent to the server, so it is in no request and no log. It goes to localStorage and out
// of the address bar and history at once. A link whose key differs from the one this browser keeps asks
// before replacing it (a link from someone else must not silently sign you in as them). `?key=` did reach the
// server; it is only removed from the address bar, never used.
function takeKeyFromLink() {
  const search = new URLSearchParams(location.search);
  const linked = location.hash.startsWith("#key=");
  if (!linked && !search.has("key")) return;
  let route = "";
  if (linked) {
    const rest = location.hash.slice("#key=".length);
    const cut = rest.indexOf("&");
    const key = decodeURIComponent(cut < 0 ? rest : rest.slice(0, cut)).trim();
    route = cut < 0 ? "" : "#" + rest.slice(cut + 1);
    const stored = localStorage.getItem(KEY);
    if (key && (!stored || stored === key ||
        confirm("This link carries a different API key from the one this browser keeps. Use the link's key?"))) {
      localStorage.setItem(KEY, key);
    }
  }
  search.delete("key");
  const query = search.toString();
  history.replaceState(null, "", location.pathname + (query ? "?" + query : "") + route);
}
takeKeyFromLink();
keyInput.value = localStorage.getItem(KEY) || "";
keyInput.addEventListener("change", () => { localStorage.setItem(KEY, keyInput.value.trim()); render(); });

// --- DOM building -----------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "text") el.textContent = value;
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  addChildren(el, children);
  return el;
}

function addChildren(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child)); // strings become text nodes
  }
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
  addChildren(el, children);
  return el;
}

const table = (id, headers, rows) => h("table", { id }, h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col", text: t })))),
  h("tbody", {}, rows));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
const num = (v, digits = 4) => (typeof v === "number" ? v.toFixed(digits) : "–"); // losses: always 4 decimals

function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : num(value);
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (Array.isArray(value)) {
    return value.every((v) => v === null || typeof v !== "object") ? value.map(fmt).join(", ") : `${value.length} items`;
  }
  return String(value);
}

// {"forgetting": {"general": {"drop": 1.2}}} -> {"forgetting.general.drop": 1.2}
function flatten(value, prefix, out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (prefix) {
    out[prefix] = value;
  }
  return out;
}

function say(message, isError = false) {
  const line = document.getElementById("status");
  if (line) { line.textContent = message; line.className = isError ? "error" : ""; }
}

// --- the API ------------------------------------------------------------------------------------------------

async function request(method, path, { json, form, raw } = {}) {
  const headers = { Authorization: "Bearer " + (localStorage.getItem(KEY) || "") };
  let body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  if (form) body = form;
  const response = await fetch(path, { method, headers, body });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message || message; } catch (e) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return raw ? response : response.json();
}
const api = (path) => request("GET", path);
const enc = encodeURIComponent;

async function allPages(path) {
  const items = [];
  let after = null;
  for (let i = 0; i < 100; i++) {
    const page = await api(path + (path.includes("?") ? "&" : "?") + "limit=100" + (after ? "&after=" + enc(after) : ""));
    items.push(...page.data);
    if (!page.has_more) break;
    after = page.last_id;
  }
  return items;
}

function downloadName(disposition, fallback) {
  const star = /filename\*=(?:UTF-8|utf-8)''([^;]+)/.exec(disposition || "");
  if (star) return decodeURIComponent(star[1]);
  const plain = /filename="?([^";]+)"?/.exec(disposition || "");
  return plain ? plain[1] : fallback;
}

// A download needs the key in a header, so it is fetched here and handed to the browser as a blob.
async function download(method, path, fallback) {
  const response = await request(method, path, { raw: true });
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: downloadName(response.headers.get("Content-Disposition"), fallback) });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  return link.download;
}

// Runs a button's action: busy while it runs, the outcome in the status line.
function action(label, work, { busy = "Working…" } = {}) {
  return async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    say(`${label}: ${busy}`);
    try {
      const message = await work();
      say(message || `${label}: done.`);
    } catch (e) {
      say(`${label}: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  };
}

// --- the loss curve ---------------------------------------------------------------------------------------

function metricPoints(events, key) {
  // Events come newest first; a curve wants steps in order.
  return events.slice().reverse()
    .filter((e) => e.type === "metrics" && e.data && typeof e.data[key] === "number")
    .map((e) => [e.data.step, e.data[key]]);
}

const COLORS = ["#1d5fd0", "#e07b00", "#16803c", "#9b2fae", "#c0262d", "#00838f"];

function lossChart(id, label, series) {
  const all = series.flatMap((s) => s.points);
  if (!all.length) return h("p", { id: "no-curve", text: "No metrics yet." });
  const W = 640, H = 260, L = 50, R = 12, T = 12, B = 30;
  const maxStep = Math.max(...all.map((p) => p[0]), 1), minStep = Math.min(...all.map((p) => p[0]), 0);
  let lo = Math.min(...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
  if (hi === lo) { hi += 0.5; lo -= 0.5; }
  const x = (s) => L + ((s - minStep) / Math.max(maxStep - minStep, 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const chart = svg("svg", { id, width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e3e6eb" }),
      svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(3)));
  }
  chart.append(svg("text", { x: L, y: H - 8 }, `step ${minStep}`),
    svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, `step ${maxStep}`));
  series.forEach((s) => {
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    const path = svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 2 });
    if (s.id) path.setAttribute("id", s.id);
    if (s.dashed) path.setAttribute("stroke-dasharray", "5 3");
    chart.append(path, ...s.points.map((p) => svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: s.color })));
  });
  const legend = h("div", { class: "legend" }, series.map((s) => h("span", { style: `color:${s.color}` }, "▬ ", s.name)));
  return h("div", {}, chart, legend);
}

// --- jobs list ----------------------------------------------------------------------------------------------

async function renderJobs() {
  const jobs = await allPages("/v1/fine_tuning/jobs");
  const known = new Set(jobs.map((j) => j.id));
  for (const id of [...state.selectedJobs]) if (!known.has(id)) state.selectedJobs.delete(id);
  const compareButton = h("button", { type: "button", id: "compare-jobs", disabled: state.selectedJobs.size < 2,
    onclick: () => { location.hash = "#compare=" + [...state.selectedJobs].map(enc).join(","); } },
  "Compare selected jobs");
  const rows = jobs.map((j) => h("tr", {},
    h("td", {}, h("label", {}, h("input", { type: "checkbox", class: "select-job", id: `select-${j.id}`, value: j.id,
      checked: state.selectedJobs.has(j.id), onchange: (e) => {
        if (e.target.checked) state.selectedJobs.add(j.id); else state.selectedJobs.delete(j.id);
        compareButton.disabled = state.selectedJobs.size < 2;
      } }), h("span", { class: "sr-only", text: `compare ${j.id}` }))),
    h("td", {}, h("a", { href: `#job=${enc(j.id)}`, text: j.id })),
    h("td", { class: `status ${j.status}`, text: j.status }),
    h("td", { text: j.model }), h("td", { text: j.fine_tuned_model || "" }),
    h("td", { class: "num", text: j.trained_tokens ?? "" }), h("td", { text: when(j.created_at) })));
  show(h("h2", { text: "Jobs" }),
    h("div", { class: "toolbar" }, h("a", { class: "button", href: "#new", id: "new-job-link", text: "New job" }), compareButton,
      h("span", { class: "hint", text: "Tick two or more jobs to compare them side by side." })),
    statusLine(),
    table("jobs", ["Compare", "Job", "Status", "Base model", "Fine-tuned model", "Trained tokens", "Created"],
      rows.length ? rows : [h("tr", {}, h("td", { colspan: 7, text: "No jobs yet." }))]));
  timer = setTimeout(render, 5000);
}

// --- one job ------------------------------------------------------------------------------------------------

function figuresTable(id, job) {
  const rows = [];
  for (const field of FIGURES) {
    if (job[field] === null || job[field] === undefined) continue;
    const flat = typeof job[field] === "object" ? flatten(job[field], field) : { [field]: job[field] };
    for (const [k, v] of Object.entries(flat)) rows.push(h("tr", {}, h("th", { scope: "row", text: k }), h("td", { class: "num", text: fmt(v) })));
  }
  if (!rows.length) return h("p", { id, text: "No evaluation or forgetting figures on this job." });
  return h("table", { id }, h("tbody", {}, rows));
}

function checkpointComparison(checkpoints, steps) {
  const chosen = checkpoints.filter((c) => steps.has(c.step_number)).sort((a, b) => a.step_number - b.step_number);
  if (chosen.length < 2) return h("p", { id: "checkpoint-comparison", class: "hint", text: "Tick two or more checkpoints to compare them." });
  const keys = [...new Set(chosen.flatMap((c) => Object.keys(c.metrics || {}).filter((k) => k !== "step")))];
  const first = chosen[0].metrics || {};
  const rows = keys.map((k) => h("tr", {}, h("th", { scope: "row", text: k }), chosen.map((c, i) => {
    const v = (c.metrics || {})[k];
    const change = i && typeof v === "number" && typeof first[k] === "number" ? ` (${v - first[k] >= 0 ? "+" : ""}${num(v - first[k])})` : "";
    return h("td", { class: "num", text: (typeof v === "number" ? num(v) : fmt(v)) + change });
  })));
  return h("table", { id: "checkpoint-comparison" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Metric" }), chosen.map((c) => h("th", { scope: "col", text: `step ${c.step_number}` })))),
    h("tbody", {}, rows));
}

async function loadReport(job) {
  if (!job.report_file) return null;
  if (!state.reports.has(job.report_file)) {
    const [meta, response] = await Promise.all([api(`/v1/files/${enc(job.report_file)}`),
      request("GET", `/v1/files/${enc(job.report_file)}/content`, { raw: true })]);
    state.reports.set(job.report_file, { filename: meta.filename, text: await response.text() });
  }
  return state.reports.get(job.report_file);
}

function reportView(job, report) {
  if (!report) return h("p", { id: "no-report", text: "No evaluation report for this job." });
  if (/\.html?$/i.test(report.filename)) {
    // A sandboxed frame with no scripts and an opaque origin: the page is shown, never run with our key.
    const frame = h("iframe", { id: "report", class: "report", sandbox: "", title: `evaluation report ${report.filename}` });
    frame.srcdoc = report.text;
    return frame;
  }
  let text = report.text;
  if (/\.json$/i.test(report.filename)) { try { text = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* as is */ } }
  return h("pre", { id: "report", tabindex: 0, text });
}

async function renderJob(id) {
  const job = await api("/v1/fine_tuning/jobs/" + enc(id));
  const [events, checkpoints] = await Promise.all([
    allPages(`/v1/fine_tuning/jobs/${enc(id)}/events`), allPages(`/v1/fine_tuning/jobs/${enc(id)}/checkpoints`)]);
  let report = null, reportError = null;
  try { report = await loadReport(job); } catch (e) { reportError = e.message; }
  if (!state.selectedCheckpoints.has(id)) state.selectedCheckpoints.set(id, new Set());
  const steps = state.selectedCheckpoints.get(id);
  const base = `/v1/fine_tuning/jobs/${enc(id)}`;
  const act = (label, verb, className) => h("button", { type: "button", id: `${verb}-job`, class: className,
    onclick: action(label, async () => { await request("POST", `${base}/${verb}`); await render(); focusFirstAction(); return `${label}: done.`; }) }, label);
  const actions = [];
  if (["queued", "running"].includes(job.status)) actions.push(act("Pause", "pause", "secondary"));
  if (job.status === "paused") actions.push(act("Resume", "resume"));
  if (!TERMINAL.includes(job.status)) actions.push(act("Cancel", "cancel", "danger"));
  if (job.status === "succeeded") {
    const tools = `/v1/tuneforge/jobs/${enc(id)}`;
    actions.push(
      h("button", { type: "button", id: "download-adapter", onclick: action("Download adapter", async () => `Downloaded ${await download("GET", `${tools}/adapter`, "adapter.zip")}.`) }, "Download adapter"),
      h("button", { type: "button", id: "export-gguf", class: "secondary", onclick: action("Export GGUF", async () => `Exported ${await download("POST", `${tools}/export?format=gguf`, "model.gguf")}.`, { busy: "exporting (a first export can take minutes)…" }) }, "Export GGUF"),
      h("button", { type: "button", id: "export-merged", class: "secondary", onclick: action("Export merged model", async () => `Exported ${await download("POST", `${tools}/export?format=merged`, "merged.zip")}.`, { busy: "exporting (a first export can take minutes)…" }) }, "Export merged model"));
  }
  if (report) {
    actions.push(h("button", { type: "button", id: "download-report", class: "secondary", onclick: action("Download report",
      async () => `Downloaded ${await download("GET", `/v1/files/${enc(job.report_file)}/content`, report.filename)}.`) }, "Download report"));
  }
  const hyper = Object.entries(job.hyperparameters || {}).map(([k, v]) => `${k}=${fmt(v)}`).join(", ");
  const ckptRows = checkpoints.map((c) => h("tr", {},
    h("td", {}, h("label", {}, h("input", { type: "checkbox", class: "select-checkpoint", id: `select-step-${c.step_number}`,
      checked: steps.has(c.step_number), onchange: (e) => {
        if (e.target.checked) steps.add(c.step_number); else steps.delete(c.step_number);
        document.getElementById("checkpoint-comparison").replaceWith(checkpointComparison(checkpoints, steps));
      } }), h("span", { class: "sr-only", text: `compare step ${c.step_number}` }))),
    h("td", { class: "num", text: c.step_number }), h("td", { class: "num", text: num((c.metrics || {}).train_loss) }),
    h("td", { class: "num", text: num((c.metrics || {}).valid_loss) }), h("td", { text: c.fine_tuned_model_checkpoint })));
  const eventRows = events.map((e) => h("tr", {}, h("td", { text: when(e.created_at) }), h("td", { text: e.level }), h("td", { text: e.message })));
  show(h("p", {}, h("a", { href: "#", text: "← all jobs" })),
    h("h2", { id: "job-title" }, `${job.id} `, h("span", { class: `status ${job.status}`, id: "job-status", text: job.status })),
    h("div", { class: "toolbar", id: "job-actions", role: "group", "aria-label": "job actions" }, actions),
    statusLine(),
    h("div", { class: "card", id: "job-summary" },
      "base ", h("b", { text: job.model }), ` · method ${job.method?.type ?? "supervised"} · ${hyper}`,
      ` · trained tokens ${job.trained_tokens ?? "–"}`,
      job.estimated_finish ? ` · estimated finish ${when(job.estimated_finish)}` : "",
      h("br"), "fine-tuned model: ", h("b", { text: job.fine_tuned_model || "–" }),
      job.error ? h("div", { class: "error", id: "job-error", text: job.error.message }) : null),
    h("div", { class: "card" }, h("h3", { text: "Loss" }), lossChart("loss-curve", "loss curve", [
      { name: "train loss", color: COLORS[0], points: metricPoints(events, "train_loss"), id: "train-loss" },
      { name: "valid loss", color: COLORS[1], points: metricPoints(events, "valid_loss"), id: "valid-loss", dashed: true }])),
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("h3", { text: "Checkpoints" }),
        table("checkpoints", ["Compare", "Step", "Train loss", "Valid loss", "Model"], ckptRows),
        h("h4", { text: "Compared checkpoints" }), checkpointComparison(checkpoints, steps)),
      h("div", { class: "card" }, h("h3", { text: "Evaluation and forgetting" }), figuresTable("figures", job))),
    h("div", { class: "card" }, h("h3", { text: "Evaluation report" }),
      reportError ? h("p", { class: "error", text: reportError }) : reportView(job, report)),
    h("div", { class: "card" }, h("h3", { text: "Events" }), table("events", ["Time", "Level", "Message"], eventRows)));
  if (!TERMINAL.includes(job.status)) timer = setTimeout(render, 2000);
}

function focusFirstAction() {
  const first = document.querySelector("#job-actions button");
  if (first) first.focus();
}

// --- compare jobs -------------------------------------------------------------------------------------------

async function renderCompare(ids) {
  const jobs = await Promise.all(ids.map(async (id) => {
    const [job, checkpoints, events] = await Promise.all([api(`/v1/fine_tuning/jobs/${enc(id)}`),
      allPages(`/v1/fine_tuning/jobs/${enc(id)}/checkpoints`), allPages(`/v1/fine_tuning/jobs/${enc(id)}/events`)]);
    return { job, checkpoints: checkpoints.slice().sort((a, b) => a.step_number - b.step_number), events };
  }));
  const head = h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "" }),
    jobs.map(({ job }) => h("th", { scope: "col" }, h("a", { href: `#job=${enc(job.id)}`, text: job.id })))));
  const row = (label, cell) => h("tr", {}, h("th", { scope: "row", text: label }), jobs.map((j) => h("td", { class: "num", text: cell(j) })));
  const lastLoss = (j, key) => { const c = j.checkpoints.filter((c) => typeof (c.metrics || {})[key] === "number"); return c.length ? c[c.length - 1].metrics[key] : null; };
  const bestValid = (j) => { const v = j.checkpoints.map((c) => (c.metrics || {}).valid_loss).filter((v) => typeof v === "number"); return v.length ? Math.min(...v) : null; };
  const hyperKeys = [...new Set(jobs.flatMap(({ job }) => Object.keys(job.method?.[job.method?.type]?.hyperparameters || job.hyperparameters || {})))];
  const hyper = ({ job }) => job.method?.[job.method?.type]?.hyperparameters || job.hyperparameters || {};
  const summary = h("table", { id: "compare-summary" }, head, h("tbody", {},
    row("status", ({ job }) => job.status), row("base model", ({ job }) => job.model),
    row("method", ({ job }) => job.method?.type ?? "supervised"),
    hyperKeys.map((k) => row(k, (j) => fmt(hyper(j)[k]))),
    row("trained tokens", ({ job }) => fmt(job.trained_tokens)), row("fine-tuned model", ({ job }) => job.fine_tuned_model || "–"),
    row("last train loss", (j) => num(lastLoss(j, "train_loss"))), row("last valid loss", (j) => num(lastLoss(j, "valid_loss"))),
    row("best valid loss", (j) => num(bestValid(j)))));
  const steps = [...new Set(jobs.flatMap((j) => j.checkpoints.map((c) => c.step_number)))].sort((a, b) => a - b);
  const atStep = (j, step) => { const c = j.checkpoints.find((c) => c.step_number === step); return c ? `${num(c.metrics?.train_loss)} / ${num(c.metrics?.valid_loss)}` : "–"; };
  const perStep = h("table", { id: "compare-checkpoints" }, head.cloneNode(true),
    h("tbody", {}, steps.map((s) => row(`step ${s}`, (j) => atStep(j, s)))));
  const flat = jobs.map(({ job }) => Object.assign({}, ...FIGURES.map((f) => (job[f] === null || job[f] === undefined ? {} :
    typeof job[f] === "object" ? flatten(job[f], f) : { [f]: job[f] }))));
  const figureKeys = [...new Set(flat.flatMap((f) => Object.keys(f)))];
  const figures = figureKeys.length ? h("table", { id: "compare-figures" }, head.cloneNode(true), h("tbody", {},
    figureKeys.map((k) => h("tr", {}, h("th", { scope: "row", text: k }), flat.map((f) => h("td", { class: "num", text: fmt(f[k]) }))))))
    : h("p", { id: "compare-figures", text: "None of these jobs has evaluation or forgetting figures." });
  const curves = jobs.map((j, i) => ({ name: j.job.id, color: COLORS[i % COLORS.length], points: metricPoints(j.events, "train_loss") }));
  show(h("p", {}, h("a", { href: "#", text: "← all jobs" })), h("h2", { text: `Comparing ${jobs.length} jobs` }), statusLine(),
    h("div", { class: "card" }, h("h3", { text: "Jobs" }), summary),
    h("div", { class: "card" }, h("h3", { text: "Train / valid loss at each checkpoint" }), perStep),
    h("div", { class: "card" }, h("h3", { text: "Evaluation and forgetting" }), figures),
    h("div", { class: "card" }, h("h3", { text: "Train loss" }), lossChart("compare-curve", "train loss of the compared jobs", curves)));
}

// --- new job: files, their check, options, create -----------------------------------------------------------

function field(label, control, hint) {
  return h("div", { class: "field" }, h("label", { for: control.id, text: label }), control, hint ? h("span", { class: "hint", id: `${control.id}-hint`, text: hint }) : null);
}

function reportSection(title, check) {
  if (!check) return null;
  if (check.error) return h("div", { class: "card" }, h("h3", { text: title }), h("p", { class: "error", text: check.error }));
  const r = check.report;
  const counts = Object.entries(r.finding_counts || {}).map(([code, n]) => `${code} ${n}`).join(", ");
  const findingTable = (kind, findings) => table(`${kind}-${check.role}`, ["Where", "Code", "Problem", "Fix"],
    findings.map((f) => h("tr", {}, h("td", { text: (f.file ? "validation file, " : "") + (f.where || `line ${f.line}`) }),
      h("td", { text: f.code }), h("td", { text: f.message }), h("td", { text: f.fix || "" }))));
  const tokens = r.tokens_per_example;
  return h("div", { class: "card", id: `check-${check.role}` },
    h("h3", {}, `${title}: ${check.filename} `, h("span", { class: r.ok ? "ok" : "bad", text: r.ok ? "OK" : `INVALID (${(r.errors || []).length} errors)` })),
    h("p", { class: "counts", text: [`${r.n_examples ?? "?"} examples`, r.format ? `format ${r.format}` : null,
      r.n_tokens !== null && r.n_tokens !== undefined ? `${r.n_tokens} tokens, ${r.n_trained_tokens} trained` : null,
      tokens ? `tokens per example: min ${tokens.min}, mean ${tokens.mean}, max ${tokens.max}` : null,
      r.auto_epochs ? `epochs "auto" would pick ${r.auto_epochs}` : null, counts ? `findings: ${counts}` : null].filter(Boolean).join(" · ") }),
    (r.errors || []).length ? [h("h4", { class: "bad", text: "Errors" }), findingTable("errors", r.errors)] : null,
    (r.warnings || []).length ? [h("h4", { class: "warn", text: "Warnings" }), findingTable("warnings", r.warnings)] : null);
}

function previewSection(preview) {
  if (!preview) return null;
  if (preview.error) return h("div", { class: "card", id: "preview" }, h("h3", { text: "Loss-mask preview" }), h("p", { class: "error", text: preview.error }));
  return h("div", { class: "card", id: "preview" },
    h("h3", { text: `Loss-mask preview (${preview.model})` }),
    h("p", { class: "hint" }, "Each box is one token; ", h("mark", { text: "highlighted" }), " tokens are trained (carry loss), the rest are context only."),
    preview.examples.map((ex, i) => h("section", { class: "preview-example", "aria-label": ex.title },
      h("h4", { text: `${ex.title}: ${ex.n_tokens} tokens, ${ex.n_trained} trained` }),
      h("div", { class: "tokens", id: `preview-${i}`, tabindex: 0, role: "group", "aria-label": `tokens of ${ex.title}` },
        ex.tokens.map((t) => h(t.trained ? "mark" : "span", { title: `token ${t.id}${t.trained ? ", trained" : ""}`,
          text: t.text.replace(/\n/g, "↵\n") || "\u200b" }))))));
}

const checkSeq = { training: 0, validation: 0 };

async function checkFile(role, fileId, form) {
  const method = form.elements.method.value;
  const box = document.getElementById("checks");
  const seq = ++checkSeq[role]; // a later check (another file, method or model) wins over one still running
  if (!fileId) { state.checks.delete(role); drawChecks(box); return; }
  say(`Checking the ${role} file…`);
  const files = await api("/v1/files?purpose=fine-tune").catch(() => ({ data: [] }));
  const filename = (files.data.find((f) => f.id === fileId) || {}).filename || fileId;
  const check = { role, fileId, method, filename };
  const model = form.elements.model.value;
  const jobs = [request("POST", `/v1/tuneforge/files/${enc(fileId)}/validate?method=${enc(method)}&purpose=${role}`)
    .then((r) => { check.report = r.report; }, (e) => { check.error = `Validation unavailable: ${e.message}`; })];
  if (role === "training") {
    jobs.push(request("POST", `/v1/tuneforge/files/${enc(fileId)}/preview?method=${enc(method)}&n=3${model ? "&model=" + enc(model) : ""}`)
      .then((p) => { check.preview = p; }, (e) => { check.preview = { error: `Preview unavailable: ${e.message}` }; }));
  }
  await Promise.all(jobs);
  if (seq !== checkSeq[role]) return;
  state.checks.set(role, check);
  drawChecks(box);
  say(check.error ? check.error : check.report.ok ? `The ${role} file is valid.` : `The ${role} file has ${check.report.errors.length} errors.`, !check.report?.ok);
}

function drawChecks(box) {
  if (!box) return;
  const training = state.checks.get("training"), validation = state.checks.get("validation");
  box.replaceChildren(...[reportSection("Training file", training), reportSection("Validation file", validation),
    previewSection(training && training.preview)].filter(Boolean));
}

async function upload(input) {
  const file = input.files[0];
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  const stored = await request("POST", "/v1/files", { form });
  input.value = "";
  return stored;
}

function option(value, label, selected) {
  return h("option", { value, selected }, label);
}

async function renderNew() {
  const [models, files] = await Promise.all([api("/v1/models"), api("/v1/files?purpose=fine-tune")]);
  const fileOptions = (selected, none) => [option("", none, !selected),
    ...files.data.map((f) => option(f.id, `${f.filename} (${f.id}, ${f.bytes} bytes)`, f.id === selected))];
  const previous = { training: state.checks.get("training")?.fileId, validation: state.checks.get("validation")?.fileId };
  const input = (id, attrs) => h("input", { id, name: id, ...attrs });
  const trainingSelect = h("select", { id: "training-file", name: "training_file" }, fileOptions(previous.training, "— choose or upload —"));
  const validationSelect = h("select", { id: "validation-file", name: "validation_file" }, fileOptions(previous.validation, "none"));
  const methodSelect = h("select", { id: "method", name: "method" }, option("supervised", "supervised (SFT)"), option("dpo", "dpo (preference pairs)"),
    option("reinforcement", "reinforcement (GRPO with a grader)"));
  const modelSelect = h("select", { id: "model", name: "model" }, models.data.map((m, i) => option(m.id, m.id, i === 0)));
  const grader = h("textarea", { id: "grader", name: "grader", rows: 3, "aria-describedby": "grader-hint" });
  grader.value = JSON.stringify({ type: "string_check", name: "exact", input: "{{sample.output_text}}", reference: "{{item.answer}}", operation: "eq" });
  const errorBox = h("p", { id: "create-error", class: "error", role: "alert", tabindex: -1 });
  const form = h("form", { id: "create-form", novalidate: true },
    h("fieldset", {}, h("legend", { text: "Model and method" }), h("div", { class: "fields" },
      field("Model", modelSelect), field("Method", methodSelect))),
    h("fieldset", {}, h("legend", { text: "Data" }), h("div", { class: "fields" },
      field("Upload a training file (.jsonl)", input("training-upload", { type: "file", accept: ".jsonl" })),
      field("Training file", trainingSelect),
      field("Upload a validation file (optional)", input("validation-upload", { type: "file", accept: ".jsonl" })),
      field("Validation file", validationSelect)),
    h("div", { class: "toolbar" }, h("button", { type: "button", id: "check-files", class: "secondary" }, "Upload and check"),
      h("span", { class: "hint", text: "Uploads the chosen files, then shows their validation report and which tokens are trained." }))),
    h("div", { id: "checks", "aria-live": "polite" }),
    h("fieldset", {}, h("legend", { text: "Hyperparameters (empty: auto)" }), h("div", { class: "fields" },
      field("Epochs", input("n-epochs", { type: "number", min: 1, max: 50, step: 1, placeholder: "auto" })),
      field("Batch size", input("batch-size", { type: "number", min: 1, max: 256, step: 1, placeholder: "auto" })),
      field("Learning rate multiplier", input("lr-multiplier", { type: "number", min: 0, step: "any", placeholder: "auto" })),
      field("Beta (dpo)", input("beta", { type: "number", min: 0, max: 10, step: "any", placeholder: "auto" })),
      field("Suffix", input("suffix", { type: "text", maxlength: 64, pattern: "[A-Za-z0-9_.\\-]+" }), "letters, digits, _ . -"),
      field("Seed", input("seed", { type: "number", min: 0, step: 1, placeholder: "random" })),
      field("Grader (reinforcement, JSON)", grader, "OpenAI's grader object: string_check, text_similarity, multi, score_model"))),
    h("fieldset", {}, h("legend", { text: "tuneforge options (empty: the trainer's defaults)" }), h("div", { class: "fields" },
      field("LoRA rank (lora_r)", input("opt-lora-r", { type: "number", min: 1, step: 1, placeholder: "default" })),
      field("LoRA alpha (lora_alpha)", input("opt-lora-alpha", { type: "number", min: 1, step: "any", placeholder: "default" })),
      field("Full fine-tuning (full)", h("select", { id: "opt-full" }, option("", "default (LoRA)"), option("true", "yes: train every weight"), option("false", "no: LoRA"))),
      field("Max length in tokens (max_length)", input("opt-max-length", { type: "number", min: 8, step: 1, placeholder: "default" })),
      field("Forgetting guard (forgetting_guard)", h("select", { id: "opt-forgetting-guard" }, option("", "default"),
        option("kl", "kl"), option("replay", "replay"), option("off", "off"))))),
    errorBox,
    h("div", { class: "toolbar" }, h("button", { type: "submit", id: "create-job" }, "Create job")));

  const syncMethod = () => {
    const method = methodSelect.value;
    form.querySelector("#beta").disabled = method !== "dpo";
    grader.disabled = method !== "reinforcement";
  };
  syncMethod();
  const recheck = () => Promise.all(["training", "validation"].map((role) =>
    checkFile(role, form.elements[`${role}_file`].value, form))).catch((e) => say(e.message, true));
  methodSelect.addEventListener("change", () => { syncMethod(); recheck(); });
  modelSelect.addEventListener("change", () => checkFile("training", trainingSelect.value, form).catch((e) => say(e.message, true)));
  trainingSelect.addEventListener("change", () => checkFile("training", trainingSelect.value, form).catch((e) => say(e.message, true)));
  validationSelect.addEventListener("change", () => checkFile("validation", validationSelect.value, form).catch((e) => say(e.message, true)));
  form.querySelector("#check-files").addEventListener("click", action("Upload and check", async () => {
    for (const [role, select] of [["training", trainingSelect], ["validation", validationSelect]]) {
      const picker = form.querySelector(`#${role}-upload`);
      if (!picker.files.length) continue;
      const stored = await upload(picker);
      for (const s of [trainingSelect, validationSelect]) s.append(option(stored.id, `${stored.filename} (${stored.id}, ${stored.bytes} bytes)`, false));
      select.value = stored.id;
    }
    if (!trainingSelect.value) throw new Error("choose a training file to upload first");
    await recheck();
    const check = state.checks.get("training");
    return check?.report ? (check.report.ok ? "The training file is valid." : `The training file has ${check.report.errors.length} errors.`) : check?.error;
  }, { busy: "uploading and checking…" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.textContent = "";
    const button = form.querySelector("#create-job");
    button.disabled = true;
    try {
      const job = await request("POST", "/v1/fine_tuning/jobs", { json: createBody(form) });
      location.hash = "#job=" + enc(job.id);
    } catch (e) {
      errorBox.textContent = e.message;
      errorBox.focus();
    } finally {
      button.disabled = false;
    }
  });
  show(h("h2", { text: "New fine-tuning job" }), statusLine(), form);
  drawChecks(document.getElementById("checks"));
}

// The create body: OpenAI's fields, and tuneforge's own options only when the user set one.
function createBody(form) {
  const value = (id) => form.querySelector("#" + id).value.trim();
  const training = form.elements.training_file.value;
  if (!training) throw new Error("Choose or upload a training file.");
  const check = state.checks.get("training");
  if (check && check.fileId === training && check.report && !check.report.ok) {
    throw new Error(`The training file has ${check.report.errors.length} errors (see its report above): fix them and upload it again.`);
  }
  const method = form.elements.method.value;
  const hyper = {};
  const numberOf = (id, key, parse) => { if (value(id) !== "") hyper[key] = parse(value(id)); };
  numberOf("n-epochs", "n_epochs", (v) => parseInt(v, 10));
  numberOf("batch-size", "batch_size", (v) => parseInt(v, 10));
  numberOf("lr-multiplier", "learning_rate_multiplier", Number);
  if (method === "dpo") numberOf("beta", "beta", Number);
  const section = {};
  if (Object.keys(hyper).length) section.hyperparameters = hyper;
  if (method === "reinforcement") {
    try { section.grader = JSON.parse(value("grader")); } catch (e) { throw new Error(`The grader is not valid JSON: ${e.message}`); }
  }
  const body = { model: form.elements.model.value, training_file: training, method: { type: method, [method]: section } };
  if (form.elements.validation_file.value) body.validation_file = form.elements.validation_file.value;
  if (value("suffix")) body.suffix = value("suffix");
  if (value("seed") !== "") body.seed = parseInt(value("seed"), 10);
  const options = {};
  if (value("opt-lora-r") !== "") options.lora_r = parseInt(value("opt-lora-r"), 10);
  if (value("opt-lora-alpha") !== "") options.lora_alpha = Number(value("opt-lora-alpha"));
  if (value("opt-full") !== "") options.full = value("opt-full") === "true";
  if (value("opt-max-length") !== "") options.max_length = parseInt(value("opt-max-length"), 10);
  if (value("opt-forgetting-guard") !== "") options.forgetting_guard = value("opt-forgetting-guard");
  if (Object.keys(options).length) body.tuneforge = options;
  return body;
}

// --- routing --------------------------------------------------------------------------------------------------

function statusLine() {
  return h("p", { id: "status", role: "status", "aria-live": "polite" });
}

// Replace the page, keeping keyboard focus on the same control when it is still there (the job page redraws
// itself every few seconds while the job runs) and the status line's message.
function show(...children) {
  const focused = document.activeElement && document.activeElement !== document.body ? document.activeElement.id : null;
  const status = document.getElementById("status");
  const message = status ? [status.textContent, status.className] : null;
  app.replaceChildren(...children);
  const line = document.getElementById("status");
  if (line && message && sameView) { line.textContent = message[0]; line.className = message[1]; }
  if (focused && sameView) document.getElementById(focused)?.focus({ preventScroll: true });
}

let lastView = null, sameView = false;

async function render() {
  clearTimeout(timer);
  const hash = location.hash;
  sameView = hash === lastView;
  lastView = hash;
  try {
    if (!localStorage.getItem(KEY)) { app.replaceChildren(h("p", { text: "Paste an API key above to see your jobs." })); return; }
    let match;
    if ((match = hash.match(/^#job=(.+)$/))) await renderJob(decodeURIComponent(match[1]));
    else if ((match = hash.match(/^#compare=(.+)$/))) await renderCompare(match[1].split(",").map(decodeURIComponent).filter(Boolean));
    else if (hash === "#new") await renderNew();
    else await renderJobs();
  } catch (e) {
    app.replaceChildren(h("p", { class: "error", id: "load-error", text: e.message }));
  }
}

window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#key=")) { takeKeyFromLink(); keyInput.value = localStorage.getItem(KEY) || ""; }
  render();
});
render();
