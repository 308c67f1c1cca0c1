// The reference image (reference editing): chosen from a file, or, when the form is filled from a
// recipe, fetched back from the server that stored it with the job.
"use strict";

import { $, fetchDataURL, readAsDataURL, showError, state, storedInputURL, track } from "./api.js";

let token = null;  // the latest load: an older one that finishes later is dropped

export function setReference(dataURL) {
  token = null;
  state.reference = dataURL;
  $("#reference-preview").hidden = dataURL === null;
  if (dataURL !== null) $("#reference-preview").src = dataURL;
  $("#reference-badge").hidden = dataURL === null;
}

function load(promise) {
  const mine = {};
  token = mine;
  return track(promise.then((url) => { if (token === mine) setReference(url); }));
}

/** The recipe's reference image (its `reference_image` setting, a path the server stored), or none. */
export function fillReference(path) {
  $("#reference-file").value = "";
  setReference(null);
  if (!path) return;
  const url = storedInputURL(path);
  const missing = `the reference image ${String(path).split(/[\\/]/).pop()} is not on this server; choose it again`;
  if (url === null) { showError(missing); return; }
  load(fetchDataURL(url)).catch(() => showError(missing));
}

export function setupReference() {
  $("#reference-file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) load(readAsDataURL(file)).catch((err) => showError(err.message));
  });
  $("#reference-clear").addEventListener("click", () => { $("#reference-file").value = ""; setReference(null); });
}
