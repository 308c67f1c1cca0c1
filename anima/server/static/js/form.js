// The form <-> the native API's recipe. Every field maps onto one recipe field or one flat
// setting (`data-setting` = its name in anima.recipe.SETTINGS), so what the page sends is what
// the PNG records and what `anima generate --from-png` re-runs.
"use strict";

import { $, $$, option, state } from "./api.js";
import { controlsFromForm, fillControls } from "./controls.js";
import { fillReference } from "./reference.js";
import { fillRegions, regionsFromForm } from "./regions.js";

const CORE = {
  negative_prompt: "#negative", width: "#width", height: "#height", steps: "#steps", cfg: "#cfg",
  shift: "#shift", sampler: "#sampler", scheduler: "#scheduler", batch_size: "#batch",
};
const NUMERIC = new Set(["width", "height", "steps", "cfg", "shift", "batch_size"]);
const GRID_ROWS = ["X", "Y", "Z"];
const HIRES_START = 1.5;  // the scale a freshly ticked hires fix starts at (1 would be "off")

export function setupChoices(info) {
  for (const el of $$("[data-choices]")) {
    const key = el.dataset.choices;
    const list = key === "samplers" ? info.samplers : key === "schedulers" ? info.schedulers : info.choices[key];
    if (el.dataset.blank) option(el, "", el.dataset.blank);
    list.forEach((v) => option(el, v));
  }
  const rows = $("#grid-axes");
  for (const axis of GRID_ROWS) {
    const row = document.createElement("div");
    row.className = "row grid-axis";
    row.innerHTML = `<label class="inline">${axis} <select aria-label="${axis} axis"></select></label>
      <input type="text" aria-label="${axis} values" placeholder="values">`;
    const select = row.querySelector("select");
    option(select, "", "—");
    info.choices.grid_axes.forEach((name) => option(select, name));
    rows.append(row);
  }
}

function readSetting(el) {
  if (el.type === "checkbox") return el.checked;
  if (el.tagName === "SELECT" || el.type !== "number") return el.value;
  return el.value === "" ? null : Number(el.value);
}

export function writeSetting(el, value) {
  if (el.type === "checkbox") el.checked = value === true || value === "true";
  else el.value = value == null ? "" : String(value);
}

function groupActive(el) {
  const group = el.dataset.group;
  if (group === "hires") return $("#hires-on").checked;
  if (group === "inpaint") return state.mode === "inpaint";
  if (group === "reference") return state.reference !== null;
  return true;
}

/** Flat settings of the form: every setting whose group is on; a blank optional number is left out. */
export function settingsFromForm() {
  const out = {};
  for (const el of $$("[data-setting]")) {
    if (!groupActive(el)) continue;
    const value = readSetting(el);
    if (value !== null) out[el.dataset.setting] = value;
  }
  return out;
}

export function gridFromForm() {
  return $$("#grid-axes .grid-axis")
    .map((row) => [row.querySelector("select").value, row.querySelector("input").value.trim()])
    .filter(([name, values]) => name && values)
    .map(([name, values]) => `${name}=${values}`);
}

/** The body of POST /api/jobs, less the init image and mask (the canvases add those); the control
 *  units' images as they are now (`prepareControls` first waits for loads and previews). */
export function payloadFromForm() {
  const recipe = { prompt: $("#prompt").value, model: $("#model").value };
  for (const [key, sel] of Object.entries(CORE)) recipe[key] = NUMERIC.has(key) ? Number($(sel).value) : $(sel).value;
  recipe.loras = state.loras.map((l) => [l.name, l.strength]);
  recipe.settings = settingsFromForm();
  recipe.grid = gridFromForm();
  recipe.regions = regionsFromForm();
  if ($("#seed").value !== "") recipe.seed = Number($("#seed").value);
  if (state.mode === "img2img" || state.mode === "inpaint") recipe.denoise = Number($("#denoise").value);
  const body = { recipe, n_iter: Number($("#n-iter").value), controls: controlsFromForm() };
  if (state.reference !== null) body.reference_image = state.reference;
  return body;
}

/** Fill the form from a recipe (anima-recipe JSON) and its flat settings (those not default). */
export function fillForm(recipe, settings = {}) {
  $("#prompt").value = recipe.prompt ?? "";
  for (const [key, sel] of Object.entries(CORE)) if (recipe[key] != null) $(sel).value = recipe[key];
  if (recipe.seed != null) $("#seed").value = recipe.seed;
  if (recipe.model && state.info.models.includes(recipe.model)) $("#model").value = recipe.model;
  if (recipe.denoise != null && recipe.denoise < 1) {
    $("#denoise").value = recipe.denoise;
    $("#denoise-value").textContent = $("#denoise").value;
  }
  state.loras = (recipe.loras || []).map(([name, strength]) => ({ name, strength }));
  const all = { ...state.info.setting_defaults, ...settings };
  for (const el of $$("[data-setting]")) writeSetting(el, all[el.dataset.setting]);
  $("#hires-on").checked = Number(all.hires_scale) !== 1;
  fillRegions(recipe.regions);
  fillControls(recipe.controls);
  fillReference(settings.reference_image);
  const axes = recipe.grid || [];
  $$("#grid-axes .grid-axis").forEach((row, i) => {
    row.querySelector("select").value = axes[i]?.name ?? "";
    row.querySelector("input").value = axes[i] ? axes[i].values.map((v) => (/[,"]/.test(v) ? `"${v}"` : v)).join(",") : "";
  });
  syncForm();
}

/** A model's own defaults (the demo's size and steps, a turbo file's CFG 1): what a first click runs. */
export function applyModelDefaults(name) {
  const info = state.info;
  const own = info.model_info.find((m) => m.name === name)?.defaults ?? {};
  const merged = { ...info.defaults, ...own };
  for (const [key, sel] of Object.entries(CORE)) if (merged[key] != null) $(sel).value = merged[key];
  // Settings some model's defaults change (NAG for turbo) go back to the default on other models.
  const touched = new Set(info.model_info.flatMap((m) => Object.keys(m.defaults)));
  for (const el of $$("[data-setting]")) {
    const key = el.dataset.setting;
    if (touched.has(key)) writeSetting(el, key in own ? own[key] : info.setting_defaults[key]);
  }
  syncForm();
}

/** Apply a named preset (recipe fields and settings), as `anima generate --preset` does. */
export function applyPreset(values) {
  for (const [key, value] of Object.entries(values)) {
    if (CORE[key]) $(CORE[key]).value = value;
    const el = document.querySelector(`[data-setting="${key}"]`);
    if (el) writeSetting(el, value);
  }
  syncForm();
}

/** Show what applies: the guidance variant's own parameters, the hires fields when it is on. */
export function syncForm() {
  const kind = $("#guidance").value;
  $$("[data-guidance]").forEach((el) => { el.hidden = el.dataset.guidance !== kind; });
  const on = $("#hires-on").checked;
  if (on && !(Number($("#hires-scale").value) > 1)) $("#hires-scale").value = HIRES_START;
  $$('[data-group="hires"]').forEach((el) => { el.disabled = !on; });
  $("#hires-badge").hidden = !on;
  const preset = Object.entries(state.info?.size_presets ?? {})
    .find(([, [w, h]]) => w === Number($("#width").value) && h === Number($("#height").value));
  $("#size-preset").value = preset ? preset[0] : "";
}

export function setSize(w, h) {
  $("#width").value = w;
  $("#height").value = h;
  syncForm();
}
