// The Cairn page: status, browse, upload, download, new folder, rename, delete, share, health.
// It uses only the JSON API under /api/ (docs/api/openapi.yaml). A cap never goes into a URL:
// it travels in a JSON body or the X-Cairn-Cap header.
"use strict";

const state = { csrf: null, cap: null, path: "/" };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function showError(message) {
  const b = $("banner");
  b.textContent = message;
  b.hidden = false;
}

function clearError() {
  $("banner").hidden = true;
}

async function api(method, url, body) {
  const headers = {};
  if (state.csrf) headers["X-Cairn-CSRF"] = state.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (r.status === 401) {
    showError("Not logged in (or the session ended): run `cairn web` on the node and open the link it prints.");
    throw new Error("not logged in");
  }
  const type = r.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await r.json() : await r.blob();
  if (!r.ok) {
    const msg = (data && data.error) || ("HTTP " + r.status);
    showError(msg);
    throw new Error(msg);
  }
  return data;
}

function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function when(ns) {
  if (!ns) return "";
  return new Date(ns / 1e6).toLocaleString();
}

function join(dir, name) {
  return (dir === "/" ? "" : dir) + "/" + name;
}

function withCap(body) {
  if (state.cap) body.cap = state.cap;
  return body;
}

// ---- browse ----

async function list() {
  clearError();
  let report;
  try {
    report = state.cap
      ? await api("POST", "/api/ls", { cap: state.cap, path: state.path })
      : await api("GET", "/api/ls?path=" + encodeURIComponent(state.path));
  } catch (e) {
    return;
  }
  renderCrumbs(report);
  const tbody = $("entries").querySelector("tbody");
  tbody.replaceChildren();
  for (const e of report.entries) tbody.append(row(e, report.writable));
  $("empty").hidden = report.entries.length > 0;
  for (const b of document.querySelectorAll(".tools button, .tools label")) {
    b.classList.toggle("disabled", !report.writable);
  }
  $("file-input").disabled = !report.writable;
}

function renderCrumbs(report) {
  const crumbs = $("crumbs");
  crumbs.replaceChildren();
  const parts = state.path.split("/").filter(Boolean);
  const rootName = state.cap ? "(shared " + (report.writable ? "read-write" : "read-only") + ")" : "My files";
  crumbs.append(el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); go("/"); } }, rootName));
  let at = "";
  for (const p of parts) {
    at += "/" + p;
    const target = at;
    crumbs.append(" / ", el("a", { href: "#", onclick: (ev) => { ev.preventDefault(); go(target); } }, p));
  }
}

function go(path) {
  state.path = path;
  list();
}

function row(e, writable) {
  const path = join(state.path, e.name);
  let nameCell;
  if (e.kind === "dir") {
    nameCell = el("a", { href: "#", class: "dir", dataset: { name: e.name }, onclick: (ev) => { ev.preventDefault(); go(path); } }, e.name + "/");
  } else if (e.kind === "file") {
    nameCell = downloadLink(e.name, path);
  } else {
    nameCell = el("span", { class: "muted" }, e.name + " → " + (e.target || ""));
  }
  if (e.conflict) nameCell = el("span", {}, nameCell, el("span", { class: "badge warn" }, "conflict"));
  const actions = el("td", { class: "actions" });
  if (e.kind !== "symlink") {
    actions.append(el("button", { type: "button", class: "share", dataset: { name: e.name }, onclick: () => share(e, path) }, "Share"));
  }
  if (e.kind === "file") {
    actions.append(el("button", { type: "button", class: "health", dataset: { name: e.name }, onclick: () => health(e, path) }, "Health"));
  }
  if (writable) {
    actions.append(el("button", { type: "button", class: "rename", dataset: { name: e.name }, onclick: () => rename(e) }, "Rename"));
    actions.append(el("button", { type: "button", class: "delete danger", dataset: { name: e.name }, onclick: () => remove(e, path) }, "Delete"));
  }
  return el("tr", { dataset: { name: e.name, kind: e.kind } },
    el("td", {}, nameCell),
    el("td", { class: "num" }, e.kind === "dir" ? "" : size(e.size)),
    el("td", { class: "wide muted" }, when(e.mtime_ns)),
    actions);
}

function downloadLink(name, path) {
  if (!state.cap) {
    return el("a", { class: "download", href: "/api/files?path=" + encodeURIComponent(path), download: name, dataset: { name } }, name);
  }
  // Below a cap: trade it for a short-lived download URL first.
  return el("a", {
    class: "download", href: "#", dataset: { name },
    onclick: async (ev) => {
      ev.preventDefault();
      const t = await api("POST", "/api/download", { cap: state.cap, path });
      location.href = t.url;
    },
  }, name);
}

// ---- changes ----

async function newDir() {
  const name = prompt("Name of the new folder");
  if (!name) return;
  await api("POST", "/api/mkdir", withCap({ path: join(state.path, name) })).catch(() => {});
  list();
}

async function rename(e) {
  const name = prompt("New name for " + e.name, e.name);
  if (!name || name === e.name) return;
  await api("POST", "/api/mv", withCap({ from: join(state.path, e.name), to: join(state.path, name) })).catch(() => {});
  list();
}

async function remove(e, path) {
  const what = e.kind === "dir" ? "the folder " + e.name + " and everything in it" : e.name;
  if (!confirm("Delete " + what + "?")) return;
  await api("POST", "/api/rm", withCap({ path, recursive: e.kind === "dir" })).catch(() => {});
  list();
}

// ---- upload ----

function upload(files) {
  for (const f of files) uploadOne(f);
}

function uploadOne(file) {
  const bar = el("progress", { max: "100", value: "0" });
  const label = el("span", {}, file.name);
  const status = el("span", { class: "muted" }, " waiting");
  const item = el("li", { dataset: { name: file.name } }, label, bar, status);
  $("uploads").append(item);
  const path = join(state.path, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("PUT", "/api/files?path=" + encodeURIComponent(path));
  if (state.csrf) xhr.setRequestHeader("X-Cairn-CSRF", state.csrf);
  if (state.cap) xhr.setRequestHeader("X-Cairn-Cap", state.cap);
  xhr.setRequestHeader("Content-Type", "application/octet-stream");
  xhr.upload.onprogress = (ev) => {
    if (ev.lengthComputable) {
      bar.value = Math.round((ev.loaded / ev.total) * 100);
      status.textContent = " " + size(ev.loaded) + " of " + size(ev.total);
    }
  };
  xhr.onload = () => {
    if (xhr.status === 201) {
      bar.value = 100;
      status.textContent = " done";
      item.classList.add("done");
      list();
    } else {
      let msg = "HTTP " + xhr.status;
      try { msg = JSON.parse(xhr.responseText).error || msg; } catch (_) { /* not JSON */ }
      status.textContent = " failed: " + msg;
      item.classList.add("failed");
    }
  };
  xhr.onerror = () => { status.textContent = " failed: connection lost"; item.classList.add("failed"); };
  xhr.send(file);
}

// ---- dialogs: share, health ----

function dialog(title, ...content) {
  $("dialog-title").textContent = title;
  $("dialog-body").replaceChildren(...content);
  const d = $("dialog");
  if (!d.open) d.showModal();
}

async function share(e, path, write = false) {
  const r = await api("POST", "/api/share", withCap({ path, write })).catch(() => null);
  if (!r) return;
  const link = el("input", { id: "share-link", type: "text", readonly: "", value: r.link });
  const copy = el("button", {
    type: "button", id: "share-copy",
    onclick: async () => {
      try { await navigator.clipboard.writeText(r.link); } catch (_) { link.select(); document.execCommand("copy"); }
      copy.textContent = "Copied";
    },
  }, "Copy link");
  const img = el("img", { id: "share-qr", alt: "QR code of the share link", width: "240", height: "240" });
  const qr = await api("POST", "/api/qr", { text: r.link }).catch(() => null);
  if (qr) img.src = URL.createObjectURL(qr);
  const kind = write ? "read-write" : "read-only";
  const parts = [
    el("p", {}, "Anyone with this link can " + (write ? "read and change " : "read ") + e.name + " (" + kind + "). Send it privately."),
    el("div", { class: "row" }, link, copy),
    img,
  ];
  if (e.kind === "dir" && !write && e.writable !== false) {
    parts.push(el("button", { type: "button", id: "share-write", onclick: () => share(e, path, true) }, "Make a read-write link instead"));
  }
  dialog("Share " + e.name, ...parts);
}

async function health(e, path) {
  const r = await api("POST", "/api/check", withCap({ path })).catch(() => null);
  if (!r) return;
  const summary = r.healthy ? "Healthy: every chunk has all its shares."
    : r.readable ? "Readable, but some shares are missing." : "NOT readable: some chunks have too few shares.";
  const rows = r.chunks.map((c) => el("tr", { class: c.found >= c.total ? "" : c.found >= c.need ? "warn" : "bad" },
    el("td", {}, c.what), el("td", { class: "num" }, c.found), el("td", { class: "num" }, c.need), el("td", { class: "num" }, c.total),
    el("td", { class: "wide" }, Object.keys(c.holders).length + " nodes")));
  const table = el("table", { id: "health" },
    el("thead", {}, el("tr", {}, el("th", {}, "Chunk"), el("th", { class: "num" }, "Found"), el("th", { class: "num" }, "Needed"), el("th", { class: "num" }, "Total"), el("th", { class: "wide" }, "Holders"))),
    el("tbody", {}, ...rows));
  dialog("Health of " + e.name, el("p", {}, summary), el("p", { class: "muted" }, size(r.size) + (r.k ? ", " + r.k + " of " + r.n + " shares per chunk" : ", stored inside its cap")), table);
}

// ---- status ----

function dl(target, pairs) {
  target.replaceChildren();
  for (const [k, v] of pairs) target.append(el("dt", {}, k), el("dd", {}, v));
}

function ago(secs) {
  if (!secs) return "never";
  const d = Math.max(0, Math.round(Date.now() / 1000 - secs));
  if (d < 60) return d + " s ago";
  if (d < 3600) return Math.round(d / 60) + " min ago";
  if (d < 86400) return Math.round(d / 3600) + " h ago";
  return Math.round(d / 86400) + " days ago";
}

// One line on whether files stay readable with the members that are offline: a file needs k
// of its n shares, so up to n - k holders may be off. Shares are not yet repaired onto other
// members while one is away.
function gridHealth(s, online) {
  const offline = s.peers.length - online;
  const spare = s.encoding.n - s.encoding.k;
  if (offline === 0) return "all members online";
  if (offline <= spare) return offline + " offline: every file is still readable (up to " + spare + " may be off)";
  return offline + " offline: files with more than " + spare + " shares on offline members are unreadable until they return";
}

// The grid's storage space, added up over the storage nodes that answered.
function gridSpace(g) {
  if (!g) return "unknown";
  const nodes = g.nodes + " storage node" + (g.nodes === 1 ? "" : "s");
  const missing = g.unknown ? " (" + g.unknown + " more not answering)" : "";
  return size(g.used_bytes) + " used of " + size(g.offered_bytes) + ", " + size(g.free_bytes) + " free, on " + nodes + missing;
}

async function status() {
  clearError();
  const s = await api("GET", "/api/status").catch(() => null);
  if (!s) return;
  dl($("st-node"), [["Id", s.node], ["Admin", s.admin ? "yes" : "no"], ["Addresses", s.addrs.join(", ")]]);
  const used = s.storage.used_bytes, offered = s.storage.offered_bytes;
  dl($("st-storage"), [["Used", size(used)], ["Offered", size(offered)], ["Shares", s.storage.shares]]);
  $("st-meter").style.width = (offered ? Math.min(100, (100 * used) / offered) : 0) + "%";
  const online = s.peers.filter((p) => p.online).length;
  dl($("st-grid"), [["Grid", s.grid.slice(0, 16) + "…"], ["Encoding", s.encoding.k + " of " + s.encoding.n + " (happy " + s.encoding.happy + ")"], ["Peers online", online + " of " + s.peers.length], ["Health", gridHealth(s, online)], ["Space", gridSpace(s.grid_space)]]);
  const a = s.activity;
  dl($("st-activity"), [["Stored", a.files_put + " files, " + size(a.bytes_put)], ["Read", a.files_got + " files, " + size(a.bytes_got)], ["Shares served", a.shares_served]]);
  const tbody = $("peers").querySelector("tbody");
  tbody.replaceChildren(...s.peers.map((p) => el("tr", {},
    el("td", { class: "mono" }, String(p.id).slice(0, 12)),
    el("td", {}, el("span", { class: "badge " + (p.online ? "ok" : "bad") }, p.online ? "online" : "offline")),
    el("td", { class: "wide" }, ago(p.last_contact)),
    el("td", { class: "wide" }, p.roles))));
  const conflicts = $("conflicts");
  conflicts.replaceChildren(...(s.conflicts.length ? s.conflicts.map((c) => el("li", {}, c.path + ": " + c.lines + " lines in conflict")) : [el("li", { class: "muted" }, "none")]));
}

// ---- wiring ----

function showTab(name) {
  $("view-files").hidden = name !== "files";
  $("view-status").hidden = name !== "status";
  $("tab-files").classList.toggle("active", name === "files");
  $("tab-status").classList.toggle("active", name === "status");
  if (name === "status") status(); else list();
}

async function start() {
  try {
    const s = await api("GET", "/api/session");
    state.csrf = s.csrf;
  } catch (_) {
    return;
  }
  $("tab-files").onclick = () => showTab("files");
  $("tab-status").onclick = () => showTab("status");
  $("logout").onclick = async () => { await api("POST", "/api/logout").catch(() => {}); location.replace("/login"); };
  $("refresh").onclick = list;
  $("new-dir").onclick = newDir;
  $("file-input").onchange = (ev) => { upload(ev.target.files); ev.target.value = ""; };
  const drop = $("drop");
  for (const t of ["dragenter", "dragover"]) drop.addEventListener(t, (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  for (const t of ["dragleave", "drop"]) drop.addEventListener(t, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); upload(ev.dataTransfer.files); });
  $("cap-form").onsubmit = (ev) => {
    ev.preventDefault();
    const cap = $("cap-input").value.trim();
    state.cap = cap || null;
    state.path = "/";
    if (cap && !/^cairn:dir/i.test(cap)) {
      // A file cap: download it directly.
      api("POST", "/api/download", { cap }).then((t) => { location.href = t.url; }).catch(() => {});
      state.cap = null;
      return;
    }
    list();
  };
  $("cap-home").onclick = () => { state.cap = null; state.path = "/"; $("cap-input").value = ""; list(); };
  $("attach-form").onsubmit = async (ev) => {
    ev.preventDefault();
    const cap = $("cap-input").value.trim();
    if (!cap) { showError("Paste the cap above first."); return; }
    await api("POST", "/api/attach", { cap, path: $("attach-path").value }).catch(() => {});
    state.cap = null;
    go("/");
  };
  showTab("files");
}

start();
