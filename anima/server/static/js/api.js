// The page's shared state, the JSON fetch wrapper and two DOM helpers.
"use strict";

export const $ = (sel) => document.querySelector(sel);
export const $$ = (sel) => [...document.querySelectorAll(sel)];

// info: /api/info; ready: info loaded (Generate stays disabled before, so nothing is sent half-set).
export const state = {
  mode: "txt2img", info: null, ready: false, loras: [], lastSeed: null, jobs: new Map(), initLoaded: false,
  reference: null,  // data URL of the reference image (reference editing), or null
};

export async function api(path, options = {}) {
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

export function option(select, value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label ?? value;
  select.append(o);
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

export function showError(message) {
  $("#error").textContent = message;
}
