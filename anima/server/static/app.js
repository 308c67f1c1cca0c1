// anima web UI: plain ES modules, no build step, no external assets; talks to the native API (/api).
"use strict";

import { $, $$, api, option, settled, showError, state } from "./js/api.js";
import { initDataURL, loadInitImage, maskDataURL, setupMaskPainting } from "./js/canvas.js";
import { prepareControls, setupControls } from "./js/controls.js";
import { applyModelDefaults, applyPreset, fillForm, payloadFromForm, setSize, setupChoices, syncForm, writeSetting } from "./js/form.js";
import { addToGallery, reloadGallery, setupGallery } from "./js/gallery.js";
import { setupPngInfo } from "./js/pnginfo.js";
import { describePromptHelp, setupPromptHelp } from "./js/prompt_help.js";
import { listen, loadActiveJobs, setupQueue, upsertJob } from "./js/queue.js";
import { planSoon, setupPlan } from "./js/plan.js";
import { setupReference } from "./js/reference.js";
import { setupRegions } from "./js/regions.js";

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
  setupChoices(info);
  setupControls(info);
  $("#banner").textContent = info.notice ?? "";
  $("#banner").hidden = !info.notice;
  describePromptHelp(info.prompt_help);
  $("#negative").value = info.defaults.negative_prompt;
  for (const el of $$("[data-setting]")) writeSetting(el, info.setting_defaults[el.dataset.setting]);
  applyModelDefaults(info.current_model);
  $("#steps").max = info.limits.max_steps;
  $("#batch").max = info.limits.max_batch;
  $("#n-iter").max = info.limits.max_n_iter;
  await loadActiveJobs();
  await reloadGallery();
  listen();
  state.ready = true;
  $("#generate").disabled = false;
  planSoon();
}

function setMode(mode) {
  state.mode = mode;
  $$(".tabs button").forEach((b) => b.classList.toggle("active", b.dataset.mode === mode));
  $$(".tabs button").forEach((b) => b.setAttribute("aria-selected", String(b.dataset.mode === mode)));
  $("#form").hidden = mode === "pnginfo";
  $("#pnginfo").hidden = mode !== "pnginfo";
  $("#image-input").hidden = mode === "txt2img" || mode === "pnginfo";
  $("#mask-tools").hidden = mode !== "inpaint";
  $("#mask-canvas").classList.toggle("off", mode !== "inpaint");
}

/** Queue the form as a job; throws the server's one-line message. */
async function submit() {
  if (!state.ready) throw new Error("the page is still loading");
  await prepareControls();
  const body = payloadFromForm();
  if (state.mode === "img2img" || state.mode === "inpaint") {
    if (!state.initLoaded) throw new Error("choose an init image first");
    body.init_image = initDataURL();
    if (state.mode === "inpaint") {
      if (!$("#mask-canvas").dataset.painted) throw new Error("paint the area to repaint first");
      body.inpaint = { mask: maskDataURL(), blur: Number($("#mask-blur").value) };
    }
  }
  const job = await api("/api/jobs", { method: "POST", body: JSON.stringify(body) });
  state.lastSeed = job.recipe.seed;
  if (!$("#seed-lock").checked) $("#seed").value = "";
  upsertJob(job);
  return job;
}

async function generate() {
  showError("");
  if (!state.ready) return;  // Generate is disabled until then; Ctrl+Enter lands here
  try { await submit(); } catch (e) { showError(e.message); }
}

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

document.addEventListener("DOMContentLoaded", () => {
  $$(".tabs button").forEach((b) => b.addEventListener("click", () => setMode(b.dataset.mode)));
  $("#model").addEventListener("change", () => applyModelDefaults($("#model").value));
  $("#size-preset").addEventListener("change", (e) => {
    const p = state.info.size_presets[e.target.value];
    if (p) setSize(p[0], p[1]);
  });
  $("#form").addEventListener("change", () => { syncForm(); planSoon(); });
  $("#init-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => loadInitImage(reader.result).catch((err) => showError(err.message));
    reader.readAsDataURL(file);
  });
  $("#denoise").addEventListener("input", () => { $("#denoise-value").textContent = $("#denoise").value; });
  $("#seed-random").addEventListener("click", () => { $("#seed").value = Math.floor(Math.random() * 2 ** 32); });
  $("#seed-reuse").addEventListener("click", () => {
    if (state.lastSeed != null) { $("#seed").value = state.lastSeed; $("#seed-lock").checked = true; }
  });
  $("#lora-add").addEventListener("click", () => {
    const name = $("#lora-select").value;
    if (name) { state.loras.push({ name, strength: Number($("#lora-strength").value) }); renderLoras(); }
  });
  $("#preset-turbo").addEventListener("click", () => { applyPreset(state.info.choices.presets.turbo); planSoon(); });
  $("#generate").addEventListener("click", generate);
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { e.preventDefault(); generate(); }
  });
  setupMaskPainting();
  setupPromptHelp();
  setupQueue((job) => addToGallery(job));
  setupGallery(setMode, renderLoras);
  setupPngInfo(setMode, submit);
  setupPlan();
  setupRegions();
  setupReference();
  setMode("txt2img");
  // Test hooks and console aids: what the page would send now; fill the form from a recipe (both
  // resolve once the images they load (control units, reference) are in and previewed).
  window.anima = {
    payload: async () => { await prepareControls(); return payloadFromForm(); },
    fill: (recipe, settings) => { fillForm(recipe, settings); renderLoras(); return settled(); },
  };
  init().catch((e) => { showError(`could not reach the server: ${e.message}`); $("#status").textContent = "offline"; });
});
