// The gallery: finished jobs from the server's history (it survives restarts), filtered by prompt
// text, each image's recipe and settings in a dialog, reuse / send to img2img / send to inpaint.
"use strict";

import { $, api, debounce, state } from "./api.js";
import { loadInitImage } from "./canvas.js";
import { fillForm } from "./form.js";

const PAGE = 60;
let loaded = 0;
let filter = "";
let dialogItem = null;
let setMode = () => {};
let renderLoras = () => {};

function seedOf(job, index) {
  return job.recipe.seed + Math.floor(index / job.recipe.batch_size);
}

function matches(job) {
  if (!filter) return true;
  const text = `${job.recipe.prompt}\n${job.recipe.negative_prompt}`.toLowerCase();
  return text.includes(filter.toLowerCase());
}

export function addToGallery(job, { append = false } = {}) {
  if (!matches(job)) return;
  job.urls.forEach((url, i) => {
    if (document.querySelector(`#gallery-grid figure[data-url="${CSS.escape(url)}"]`)) return;
    const fig = document.createElement("figure");
    fig.dataset.url = url;
    fig.dataset.job = job.id;
    fig.innerHTML = `<img alt="" loading="lazy"><figcaption></figcaption>`;
    fig.querySelector("img").src = url;
    fig.querySelector("img").alt = job.recipe.prompt || "generated image";
    const size = `${job.recipe.width}x${job.recipe.height}`;
    fig.querySelector("figcaption").textContent = job.kind === "grid"
      ? `grid · ${job.recipe.grid.map((a) => a.name).join(" × ")}`
      : `${job.kind} · seed ${seedOf(job, i)} · ${size}`;
    fig.title = job.recipe.prompt;
    fig.addEventListener("click", () => openRecipe(job, url, i));
    if (append) $("#gallery-grid").append(fig); else $("#gallery-grid").prepend(fig);
  });
}

async function loadPage() {
  const q = filter ? `&q=${encodeURIComponent(filter)}` : "";
  const page = await api(`/api/jobs?status=done&limit=${PAGE}&offset=${loaded}${q}`);
  page.items.forEach((job) => { if (!state.jobs.has(job.id)) state.jobs.set(job.id, job); addToGallery(job, { append: true }); });
  loaded += page.items.length;
  $("#gallery-more").hidden = loaded >= page.total;
}

export async function reloadGallery() {
  $("#gallery-grid").innerHTML = "";
  loaded = 0;
  await loadPage();
}

function openRecipe(job, url, index) {
  const recipe = { ...job.recipe, seed: seedOf(job, index) };
  dialogItem = { job, url, recipe };
  $("#recipe-image").src = url;
  $("#recipe-text").textContent = JSON.stringify(recipe, null, 2);
  $("#recipe-settings").textContent = Object.keys(job.settings).length ? JSON.stringify(job.settings, null, 2) : "(defaults)";
  $("#recipe-notes").textContent = [job.outputs[index] ?? "", ...job.notes].filter(Boolean).join(" · ");
  $("#recipe-dialog").showModal();
}

async function sendTo(mode) {
  await loadInitImage(dialogItem.url);
  setMode(mode);
  $("#recipe-dialog").close();
}

export function setupGallery(setModeFn, renderLorasFn) {
  setMode = setModeFn;
  renderLoras = renderLorasFn;
  $("#gallery-filter").addEventListener("input", debounce(() => {
    filter = $("#gallery-filter").value.trim();
    reloadGallery();
  }, 250));
  $("#gallery-more").addEventListener("click", loadPage);
  $("#reuse").addEventListener("click", () => {
    fillForm(dialogItem.recipe, dialogItem.job.settings);
    $("#seed-lock").checked = true;
    renderLoras();
    $("#recipe-dialog").close();
  });
  $("#use-as-init").addEventListener("click", () => sendTo("img2img"));
  $("#send-inpaint").addEventListener("click", () => sendTo("inpaint"));
  $("#dialog-close").addEventListener("click", () => $("#recipe-dialog").close());
}
