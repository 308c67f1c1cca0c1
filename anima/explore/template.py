"""The gallery page: one self-contained HTML file (data embedded, no server, no network)."""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 0; background: #16161a; color: #e8e8ec; }
 header { position: sticky; top: 0; background: #1f1f25; padding: .6em 1em; display: flex; gap: .8em;
          flex-wrap: wrap; align-items: center; z-index: 2; border-bottom: 1px solid #333; }
 header h1 { font-size: 1.05em; margin: 0 1em 0 0; }
 input, select, button { font: inherit; background: #2a2a32; color: inherit; border: 1px solid #444;
          border-radius: 4px; padding: .25em .5em; }
 #prompt { font-size: .85em; color: #aaa; padding: .4em 1em; white-space: pre-wrap; }
 #grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(__CARD__px, 1fr));
         gap: .8em; padding: 1em; }
 .card { background: #202027; border-radius: 6px; padding: .5em; }
 .card.fav { outline: 2px solid #e0b030; }
 .head { display: flex; justify-content: space-between; align-items: center; gap: .3em; }
 .copy { cursor: pointer; border: none; background: none; color: #8cf; padding: 0; text-align: left; }
 .fav-btn { border: none; background: none; font-size: 1.2em; cursor: pointer; color: #666; padding: 0; }
 .card.fav .fav-btn { color: #e0b030; }
 .shots { display: flex; gap: .3em; flex-wrap: wrap; }
 .shot { flex: 1 1 45%; min-width: 0; }
 .shot img { width: 100%; display: block; border-radius: 4px; }
 details { font-size: .75em; color: #aaa; }
 pre { white-space: pre-wrap; word-break: break-word; }
 #toast { position: fixed; bottom: 1em; right: 1em; background: #333; padding: .5em 1em; border-radius: 4px;
          opacity: 0; transition: opacity .2s; }
 #toast.show { opacity: 1; }
</style>
</head>
<body>
<header>
 <h1>__TITLE__</h1>
 <input id="search" type="search" placeholder="search artists" autocomplete="off">
 <select id="sort">
  <option value="rank">index order</option>
  <option value="name">name A-Z</option>
  <option value="name-desc">name Z-A</option>
  <option value="favs">favourites first</option>
 </select>
 <label><input id="favonly" type="checkbox"> favourites only</label>
 <span id="count"></span>
</header>
<div id="prompt"></div>
<div id="grid"></div>
<div id="toast"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const FAV_KEY = "anima-explore-favs:" + DATA.id;
let favs = new Set();
try { favs = new Set(JSON.parse(localStorage.getItem(FAV_KEY) || "[]")); } catch (e) { favs = new Set(); }
function saveFavs() { try { localStorage.setItem(FAV_KEY, JSON.stringify([...favs])); } catch (e) {} }
document.getElementById("prompt").textContent = DATA.prompt;

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text; t.classList.add("show");
  clearTimeout(toast.timer); toast.timer = setTimeout(() => t.classList.remove("show"), 1500);
}
function copyText(text) {
  const done = () => { document.body.dataset.copied = text; toast("copied " + text); };
  if (navigator.clipboard && navigator.clipboard.writeText) {
    return navigator.clipboard.writeText(text).then(done, () => fallbackCopy(text, done));
  }
  fallbackCopy(text, done);
  return Promise.resolve();
}
function fallbackCopy(text, done) {
  const ta = document.createElement("textarea");
  ta.value = text; document.body.appendChild(ta); ta.select();
  try { document.execCommand("copy"); } catch (e) {}
  ta.remove(); done();
}
function el(tag, props, children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  (children || []).forEach(c => e.appendChild(typeof c === "string" ? document.createTextNode(c) : c));
  return e;
}
function card(a) {
  const c = el("div", {className: "card" + (favs.has(a.name) ? " fav" : "")});
  c.dataset.name = a.name;
  const copy = el("button", {className: "copy", title: "copy the tag", textContent: a.tag});
  copy.addEventListener("click", () => copyText(a.tag));
  const fav = el("button", {className: "fav-btn", title: "favourite", textContent: "\u2605"});
  fav.addEventListener("click", () => {
    if (favs.has(a.name)) favs.delete(a.name); else favs.add(a.name);
    saveFavs(); c.classList.toggle("fav", favs.has(a.name));
    if (document.getElementById("favonly").checked || sortSel.value === "favs") render();
  });
  c.appendChild(el("div", {className: "head"}, [copy, fav]));
  const shots = el("div", {className: "shots"});
  a.images.forEach(im => {
    const link = el("a", {href: im.file, target: "_blank"},
                    [el("img", {src: im.thumb, loading: "lazy", alt: a.tag + " seed " + im.seed})]);
    const rc = el("button", {className: "copy-recipe", textContent: "copy recipe JSON"});
    rc.addEventListener("click", () => copyText(JSON.stringify(im.recipe)));
    const det = el("details", {}, [el("summary", {textContent: "seed " + im.seed + " recipe"}),
                                   el("pre", {textContent: im.parameters}), rc]);
    shots.appendChild(el("div", {className: "shot"}, [link, det]));
  });
  c.appendChild(shots);
  return c;
}
const grid = document.getElementById("grid");
const search = document.getElementById("search");
const sortSel = document.getElementById("sort");
function render() {
  const q = search.value.trim().toLowerCase().replace(/^@/, "").replace(/_/g, " ");
  const only = document.getElementById("favonly").checked;
  let list = DATA.artists.filter(a => (!q || a.name.includes(q)) && (!only || favs.has(a.name)));
  const by = sortSel.value;
  list = list.slice().sort((x, y) => {
    if (by === "favs" && favs.has(x.name) !== favs.has(y.name)) return favs.has(x.name) ? -1 : 1;
    if (by === "name") return x.name.localeCompare(y.name);
    if (by === "name-desc") return y.name.localeCompare(x.name);
    return x.rank - y.rank;
  });
  grid.replaceChildren(...list.map(card));
  document.getElementById("count").textContent = list.length + " / " + DATA.artists.length + " artists";
}
search.addEventListener("input", render);
sortSel.addEventListener("change", render);
document.getElementById("favonly").addEventListener("change", render);
render();
</script>
</body>
</html>
"""
