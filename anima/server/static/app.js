// anima web UI: plain JS, no build step, no external assets. Talks to the native API (/api).
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { mode: "txt2img", info: null, loras: [], lastSeed: null, jobs: new Map(), initLoaded: false };

async function api(path, options = {}) {
  const res = await fetch(path, { headers: { "Content-Type": "application/json" }, ...options });
  const body = res.headers.get("content-type")?.includes("json") ? await res.json() : null;
  if (!res.ok) {
    const detail = body && body.detail;
    const msg = typeof detail === "string" ? detail
      : Array.isArray(detail) ? detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("\n")
      : `HTTP ${res.status}`;
    throw new Error(msg);
  }
  return body;
}

function option(select, value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label ?? value;
  select.append(o);
}

// ------------------------------------------------------------------ setup
async function init() {
  const info = await api("/api/info");
  state.info = info;
  info.models.forEach((m) => option($("#model"), m));
  $("#model").value = info.current_model;
  info.samplers.forEach((s) => option($("#sampler"), s));
  info.schedulers.forEach((s) => option($("#scheduler"), s));
  for (const [name, [w, h]] of Object.entries(info.size_presets)) option($("#size-preset"), name, `${name} ${w}x${h}`);
  if (info.loras.length) {
    $("#lora-select").innerHTML = "";
    info.loras.forEach((l) => option($("#lora-select"), l));
  }
  const d = info.defaults;
  $("#negative").value = d.negative_prompt;
  $("#sampler").value = d.sampler;
  $("#scheduler").value = d.scheduler;
  $("#steps").value = d.steps;
  $("#cfg").value = d.cfg;
  $("#shift").value = d.shift;
  setSize(d.width, d.height);
  $("#steps").max = info.limits.max_steps;
  $("#batch").max = info.limits.max_batch;
  $("#n-iter").max = info.limits.max_n_iter;
  await loadJobs();
  listen();
}

function setSize(w, h) {
  $("#width").value = w;
  $("#height").value = h;
  const preset = Object.entries(state.info.size_presets).find(([, [pw, ph]]) => pw === +w && ph === +h);
  $("#size-preset").value = preset ? preset[0] : "";
}

// ------------------------------------------------------------------ mode tabs and the init/mask canvases
function setMode(mode) {
  state.mode = mode;
  document.querySelectorAll(".tabs button").forEach((b) => b.classList.toggle("active", b.dataset.mode === mode));
  $("#image-input").hidden = mode === "txt2img";
  $("#mask-tools").hidden = mode !== "inpaint";
  $("#mask-canvas").classList.toggle("off", mode !== "inpaint");
}

function loadInitImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const w = Math.max(16, Math.round(img.naturalWidth / 16) * 16);
      const h = Math.max(16, Math.round(img.naturalHeight / 16) * 16);
      for (const c of [$("#init-canvas"), $("#mask-canvas")]) { c.width = w; c.height = h; }
      $("#init-canvas").getContext("2d").drawImage(img, 0, 0, w, h);
      setSize(w, h);
      state.initLoaded = true;
      resolve();
    };
    img.onerror = () => reject(new Error("could not read that image"));
    img.src = src;
  });
}

function setupMaskPainting() {
  const canvas = $("#mask-canvas");
  const ctx = canvas.getContext("2d");
  let drawing = false;
  let last = null;
  const pos = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  const paint = (p) => {
    const r = canvas.getBoundingClientRect();
    ctx.strokeStyle = ctx.fillStyle = "#fff";
    ctx.lineCap = "round";
    ctx.lineWidth = +$("#brush").value * canvas.width / Math.max(1, r.width);
    ctx.beginPath();
    ctx.moveTo(...(last || p));
    ctx.lineTo(...p);
    ctx.stroke();
    last = p;
    canvas.dataset.painted = "1";
  };
  canvas.addEventListener("pointerdown", (e) => { drawing = true; last = null; canvas.setPointerCapture(e.pointerId); paint(pos(e)); });
  canvas.addEventListener("pointermove", (e) => { if (drawing) paint(pos(e)); });
  const stop = () => { drawing = false; last = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  $("#mask-clear").addEventListener("click", () => { ctx.clearRect(0, 0, canvas.width, canvas.height); delete canvas.dataset.painted; });
}

function maskDataURL() {
  // White strokes on transparent -> a black/white mask (white = repaint).
  const src = $("#mask-canvas");
  const out = document.createElement("canvas");
  out.width = src.width;
  out.height = src.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(src, 0, 0);
  return out.toDataURL("image/png");
}

// ------------------------------------------------------------------ generate
function recipeFromForm() {
  const r = {
    prompt: $("#prompt").value,
    negative_prompt: $("#negative").value,
    width: +$("#width").value, height: +$("#height").value,
    steps: +$("#steps").value, cfg: +$("#cfg").value, shift: +$("#shift").value,
    sampler: $("#sampler").value, scheduler: $("#scheduler").value,
    batch_size: +$("#batch").value, model: $("#model").value,
    loras: state.loras.map((l) => [l.name, l.strength]),
  };
  if ($("#seed").value !== "") r.seed = +$("#seed").value;
  if (state.mode !== "txt2img") r.denoise = +$("#denoise").value;
  return r;
}

async function generate() {
  $("#error").textContent = "";
  const body = { recipe: recipeFromForm(), n_iter: +$("#n-iter").value };
  if (state.mode !== "txt2img") {
    if (!state.initLoaded) { $("#error").textContent = "choose an init image first"; return; }
    body.init_image = $("#init-canvas").toDataURL("image/png");
    if (state.mode === "inpaint") {
      if (!$("#mask-canvas").dataset.painted) { $("#error").textContent = "paint the area to repaint first"; return; }
      body.inpaint = { mask: maskDataURL(), blur: +$("#mask-blur").value };
    }
  }
  try {
    const job = await api("/api/jobs", { method: "POST", body: JSON.stringify(body) });
    state.lastSeed = job.recipe.seed;
    if (!$("#seed-lock").checked) $("#seed").value = "";
    upsertJob(job);
  } catch (e) {
    $("#error").textContent = e.message;
  }
}

// ------------------------------------------------------------------ queue panel
function queueItem(job) {
  let li = document.querySelector(`#queue-list li[data-id="${job.id}"]`);
  if (!li) {
    li = document.createElement("li");
    li.dataset.id = job.id;
    li.innerHTML = `<img class="preview" alt="">
      <div class="title"></div>
      <div><progress max="100" value="0"></progress> <span class="pct">0%</span></div>
      <div><span class="state"></span> <button type="button" class="cancel small">cancel</button></div>`;
    li.querySelector(".title").textContent = job.recipe.prompt || "(empty prompt)";
    li.querySelector(".cancel").addEventListener("click", () => cancelJob(job.id));
    $("#queue-list").prepend(li);
  }
  return li;
}

function setProgress(li, fraction) {
  const pct = Math.round(fraction * 100);
  li.querySelector("progress").value = pct;
  li.querySelector(".pct").textContent = `${pct}%`;
}

const RANK = { queued: 0, running: 1 };  // anything else is final
const rank = (status) => RANK[status] ?? 2;

function upsertJob(job) {
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
    setProgress(li, 1);
    if (job.urls.length) li.querySelector(".preview").src = job.urls[job.urls.length - 1];
    addToGallery(job);
  }
  updateStatus();
}

async function cancelJob(id) {
  try { upsertJob(await api(`/api/jobs/${id}`, { method: "DELETE" })); } catch (e) { $("#error").textContent = e.message; }
}

function updateStatus() {
  const active = [...state.jobs.values()].filter((j) => ["queued", "running"].includes(j.status)).length;
  $("#status").textContent = active ? `${active} job(s) active` : "idle";
}

// ------------------------------------------------------------------ gallery and recipe dialog
function addToGallery(job) {
  job.urls.forEach((url, i) => {
    if (document.querySelector(`#gallery-grid figure[data-url="${CSS.escape(url)}"]`)) return;
    const fig = document.createElement("figure");
    fig.dataset.url = url;
    fig.dataset.job = job.id;
    fig.innerHTML = `<img alt="" loading="lazy"><figcaption></figcaption>`;
    fig.querySelector("img").src = url;
    fig.querySelector("figcaption").textContent = `${job.kind} · seed ${job.recipe.seed + Math.floor(i / job.recipe.batch_size)}`;
    fig.addEventListener("click", () => openRecipe(job, url, i));
    $("#gallery-grid").prepend(fig);
  });
}

let dialogJob = null;
function openRecipe(job, url, index) {
  const recipe = { ...job.recipe, seed: job.recipe.seed + Math.floor(index / job.recipe.batch_size) };
  dialogJob = { job, url, recipe };
  $("#recipe-image").src = url;
  $("#recipe-text").textContent = JSON.stringify(recipe, null, 2);
  $("#recipe-dialog").showModal();
}

function reuse(recipe) {
  $("#prompt").value = recipe.prompt;
  $("#negative").value = recipe.negative_prompt;
  for (const [id, key] of [["steps", "steps"], ["cfg", "cfg"], ["shift", "shift"], ["batch", "batch_size"], ["seed", "seed"]]) {
    $(`#${id}`).value = recipe[key];
  }
  $("#sampler").value = recipe.sampler;
  $("#scheduler").value = recipe.scheduler;
  if (recipe.model && state.info.models.includes(recipe.model)) $("#model").value = recipe.model;
  if (recipe.denoise < 1) $("#denoise").value = recipe.denoise;
  $("#denoise-value").textContent = $("#denoise").value;
  setSize(recipe.width, recipe.height);
  $("#seed-lock").checked = true;
  state.loras = (recipe.loras || []).map(([name, strength]) => ({ name, strength }));
  renderLoras();
}

// ------------------------------------------------------------------ LoRAs
function renderLoras() {
  const ul = $("#lora-list");
  ul.innerHTML = "";
  state.loras.forEach((l, i) => {
    const li = document.createElement("li");
    li.innerHTML = `<span></span><button type="button" class="small">remove</button>`;
    li.querySelector("span").textContent = `${l.name} : ${l.strength}`;
    li.querySelector("button").addEventListener("click", () => { state.loras.splice(i, 1); renderLoras(); });
    ul.append(li);
  });
}

// ------------------------------------------------------------------ history and live events
async function loadJobs() {
  const active = await api("/api/jobs?status=active&limit=200");
  active.items.reverse().forEach(upsertJob);
  const done = await api("/api/jobs?status=done&limit=60");
  done.items.reverse().forEach((job) => { state.jobs.set(job.id, job); addToGallery(job); });
  updateStatus();
}

function listen() {
  const es = new EventSource("/api/events");
  es.addEventListener("job", (e) => {
    const job = JSON.parse(e.data);
    if (job.status === "deleted") return;
    upsertJob(job);
  });
  es.addEventListener("progress", (e) => {
    const p = JSON.parse(e.data);
    const li = document.querySelector(`#queue-list li[data-id="${p.id}"]`);
    if (li) setProgress(li, p.progress);
  });
  es.addEventListener("preview", (e) => {
    const p = JSON.parse(e.data);
    const li = document.querySelector(`#queue-list li[data-id="${p.id}"]`);
    if (li) li.querySelector(".preview").src = `/api/jobs/${p.id}/preview?step=${p.step}`;
  });
}

// ------------------------------------------------------------------ wiring
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll(".tabs button").forEach((b) => b.addEventListener("click", () => setMode(b.dataset.mode)));
  $("#size-preset").addEventListener("change", (e) => {
    const p = state.info.size_presets[e.target.value];
    if (p) setSize(p[0], p[1]);
  });
  for (const id of ["#width", "#height"]) $(id).addEventListener("change", () => setSize($("#width").value, $("#height").value));
  $("#init-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => loadInitImage(reader.result).catch((err) => { $("#error").textContent = err.message; });
    reader.readAsDataURL(file);
  });
  $("#denoise").addEventListener("input", () => { $("#denoise-value").textContent = $("#denoise").value; });
  $("#seed-random").addEventListener("click", () => { $("#seed").value = Math.floor(Math.random() * 2 ** 32); });
  $("#seed-reuse").addEventListener("click", () => {
    if (state.lastSeed != null) { $("#seed").value = state.lastSeed; $("#seed-lock").checked = true; }
  });
  $("#lora-add").addEventListener("click", () => {
    const name = $("#lora-select").value;
    if (name) { state.loras.push({ name, strength: +$("#lora-strength").value }); renderLoras(); }
  });
  $("#generate").addEventListener("click", generate);
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); generate(); }
  });
  $("#clear-finished").addEventListener("click", () => {
    document.querySelectorAll("#queue-list li").forEach((li) => {
      if (!["queued", "running"].includes(li.dataset.status)) li.remove();
    });
  });
  $("#reuse").addEventListener("click", () => { reuse(dialogJob.recipe); $("#recipe-dialog").close(); });
  $("#use-as-init").addEventListener("click", async () => {
    await loadInitImage(dialogJob.url);
    setMode("img2img");
    $("#recipe-dialog").close();
  });
  $("#dialog-close").addEventListener("click", () => $("#recipe-dialog").close());
  setupMaskPainting();
  setMode("txt2img");
  init().catch((e) => { $("#error").textContent = `could not reach the server: ${e.message}`; });
});
