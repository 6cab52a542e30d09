// The tuneforge dashboard: jobs list and a job page (live loss curve, events, checkpoints, evaluation report).
// Plain JS and inline SVG, nothing fetched from outside this server. It calls the same /v1 API with the key
// the user pasted (kept in localStorage; `?key=...` in the URL sets it).
"use strict";

const app = document.getElementById("app");
const keyInput = document.getElementById("api-key");
const params = new URLSearchParams(location.search);
if (params.get("key")) localStorage.setItem("tuneforge-key", params.get("key"));
keyInput.value = localStorage.getItem("tuneforge-key") || "";
keyInput.addEventListener("change", () => { localStorage.setItem("tuneforge-key", keyInput.value.trim()); render(); });
let timer = null;

async function api(path, asText = false) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + (localStorage.getItem("tuneforge-key") || "") } });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return asText ? response.text() : response.json();
}

async function allPages(path) {
  const items = [];
  let after = null;
  for (let i = 0; i < 100; i++) {
    const page = await api(path + (path.includes("?") ? "&" : "?") + "limit=100" + (after ? "&after=" + after : ""));
    items.push(...page.data);
    if (!page.has_more) break;
    after = page.last_id;
  }
  return items;
}

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "");

async function renderJobs() {
  const jobs = await allPages("/v1/fine_tuning/jobs");
  const rows = jobs.map((j) => `<tr>
      <td><a href="#job=${esc(j.id)}">${esc(j.id)}</a></td>
      <td class="status ${esc(j.status)}">${esc(j.status)}</td>
      <td>${esc(j.model)}</td><td>${esc(j.fine_tuned_model || "")}</td>
      <td>${esc(j.trained_tokens ?? "")}</td><td>${when(j.created_at)}</td></tr>`).join("");
  app.innerHTML = `<h2>Jobs</h2><table id="jobs"><tr><th>Job</th><th>Status</th><th>Base model</th>
      <th>Fine-tuned model</th><th>Trained tokens</th><th>Created</th></tr>${rows ||
      '<tr><td colspan="6">No jobs yet.</td></tr>'}</table>`;
  timer = setTimeout(render, 5000);
}

function lossCurve(events) {
  // Events come newest first; the curve wants steps in order.
  const points = { train: [], valid: [] };
  for (const e of events.slice().reverse()) {
    if (e.type !== "metrics" || !e.data) continue;
    if (typeof e.data.train_loss === "number") points.train.push([e.data.step, e.data.train_loss]);
    if (typeof e.data.valid_loss === "number") points.valid.push([e.data.step, e.data.valid_loss]);
  }
  const all = points.train.concat(points.valid);
  if (!all.length) return '<p id="no-curve">No metrics yet.</p>';
  const W = 640, H = 260, L = 50, R = 12, T = 12, B = 30;
  const maxStep = Math.max(...all.map((p) => p[0]), 1), minStep = Math.min(...all.map((p) => p[0]), 0);
  let lo = Math.min(...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
  if (hi === lo) { hi += 0.5; lo -= 0.5; }
  const x = (s) => L + ((s - minStep) / Math.max(maxStep - minStep, 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const path = (pts) => pts.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
  let grid = "";
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    grid += `<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#e3e6eb"/>` +
      `<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(3)}</text>`;
  }
  grid += `<text x="${L}" y="${H - 8}">step ${minStep}</text><text x="${W - R}" y="${H - 8}" text-anchor="end">step ${maxStep}</text>`;
  const dots = (pts, color) => pts.map((p) => `<circle cx="${x(p[0])}" cy="${y(p[1])}" r="2.5" fill="${color}"/>`).join("");
  return `<svg id="loss-curve" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="loss curve">
      ${grid}<path id="train-loss" d="${path(points.train)}" fill="none" stroke="#1d5fd0" stroke-width="2"/>
      ${dots(points.train, "#1d5fd0")}
      <path id="valid-loss" d="${path(points.valid)}" fill="none" stroke="#e07b00" stroke-width="2" stroke-dasharray="5 3"/>
      ${dots(points.valid, "#e07b00")}</svg>
      <div class="legend"><span style="color:#1d5fd0">&#9644; train loss</span><span style="color:#e07b00">&#9644; valid loss</span></div>`;
}

async function renderJob(id) {
  const job = await api("/v1/fine_tuning/jobs/" + encodeURIComponent(id));
  const [events, checkpoints] = await Promise.all([
    allPages(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events`),
    allPages(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/checkpoints`),
  ]);
  let report = "<p>No evaluation report for this job.</p>";
  if (job.report_file) {
    try { report = `<pre id="report">${esc(await api(`/v1/files/${job.report_file}/content`, true))}</pre>`; }
    catch (e) { report = `<p class="error">${esc(e.message)}</p>`; }
  }
  const hyper = Object.entries(job.hyperparameters || {}).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(", ");
  const eventRows = events.map((e) => `<tr><td>${when(e.created_at)}</td><td>${esc(e.level)}</td><td>${esc(e.message)}</td></tr>`).join("");
  const ckptRows = checkpoints.map((c) => `<tr><td>${c.step_number}</td><td>${esc(c.metrics.train_loss?.toFixed?.(4) ?? "")}</td>
      <td>${esc(c.metrics.valid_loss?.toFixed?.(4) ?? "")}</td><td>${esc(c.fine_tuned_model_checkpoint)}</td></tr>`).join("");
  app.innerHTML = `<p><a href="#">&larr; all jobs</a></p>
    <h2 id="job-title">${esc(job.id)} <span class="status ${esc(job.status)}">${esc(job.status)}</span></h2>
    <div class="card">base <b>${esc(job.model)}</b> &middot; method ${esc(job.method?.type)} &middot; ${hyper}
      &middot; trained tokens ${esc(job.trained_tokens ?? "–")}<br>fine-tuned model: <b>${esc(job.fine_tuned_model || "–")}</b>
      ${job.error ? `<div class="error">${esc(job.error.message)}</div>` : ""}</div>
    <div class="card"><h3>Loss</h3>${lossCurve(events)}</div>
    <div class="grid"><div class="card"><h3>Checkpoints</h3><table id="checkpoints"><tr><th>Step</th><th>Train loss</th>
      <th>Valid loss</th><th>Model</th></tr>${ckptRows}</table></div>
    <div class="card"><h3>Evaluation report</h3>${report}</div></div>
    <div class="card"><h3>Events</h3><table id="events"><tr><th>Time</th><th>Level</th><th>Message</th></tr>${eventRows}</table></div>`;
  if (!["succeeded", "failed", "cancelled"].includes(job.status)) timer = setTimeout(render, 2000);
}

async function render() {
  clearTimeout(timer);
  const match = location.hash.match(/^#job=(.+)$/);
  try {
    if (!localStorage.getItem("tuneforge-key")) { app.innerHTML = "<p>Paste an API key above to see your jobs.</p>"; return; }
    await (match ? renderJob(decodeURIComponent(match[1])) : renderJobs());
  } catch (e) {
    app.innerHTML = `<p class="error" id="load-error">${esc(e.message)}</p>`;
  }
}

window.addEventListener("hashchange", render);
render();
