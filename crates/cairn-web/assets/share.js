// The share page: works without a session. The cap is in the fragment (never sent in a
// request line); it is posted to /s/open, which answers with a short-lived download URL for a
// file, or the listing of a directory.
"use strict";

const $ = (id) => document.getElementById(id);
let cap = "";
let fileName = "";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function showError(message) {
  const b = $("banner");
  b.textContent = message;
  b.hidden = false;
}

async function open(path) {
  const body = { cap, path };
  if (fileName) body.name = fileName;
  const r = await fetch("/s/open", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    credentials: "omit",
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    showError(data.error || ("HTTP " + r.status));
    throw new Error(data.error);
  }
  return data;
}

function join(dir, name) {
  return (dir === "/" ? "" : dir) + "/" + name;
}

async function show(path) {
  let r;
  try { r = await open(path); } catch (_) { return; }
  if (r.kind === "file") {
    $("dir").hidden = true;
    $("file").hidden = false;
    $("file-name").textContent = r.name;
    $("file-size").textContent = size(r.size);
    const a = $("file-download");
    a.href = r.url;
    a.setAttribute("download", r.name);
    return;
  }
  $("file").hidden = true;
  $("dir").hidden = false;
  const crumbs = $("crumbs");
  crumbs.replaceChildren(el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); show("/"); } }, "shared folder"));
  let at = "";
  for (const p of r.path.split("/").filter(Boolean)) {
    at += "/" + p;
    const target = at;
    crumbs.append(" / ", el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); show(target); } }, p));
  }
  const tbody = $("entries").querySelector("tbody");
  tbody.replaceChildren(...r.entries.map((e) => {
    const here = join(r.path, e.name);
    let name;
    let action = "";
    if (e.kind === "dir") {
      name = el("a", { href: "#", class: "dir", onclick: (ev) => { ev.preventDefault(); show(here); } }, e.name + "/");
    } else if (e.kind === "file") {
      name = el("span", {}, e.name);
      action = el("button", {
        type: "button", class: "download", dataset: { name: e.name },
        onclick: async () => {
          try {
            const t = await open(here);
            location.href = t.url;
          } catch (_) { /* shown */ }
        },
      }, "Download");
    } else {
      name = el("span", { class: "muted" }, e.name);
    }
    return el("tr", { dataset: { name: e.name } }, el("td", {}, name), el("td", { class: "num" }, e.kind === "dir" ? "" : size(e.size)), el("td", {}, action));
  }));
}

function start() {
  $("banner").hidden = true;
  $("file").hidden = true;
  $("dir").hidden = true;
  const hash = decodeURIComponent(location.hash.slice(1));
  const at = hash.indexOf("&n=");
  cap = (at >= 0 ? hash.slice(0, at) : hash).trim();
  fileName = at >= 0 ? hash.slice(at + 3) : "";
  if (!cap) {
    showError("This page needs a share link (it ends in #cairn:...).");
    return;
  }
  show("/");
}

// Another share link pasted into the address bar changes only the fragment.
window.addEventListener("hashchange", start);
start();
