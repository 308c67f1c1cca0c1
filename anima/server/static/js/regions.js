// Regional prompts: rows of (prompt, rectangle in fractions of the image), sent as recipe.regions.
"use strict";

import { $, $$ } from "./api.js";

const SPLITS = {
  columns: [[0, 0, 0.5, 1], [0.5, 0, 1, 1]],
  rows: [[0, 0, 1, 0.5], [0, 0.5, 1, 1]],
};

function addRow(prompt = "", rect = [0, 0, 1, 1]) {
  const row = document.createElement("div");
  row.className = "region row";
  row.innerHTML = `<input type="text" class="region-prompt" aria-label="region prompt" placeholder="region prompt">
    ${["x0", "y0", "x1", "y1"].map((k) => `<input type="number" class="region-${k}" aria-label="${k}" min="0" max="1" step="0.05">`).join("")}
    <button type="button" class="small region-remove" aria-label="remove region">×</button>`;
  row.querySelector(".region-prompt").value = prompt;
  ["x0", "y0", "x1", "y1"].forEach((k, i) => { row.querySelector(`.region-${k}`).value = rect[i]; });
  row.querySelector(".region-remove").addEventListener("click", () => { row.remove(); sync(); });
  $("#region-list").append(row);
  sync();
}

function sync() {
  $("#regions-badge").hidden = $$("#region-list .region").length === 0;
}

export function regionsFromForm() {
  return $$("#region-list .region").map((row) => ({
    prompt: row.querySelector(".region-prompt").value,
    rect: ["x0", "y0", "x1", "y1"].map((k) => Number(row.querySelector(`.region-${k}`).value)),
  }));
}

export function fillRegions(regions = []) {
  $("#region-list").innerHTML = "";
  for (const r of regions) if (r.rect && r.rect.length === 4) addRow(r.prompt, r.rect);
  sync();
}

export function setupRegions() {
  $("#region-add").addEventListener("click", () => addRow());
  for (const [id, split] of [["#region-columns", "columns"], ["#region-rows", "rows"]]) {
    $(id).addEventListener("click", () => {
      const prompts = regionsFromForm().map((r) => r.prompt);
      fillRegions(SPLITS[split].map((rect, i) => ({ prompt: prompts[i] ?? "", rect })));
    });
  }
}
