// Help while typing the prompt: completions (`@` + 2 letters: artist names from the server's
// --artists list; otherwise tags from its --tags CSV), the linter's findings under the prompt,
// and the model card's quality tags one click away.
"use strict";

import { $, api, debounce, state } from "./api.js";

const MIN_TAG_CHARS = 2;
let items = [];
let active = -1;
let token = null;  // {start, end} of the word being completed

function currentToken(box) {
  const end = box.selectionStart;
  const before = box.value.slice(0, end);
  const start = Math.max(before.lastIndexOf(","), before.lastIndexOf("\n")) + 1;
  const lead = before.slice(start).match(/^\s*/)[0].length;
  return { start: start + lead, end, text: before.slice(start + lead) };
}

function close() {
  items = [];
  active = -1;
  $("#completions").hidden = true;
  $("#completions").innerHTML = "";
  $("#prompt").setAttribute("aria-expanded", "false");
  $("#prompt").removeAttribute("aria-activedescendant");
}

function render() {
  const list = $("#completions");
  list.innerHTML = "";
  items.forEach((item, i) => {
    const li = document.createElement("li");
    li.id = `completion-${i}`;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", String(i === active));
    li.textContent = item.label;
    li.dataset.kind = item.kind;
    li.addEventListener("mousedown", (e) => { e.preventDefault(); accept(i); });
    list.append(li);
  });
  list.hidden = items.length === 0;
  $("#prompt").setAttribute("aria-expanded", String(items.length > 0));
  if (active >= 0) $("#prompt").setAttribute("aria-activedescendant", `completion-${active}`);
}

function accept(i) {
  const box = $("#prompt");
  const item = items[i];
  if (!item || !token) return;
  const after = box.value.slice(token.end).replace(/^[^,\n]*/, "");
  const insert = item.text + (after.startsWith(",") ? "" : ", ");
  box.value = box.value.slice(0, token.start) + insert + after;
  const caret = token.start + insert.length;
  box.setSelectionRange(caret, caret);
  close();
  lintSoon();
}

const complete = debounce(async () => {
  const box = $("#prompt");
  const t = currentToken(box);
  const help = state.info?.prompt_help ?? {};
  const wanted = t.text.startsWith("@") ? help.artists && t.text.length >= 3 : help.tags && t.text.length >= MIN_TAG_CHARS;
  if (!wanted) { close(); return; }
  try {
    const res = await api(`/api/complete?q=${encodeURIComponent(t.text)}`);
    token = t;
    items = res.items;
    active = items.length ? 0 : -1;
    render();
  } catch {
    close();
  }
}, 120);

export const lintSoon = debounce(async () => {
  const prompt = $("#prompt").value;
  const list = $("#lint");
  if (!prompt.trim()) { list.innerHTML = ""; $("#lint-fix").hidden = true; return; }
  try {
    const res = await api("/api/lint", { method: "POST", body: JSON.stringify({ prompt }) });
    list.innerHTML = "";
    for (const f of res.findings) {
      const li = document.createElement("li");
      li.className = f.severity;
      li.textContent = `${f.severity}: ${f.message}`;
      list.append(li);
    }
    $("#lint-fix").hidden = res.formatted === prompt;
    $("#lint-fix").dataset.formatted = res.formatted;
  } catch {
    list.innerHTML = "";
  }
}, 400);

function addQualityTags() {
  const preset = state.info.choices.quality_presets.find((p) => p.name === "default");
  if (!preset) return;
  const box = $("#prompt");
  if (!box.value.startsWith(preset.positive_prefix)) {
    box.value = box.value.trim() ? `${preset.positive_prefix}, ${box.value}` : preset.positive_prefix;
  }
  $("#negative").value = preset.negative;
  lintSoon();
}

export function setupPromptHelp() {
  const box = $("#prompt");
  box.addEventListener("input", () => { complete(); lintSoon(); });
  box.addEventListener("keydown", (e) => {
    if (!items.length) return;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      active = (active + (e.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
      render();
    } else if ((e.key === "Enter" || e.key === "Tab") && !e.ctrlKey && !e.metaKey && active >= 0) {
      e.preventDefault();
      e.stopPropagation();
      accept(active);
    } else if (e.key === "Escape") {
      close();
    }
  });
  box.addEventListener("blur", () => setTimeout(close, 150));
  $("#lint-fix").addEventListener("click", () => {
    box.value = $("#lint-fix").dataset.formatted;
    lintSoon();
  });
  $("#quality").addEventListener("click", addQualityTags);
}

export function describePromptHelp(help) {
  const parts = [];
  if (help.artists) parts.push("@artist completion");
  if (help.tags) parts.push("tag completion");
  $("#prompt-help-note").textContent = parts.length ? parts.join(", ") + " on" : "";
}
