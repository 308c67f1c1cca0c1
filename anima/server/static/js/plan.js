// The hires fix's pass plan, shown before running: the server plans it as the job would.
"use strict";

import { $, api, debounce, state } from "./api.js";
import { settingsFromForm } from "./form.js";

export const planSoon = debounce(async () => {
  const out = $("#hires-plan");
  if (!state.ready || !$("#hires-on").checked) { out.textContent = ""; return; }
  const body = { width: Number($("#width").value), height: Number($("#height").value), settings: settingsFromForm() };
  try {
    const plan = await api("/api/plan", { method: "POST", body: JSON.stringify(body) });
    out.textContent = plan.description;
    out.dataset.final = plan.sizes.at(-1).join("x");
    out.classList.remove("error");
  } catch (e) {
    out.textContent = e.message;
    out.dataset.final = "";
    out.classList.add("error");
  }
}, 200);

export function setupPlan() {
  for (const id of ["#width", "#height"]) $(id).addEventListener("input", planSoon);
  $("#wf-hires").addEventListener("input", planSoon);
}
