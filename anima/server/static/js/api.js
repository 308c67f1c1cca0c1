// The page's shared state, the JSON fetch wrapper, DOM helpers, and image loading (files, the
// server's stored inputs) that a test or a submit can wait for.
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

export function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name ?? "the file"}`));
    reader.readAsDataURL(file);
  });
}

export async function fetchDataURL(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  return readAsDataURL(await res.blob());
}

// The server stores a job's input images as `{job id}-{role}.png` (role: init, mask, reference,
// control{i}-image, control{i}-mask); a recipe records them by path, so the name says where to
// fetch them again (GET /api/jobs/{id}/inputs/{role}).
const STORED = /^([0-9a-f]+)-(init|mask|reference|control\d+-(?:image|mask))\.png$/;

/** The server URL of an image a recipe records, when the server stored it with a job; else null. */
export function storedInputURL(path) {
  const m = STORED.exec(String(path ?? "").split(/[\\/]/).pop());
  return m ? `/api/jobs/${m[1]}/inputs/${m[2]}` : null;
}

const pending = new Set();  // image reads, fetches and previews still running

/** Count `promise` among the loads `settled` waits for; returns it. */
export function track(promise) {
  pending.add(promise);
  promise.finally(() => pending.delete(promise)).catch(() => {});
  return promise;
}

/** Resolves when every load tracked so far (and any they started) has finished. */
export async function settled() {
  while (pending.size) await Promise.allSettled([...pending]);
}
