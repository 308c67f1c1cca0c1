// The init image and the mask painter (white strokes = repaint), for img2img and inpaint.
"use strict";

import { $, state } from "./api.js";
import { setSize } from "./form.js";

const SIZE_MULTIPLE = 8;  // the engine takes any multiple of 8 (anima.recipe.SIZE_MULTIPLE)

export function loadInitImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const w = Math.max(16, Math.round(img.naturalWidth / SIZE_MULTIPLE) * SIZE_MULTIPLE);
      const h = Math.max(16, Math.round(img.naturalHeight / SIZE_MULTIPLE) * SIZE_MULTIPLE);
      for (const c of [$("#init-canvas"), $("#mask-canvas")]) { c.width = w; c.height = h; }
      $("#init-canvas").getContext("2d").drawImage(img, 0, 0, w, h);
      delete $("#mask-canvas").dataset.painted;
      setSize(w, h);
      state.initLoaded = true;
      resolve();
    };
    img.onerror = () => reject(new Error("could not read that image"));
    img.src = src;
  });
}

export function setupMaskPainting() {
  const canvas = $("#mask-canvas");
  const ctx = canvas.getContext("2d");
  let drawing = false;
  let last = null;
  const pos = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  const paint = (p) => {
    const r = canvas.getBoundingClientRect();
    ctx.strokeStyle = ctx.fillStyle = "#fff";
    ctx.lineCap = "round";
    ctx.lineWidth = +$("#brush").value * canvas.width / Math.max(1, r.width);
    ctx.beginPath();
    ctx.moveTo(...(last || p));
    ctx.lineTo(...p);
    ctx.stroke();
    last = p;
    canvas.dataset.painted = "1";
  };
  canvas.addEventListener("pointerdown", (e) => { drawing = true; last = null; canvas.setPointerCapture(e.pointerId); paint(pos(e)); });
  canvas.addEventListener("pointermove", (e) => { if (drawing) paint(pos(e)); });
  const stop = () => { drawing = false; last = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
  $("#mask-clear").addEventListener("click", () => { ctx.clearRect(0, 0, canvas.width, canvas.height); delete canvas.dataset.painted; });
}

export function maskDataURL() {
  const src = $("#mask-canvas");
  const out = document.createElement("canvas");
  out.width = src.width;
  out.height = src.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(src, 0, 0);
  return out.toDataURL("image/png");
}

export function initDataURL() {
  return $("#init-canvas").toDataURL("image/png");
}
