// ControlNet-LLLite units (like Forge's ControlNet units): per unit a patch, a control image that
// a preprocessor may turn into another first (previewed through /api/preprocess), an optional
// inpainting mask, strength and the start / end window; sent as the job's `controls`, exactly as
// the native API's JobCreate takes them. Filling from a recipe fetches the images the server stored
// with the job (/api/jobs/{id}/inputs/control{i}-image).
"use strict";

import { $, api, fetchDataURL, option, readAsDataURL, settled, storedInputURL, track } from "./api.js";

export const MAX_UNITS = 3;

// Per unit: source (data URL of the chosen image), processed ({kind, image} from /api/preprocess),
// mask (data URL). The form's fields hold the rest.
const units = [];

function show(img, src) {
  img.hidden = src == null;
  if (src != null) img.src = src; else img.removeAttribute("src");
}

function field(i, name) {
  return units[i].el.querySelector(`[data-control="${name}"]`);
}

function note(i, text) {
  units[i].el.querySelector(".control-note").textContent = text;
}

// Each image slot keeps the token of its latest load: an older load that finishes later is dropped.
function begin(i, slot) {
  const token = {};
  units[i][slot] = token;
  return () => units[i][slot] === token;
}

function setSource(i, dataURL) {
  begin(i, "sourceLoad");
  units[i].source = dataURL;
  units[i].processed = null;
  show(units[i].el.querySelector(".control-source"), dataURL);
  show(units[i].el.querySelector(".control-result"), null);
}

function setMask(i, dataURL) {
  begin(i, "maskLoad");
  units[i].mask = dataURL;
  show(units[i].el.querySelector(".control-mask-preview"), dataURL);
  if (dataURL == null) field(i, "mask").value = "";
}

/** Run unit i's preprocessor on its image (once per image and kind) and show the result. */
function preview(i) {
  const u = units[i];
  const kind = field(i, "preprocessor").value;
  if (!u.source || kind === "none" || u.processed?.kind === kind) {
    show(u.el.querySelector(".control-result"), kind === "none" ? null : u.processed?.image);
    return Promise.resolve();
  }
  note(i, `preprocessing (${kind})…`);
  const source = u.source;
  return track(api("/api/preprocess", { method: "POST", body: JSON.stringify({ kind, image: source }) })
    .then((r) => {
      if (u.source !== source || field(i, "preprocessor").value !== kind) return;  // changed meanwhile
      u.processed = { kind, image: r.image };
      show(u.el.querySelector(".control-result"), r.image);
      note(i, "");
    })
    .catch((e) => { note(i, e.message); throw new Error(`ControlNet unit ${i + 1}: ${e.message}`); }));
}

/** The badge; a unit shows once the one before it is on (or it is on itself), as an "add unit". */
function sync() {
  const on = units.map((_, i) => field(i, "enabled").checked);
  units.forEach((u, i) => { u.el.hidden = i > 0 && !on[i - 1] && !on[i]; });
  $("#control-badge").hidden = !on.some(Boolean);
}

export function setupControls(info) {
  const list = $("#control-units");
  list.innerHTML = "";
  units.length = 0;
  for (let i = 0; i < MAX_UNITS; i++) {
    const el = $("#control-unit-template").content.firstElementChild.cloneNode(true);
    el.dataset.unit = String(i);
    el.setAttribute("aria-label", `ControlNet unit ${i + 1}`);
    el.querySelector(".control-title").textContent = `Unit ${i + 1}`;
    list.append(el);
    units.push({ el, source: null, processed: null, mask: null, sourceLoad: null, maskLoad: null });
    const model = field(i, "model");
    if (!info.control_models.length) option(model, "", "(none found)");
    info.control_models.forEach((m) => option(model, m));
    info.control_preprocessors.forEach((p) => option(field(i, "preprocessor"), p));
    field(i, "enabled").addEventListener("change", sync);
    field(i, "image").addEventListener("change", (e) => {
      const file = e.target.files[0];
      if (!file) return;
      note(i, "");
      const current = begin(i, "sourceLoad");
      track(readAsDataURL(file).then((url) => {
        if (!current()) return;
        setSource(i, url);
        field(i, "enabled").checked = true;  // choosing an image turns the unit on, as in Forge
        sync();
      }).catch((err) => note(i, err.message)));
    });
    field(i, "preprocessor").addEventListener("change", () => {
      show(el.querySelector(".control-result"), null);
      if (units[i].processed?.kind !== field(i, "preprocessor").value) units[i].processed = null;
    });
    field(i, "preview").addEventListener("click", () => { preview(i).catch(() => {}); });
    field(i, "mask").addEventListener("change", (e) => {
      const file = e.target.files[0];
      if (!file) return;
      const current = begin(i, "maskLoad");
      track(readAsDataURL(file).then((url) => { if (current()) setMask(i, url); }).catch((err) => note(i, err.message)));
    });
    field(i, "mask-clear").addEventListener("click", () => setMask(i, null));
  }
  sync();
}

/** Before a payload is taken: the loads have finished and every enabled unit is preprocessed. */
export async function prepareControls() {
  await settled();
  for (let i = 0; i < units.length; i++) if (field(i, "enabled").checked) await preview(i);
}

/** The job's `controls`: the enabled units, in order. Throws a one-line message for a unit that
 *  cannot be sent yet (no model, no image). */
export function controlsFromForm() {
  const out = [];
  units.forEach((u, i) => {
    if (!field(i, "enabled").checked) return;
    const where = `ControlNet unit ${i + 1}`;
    const model = field(i, "model").value;
    const kind = field(i, "preprocessor").value;
    if (!model) throw new Error(`${where}: choose a control model (none found in the server's model_patches)`);
    if (!u.source) throw new Error(`${where}: choose a control image`);
    const image = kind === "none" ? u.source : u.processed?.kind === kind ? u.processed.image : null;
    if (image === null) throw new Error(`${where}: the ${kind} preview is not ready`);
    const unit = {
      model, image, strength: Number(field(i, "strength").value),
      start: Number(field(i, "start").value), end: Number(field(i, "end").value),
    };
    if (u.mask) unit.mask = u.mask;
    out.push(unit);
  });
  return out;
}

function patchName(model) {
  // A recipe made by the CLI may name the patch by path: the server knows it by its file stem.
  return model.split(/[\\/]/).pop().replace(/\.safetensors$/i, "");
}

function load(i, path, slot, what, apply) {
  if (!path) return;
  const url = storedInputURL(path);
  const missing = `the ${what} ${path.split(/[\\/]/).pop()} is not on this server; choose it again`;
  if (url === null) { note(i, missing); return; }
  const current = begin(i, slot);
  track(fetchDataURL(url).then((data) => { if (current()) apply(data); }).catch(() => note(i, missing)));
}

/** Fill the units from a recipe's `controls` (the images: as the server stored them, already
 *  preprocessed, so the preprocessor goes back to none). */
export function fillControls(controls = []) {
  units.forEach((u, i) => {
    const c = controls[i];
    setSource(i, null);
    setMask(i, null);
    note(i, "");
    field(i, "image").value = "";
    field(i, "enabled").checked = Boolean(c);
    field(i, "preprocessor").value = "none";
    field(i, "strength").value = c?.strength ?? 1;
    field(i, "start").value = c?.start ?? 0;
    field(i, "end").value = c?.end ?? 1;
    if (!c) return;
    const model = field(i, "model");
    const name = patchName(c.model);
    if (![...model.options].some((o) => o.value === name)) option(model, name, `${name} (not on this server)`);
    model.value = name;
    load(i, c.image, "sourceLoad", "control image", (url) => setSource(i, url));
    load(i, c.mask, "maskLoad", "control mask", (url) => setMask(i, url));
  });
  if (controls.length > units.length) note(0, `only the first ${units.length} of ${controls.length} units are shown`);
  sync();
}
