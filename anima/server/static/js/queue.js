// The queue panel: each job's state, progress with ETA, the live preview, cancel and interrupt;
// kept current by the server's event stream.
"use strict";

import { $, api, showError, state } from "./api.js";

const RANK = { queued: 0, running: 1 };  // anything else is final
const rank = (status) => RANK[status] ?? 2;
const timing = new Map();  // job id -> {t0, f0}: the first progress seen, for the ETA
let onDone = () => {};

export function setupQueue(doneCallback) {
  onDone = doneCallback;
  $("#clear-finished").addEventListener("click", () => {
    document.querySelectorAll("#queue-list li").forEach((li) => {
      if (!["queued", "running"].includes(li.dataset.status)) li.remove();
    });
  });
  $("#interrupt").addEventListener("click", () => {
    const running = [...state.jobs.values()].find((j) => j.status === "running");
    if (running) cancelJob(running.id);
  });
}

function queueItem(job) {
  let li = document.querySelector(`#queue-list li[data-id="${job.id}"]`);
  if (!li) {
    li = document.createElement("li");
    li.dataset.id = job.id;
    li.innerHTML = `<img class="preview" alt="">
      <div class="title"></div>
      <div><progress max="100" value="0"></progress> <span class="pct">0%</span> <span class="eta dim"></span></div>
      <div><span class="state"></span> <button type="button" class="cancel small">cancel</button></div>`;
    li.querySelector(".title").textContent = job.recipe.prompt || "(empty prompt)";
    li.querySelector(".cancel").addEventListener("click", () => cancelJob(job.id));
    $("#queue-list").prepend(li);
  }
  return li;
}

function formatSeconds(s) {
  return s >= 90 ? `${Math.round(s / 60)} min` : `${Math.max(0, Math.round(s))} s`;
}

export function setProgress(id, fraction, step, total) {
  const li = document.querySelector(`#queue-list li[data-id="${id}"]`);
  if (!li) return;
  const pct = Math.round(fraction * 100);
  li.querySelector("progress").value = pct;
  li.querySelector(".pct").textContent = `${pct}%`;
  const now = performance.now() / 1000;
  if (!timing.has(id)) timing.set(id, { t0: now, f0: fraction });
  const { t0, f0 } = timing.get(id);
  let eta = "";
  if (fraction >= 1) eta = "";
  else if (fraction > f0 && now > t0) eta = `${formatSeconds(((now - t0) / (fraction - f0)) * (1 - fraction))} left`;
  li.querySelector(".eta").textContent = eta;
  if (step != null) $("#live-text").textContent = `step ${step}/${total}${eta ? " · " + eta : ""}`;
}

export function showPreview(id, step) {
  const url = `/api/jobs/${id}/preview?step=${step}`;
  const li = document.querySelector(`#queue-list li[data-id="${id}"]`);
  if (li) li.querySelector(".preview").src = url;
  $("#live").hidden = false;
  $("#live-preview").src = url;
}

export function upsertJob(job) {
  const known = state.jobs.get(job.id);
  // The POST reply can arrive after the event stream already said "running": never go back.
  if (known && rank(job.status) < rank(known.status)) return;
  state.jobs.set(job.id, job);
  const li = queueItem(job);
  li.dataset.status = job.status;
  let text = job.status;
  if (job.status === "queued" && job.position != null) text += ` (#${job.position + 1})`;
  if (job.error) text += `: ${job.error}`;
  li.querySelector(".state").textContent = text;
  li.querySelector(".cancel").hidden = !["queued", "running"].includes(job.status);
  if (job.status === "done") {
    setProgress(job.id, 1);
    if (job.urls.length) li.querySelector(".preview").src = job.urls[job.urls.length - 1];
    onDone(job);
  }
  if (rank(job.status) === 2) {
    timing.delete(job.id);
    li.querySelector(".eta").textContent = "";
  }
  updateStatus();
}

async function cancelJob(id) {
  try { upsertJob(await api(`/api/jobs/${id}`, { method: "DELETE" })); } catch (e) { showError(e.message); }
}

function updateStatus() {
  const jobs = [...state.jobs.values()];
  const active = jobs.filter((j) => ["queued", "running"].includes(j.status)).length;
  const running = jobs.some((j) => j.status === "running");
  $("#interrupt").disabled = !running;
  if (!running) $("#live").hidden = true;
  $("#status").textContent = active ? `${active} job(s) active` : "idle";
}

export async function loadActiveJobs() {
  const active = await api("/api/jobs?status=active&limit=200");
  active.items.reverse().forEach(upsertJob);
  updateStatus();
}

export function listen() {
  const es = new EventSource("/api/events");
  es.addEventListener("job", (e) => {
    const job = JSON.parse(e.data);
    if (job.status !== "deleted") upsertJob(job);
  });
  es.addEventListener("progress", (e) => {
    const p = JSON.parse(e.data);
    setProgress(p.id, p.progress, p.step, p.total);
  });
  es.addEventListener("preview", (e) => {
    const p = JSON.parse(e.data);
    showPreview(p.id, p.step);
  });
}
