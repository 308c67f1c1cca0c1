// PNG info: choose or drop an image; the server reads its recipe (anima JSON, an A1111/Forge
// infotext or a ComfyUI graph); one click fills the form or queues it again.
"use strict";

import { $, api, readAsDataURL, showError } from "./api.js";
import { loadInitImage } from "./canvas.js";
import { fillForm } from "./form.js";

let current = null;  // the /api/png-recipe answer
let setMode = () => {};
let submit = async () => {};

export async function showPngInfo(file) {
  setMode("pnginfo");
  current = null;
  $("#png-fill").disabled = $("#png-run").disabled = true;
  $("#png-params").textContent = "";
  $("#png-problem").textContent = "";
  $("#png-format").textContent = `reading ${file.name}…`;
  const image = await readAsDataURL(file);
  $("#png-image").src = image;
  $("#png-image").hidden = false;
  try {
    current = await api("/api/png-recipe", { method: "POST", body: JSON.stringify({ image }) });
  } catch (e) {
    $("#png-format").textContent = "";
    $("#png-problem").textContent = e.message;
    return;
  }
  const { recipe, settings } = current;
  $("#png-format").textContent = `${current.format} metadata`;
  const shown = { ...recipe };
  delete shown.format;
  $("#png-params").textContent = JSON.stringify({ ...shown, settings }, null, 2);
  $("#png-problem").textContent = current.problem ?? "";
  $("#png-fill").disabled = false;
  $("#png-run").disabled = !current.runnable;
}

export function setupPngInfo(setModeFn, submitFn) {
  setMode = setModeFn;
  submit = submitFn;
  $("#png-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) showPngInfo(file).catch((err) => { $("#png-problem").textContent = err.message; });
  });
  // Drop an image anywhere on the page: its parameters open in the PNG info tab (as in Forge).
  document.addEventListener("dragover", (e) => { if (e.dataTransfer?.types.includes("Files")) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    const file = e.dataTransfer?.files?.[0];
    if (!file) return;
    e.preventDefault();
    if (e.target.closest?.("#image-input")) {  // onto the init image: use it as one
      readAsDataURL(file).then(loadInitImage).catch((err) => showError(err.message));
      return;
    }
    showPngInfo(file).catch((err) => { $("#png-problem").textContent = err.message; });
  });
  $("#png-fill").addEventListener("click", () => {
    fillForm(current.recipe, current.settings);
    $("#seed-lock").checked = true;
    setMode("txt2img");
  });
  $("#png-run").addEventListener("click", async () => {
    fillForm(current.recipe, current.settings);
    $("#seed-lock").checked = true;
    setMode("txt2img");
    try { await submit(); } catch (e) { showError(e.message); }
  });
}
