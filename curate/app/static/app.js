// curate app: the page. Plain JavaScript module, no build step. Everything from the
// workspace (captions, labels, file names, reasons) is drawn with textContent: never markup.

const $ = (id) => document.getElementById(id);
// The page serves every view: its path names the one to draw (/, /compare, /duplicates, /review).
const VIEWS = ["browse", "compare", "duplicates", "review"];
const PAGE_VIEW = (() => {
  const name = location.pathname.replace(/^\/+|\/+$/g, "");
  return VIEWS.includes(name) ? name : "browse";
})();

const view = {
  sel: { classification: null, mode: "image", labels: [], min_prob: 0, where: [], status: "embedded",
    duplicates: "all", review_set: null },
  search: null,          // null | {text} | {like: id}
  next: null,            // the cursor of the next page; null: the end
  loading: false,
  generation: 0,         // a reply for an older view is dropped
  overview: null,
  detailId: null,
  lastGroup: null,       // the duplicates control's groups: the last tile's, and its shade (0/1)
  groupParity: 0,
};

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") e.textContent = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k === "class") e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const resp = await fetch(path, opts);
  let data;
  try { data = await resp.json(); } catch { data = { ok: false, error: `HTTP ${resp.status}` }; }
  if (!resp.ok) throw new Error(data.error || `HTTP ${resp.status}`);
  return data;
}

function showError(msg) {
  const box = $("error");
  box.textContent = msg || "";
  box.hidden = !msg;
}

// ------------------------------------------------------------------ overview, banner

async function loadOverview() {
  const q = view.sel.classification ? `?classification=${encodeURIComponent(view.sel.classification)}` : "";
  const o = await api(`/api/overview${q}`);
  view.overview = o;
  view.sel.classification = o.classification;
  drawModel(o.model);
  fillSelect($("classification"), o.classifications.map((c) => c.name), o.classification);
  if (!o.modes.includes(view.sel.mode)) view.sel.mode = "image";
  fillSelect($("mode"), o.modes, view.sel.mode);
  fillSelect($("where-col"), o.columns, o.columns[0]);
  $("where-form").hidden = o.columns.length === 0;
  view.sel.labels = view.sel.labels.filter((l) => o.labels.includes(l));
  drawWarm(o.warm);
  drawBrowseMarks(o.browse_marks);
  drawDedup(o.duplicates);
  drawSets(o.review_sets, o.sample_command);
}

// The review set filter: the sets `curate sample` drew (their images, with today's predictions).
function drawSets(sets, command) {
  const select = $("review-set");
  select.textContent = "";
  select.append(el("option", { value: "", text: "any image" }));
  for (const s of sets || []) select.append(el("option", { value: s.name, text: `${s.name} (${s.items})` }));
  if (!(sets || []).some((s) => s.name === view.sel.review_set)) view.sel.review_set = null;
  select.value = view.sel.review_set || "";
  select.disabled = !sets || sets.length === 0;
  const note = $("review-set-note");
  note.textContent = "";
  if (select.disabled) note.append(el("span", { text: "no review set yet: " }), el("code", { text: command }),
    el("span", { text: " draws one" }));
}

// The duplicates control: enabled once `curate dedup` stored image groups, else it says why.
function drawDedup(d) {
  const select = $("dedup");
  const note = $("dedup-note");
  note.textContent = "";
  const usable = !!d && d.found && view.sel.status === "embedded";
  if (!usable) view.sel.duplicates = "all";
  select.value = view.sel.duplicates;
  select.disabled = !usable;
  document.body.dataset.dedup = d && d.found ? "found" : "none";
  if (!d) return;
  if (!d.found) {
    select.title = d.why;
    note.append(el("span", { text: `${d.why.replace(/: run .*$/, "")}: run ` }), el("code", { text: d.command }),
      el("span", { text: " to find them" }));
  } else if (view.sel.status !== "embedded") {
    select.title = "rejected items are in no duplicate group";
    note.textContent = select.title;
  } else {
    select.title = "";
    note.textContent = `${d.groups} image group${d.groups === 1 ? "" : "s"} of ${d.items} items (curate dedup)`;
  }
}

function drawModel(m) {
  const model = $("model");
  model.textContent = "";
  if (!m) return;
  model.append(el("span", { text: `model ${m.model || "?"}${m.pretrained ? " (" + m.pretrained + ")" : ""}` }));
  if (m.random_weights) {
    model.append(el("span", { class: "random", text: "random weights: these results carry no meaning" }));
  }
  document.body.dataset.randomWeights = m.random_weights ? "yes" : "no";
}

function fillSelect(select, values, current) {
  select.textContent = "";
  for (const v of values) select.append(el("option", { value: v, text: v }));
  if (current !== null && current !== undefined) select.value = current;
}

function drawWarm(w) {
  const box = $("warm");
  let text;
  if (w.model === "ready") text = w.index === "ready" ? "model ready" : `index: ${w.index_error || w.index}`;
  else if (w.model === "loading") text = "model loading…";
  else text = `text search unavailable: ${w.model_error || "no model"}`;
  box.textContent = text;
  document.body.dataset.model = w.model;
  return w.model === "loading" || w.index === "loading";
}

async function pollWarm() {
  try {
    const w = await api("/api/status");
    if (drawWarm(w)) setTimeout(pollWarm, 500);
  } catch (e) {
    setTimeout(pollWarm, 2000);
  }
}

function drawBrowseMarks(c) {
  const box = $("browse-marks");
  box.textContent = "";
  if (!c) return;
  box.append(el("h2", { text: "your marks while browsing" }),
    el("div", { text: `${c.hit} hit · ${c.miss} miss · ${c.skip} skip` }),
    el("div", { class: "note", text: "kept apart from review sets: the report never counts them" }));
}

// ------------------------------------------------------------------ the view

function calibrated() { return view.sel.mode === "calibrated"; }

async function reload() {
  view.generation += 1;
  view.next = null;
  view.loading = false;
  view.lastGroup = null;
  view.groupParity = 0;
  $("grid").textContent = "";
  $("end").hidden = true;
  showError("");
  document.body.dataset.state = "loading";
  $("minprob").disabled = calibrated() || view.sel.status !== "embedded";
  $("calibrated-note").hidden = !calibrated();
  drawSearchChip();
  const gen = view.generation;
  try {
    await Promise.all([loadCounts(gen), loadPage(gen, true), loadCommand(gen)]);
  } catch (e) {
    if (gen === view.generation) showError(e.message);
  }
  if (gen === view.generation) {
    document.body.dataset.classification = view.sel.classification || "";
    document.body.dataset.state = "ready";
  }
}

async function loadCounts(gen) {
  const c = await api("/api/counts", { selection: view.sel });
  if (gen !== view.generation) return;
  const list = $("labels");
  list.textContent = "";
  for (const row of c.labels) {
    if (row.items === 0) continue;
    const on = view.sel.labels.includes(row.label);
    const b = el("button", { type: "button", class: on ? "label on" : "label", dataset: { label: row.label } },
      el("span", { class: "name", text: row.label }), el("span", { class: "n", text: String(row.kept) }));
    b.addEventListener("click", () => toggleLabel(row.label));
    list.append(el("li", {}, b));
  }
  $("labels-clear").hidden = view.sel.labels.length === 0;
  document.body.dataset.count = String(c.count);
  if (!view.search) $("summary").textContent = summaryText(c.count);
}

function summaryText(count) {
  const s = view.sel;
  if (s.status === "rejected") return `${count} rejected items`;
  const what = s.labels.length ? s.labels.join(", ") : "any label";
  const rule = calibrated() ? "calibrated, each class at its threshold" : `${s.mode} prob ≥ ${s.min_prob.toFixed(2)}`;
  const dup = { all: "", representatives: " · one per duplicate group", groups: " · in duplicate groups" }[s.duplicates];
  const set = s.review_set ? ` · review set ${s.review_set}` : "";
  return `${count} images · ${what} · ${rule}${dup}${set}`;
}

async function loadPage(gen, first = false) {
  if (view.loading || (!first && view.next === null)) return;
  view.loading = true;
  try {
    const body = { selection: view.sel, after: first ? null : view.next };
    if (view.search) body.search = view.search;
    const page = await api("/api/grid", body);
    if (gen !== view.generation) return;
    const grid = $("grid");
    for (const t of page.tiles) {
      const box = tile(t);
      if (view.sel.duplicates === "groups" && t.group) {   // a group's tiles share a shade, the next the other
        if (view.lastGroup !== null && t.group.id !== view.lastGroup) view.groupParity = 1 - view.groupParity;
        view.lastGroup = t.group.id;
        box.dataset.groupParity = String(view.groupParity);
      }
      grid.append(box);
    }
    view.next = page.next;
    $("end").hidden = view.next !== null;
    document.body.dataset.tiles = String(grid.children.length);
    if (view.search) {
      $("summary").textContent = `${page.count} of the ${page.searched} nearest images pass the filters`;
      document.body.dataset.count = String(page.count);
    }
  } finally {
    if (gen === view.generation) view.loading = false;
  }
  // a short page may leave the sentinel in view: keep filling
  if (gen === view.generation && view.next !== null && sentinelVisible()) loadPage(gen);
}

function sentinelVisible() {
  const r = $("sentinel").getBoundingClientRect();
  return r.top < window.innerHeight + 400;
}

function tile(t) {
  const box = el("div", { class: "tile", tabindex: "0", dataset: { id: String(t.id), mark: t.mark || "" } });
  const img = el("img", { alt: "", loading: "lazy", src: `/api/thumb/${t.id}` });
  box.append(img);
  const info = el("div", { class: "info" });
  if (t.status === "rejected") {
    info.append(el("div", { class: "reason", text: t.reason || "rejected" }));
  } else if (t.representative !== undefined) {   // a duplicate group's member
    info.append(el("span", { class: t.representative ? "rep" : "score",
      text: t.representative ? "representative" : `cos ${t.similarity === null ? "?" : t.similarity.toFixed(3)}` }));
  } else {
    info.append(el("span", { class: "lab", text: t.label }),
      el("span", { class: "p", text: t.prob.toFixed(3) }));
    if (t.score !== undefined) info.append(el("span", { class: "score", text: `cos ${t.score.toFixed(3)}` }));
    if (t.other) {                                 // the compare view: what B says of it
      info.append(el("span", { class: "vs", text: "vs" }), el("span", { class: "lab other", text: t.other.label }),
        el("span", { class: "p", text: t.other.prob.toFixed(3) }));
    }
  }
  if (t.group) {                                   // the duplicates control: its image group
    box.dataset.group = String(t.group.id);
    const sim = t.group.similarity === null ? "?" : t.group.similarity.toFixed(3);
    info.append(el("div", { class: "grp", title: `duplicate group ${t.group.id}`,
      text: t.group.representative ? `representative of ${t.group.size}` : `1 of ${t.group.size} · cos ${sim} to its rep.` }));
  }
  info.append(el("div", { class: "name", text: t.name || "" }));
  box.append(info);
  const markable = t.status !== "rejected" && t.representative === undefined;
  box.dataset.markable = markable ? "yes" : "no";
  if (markable) {
    const bar = el("div", { class: "marks" });
    for (const [mark, sym] of [["hit", "✓"], ["miss", "✗"], ["skip", "–"]]) {
      const b = el("button", { type: "button", class: `mk ${mark}`, title: mark, "aria-label": mark,
        dataset: { mark } });
      b.textContent = sym;
      b.addEventListener("click", (ev) => { ev.stopPropagation(); mark_(box, mark); });
      bar.append(b);
    }
    const like = el("button", { type: "button", class: "like", title: "more like this", text: "≈" });
    like.addEventListener("click", (ev) => { ev.stopPropagation(); moreLike(t.id); });
    bar.append(like);
    box.append(bar);
  }
  box.dataset.status = t.status;
  box.addEventListener("click", () => openDetail(t.id));
  return box;
}

// ------------------------------------------------------------------ marks

async function mark_(box, mark) {
  const id = Number(box.dataset.id);
  box.dataset.saving = mark;
  box.classList.remove("unsaved");
  try {
    const got = await api("/api/mark", { id, mark, selection: view.sel });
    box.dataset.mark = got.mark;        // shown only once it is on disk
    delete box.dataset.saving;
    if (view.detailId === id) $("d-label").dataset.mark = got.mark;
    drawBrowseMarks(got.counts);
  } catch (e) {
    delete box.dataset.saving;
    box.classList.add("unsaved");
    showError(`mark not saved: ${e.message}`);
  }
}

function tileOf(id) { return document.querySelector(`.tile[data-id="${CSS.escape(String(id))}"]`); }

const KEYMARKS = { h: "hit", y: "hit", 1: "hit", m: "miss", n: "miss", 2: "miss", s: "skip", " ": "skip", 3: "skip" };

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (PAGE_VIEW === "review") return;      // review.js has its own keys
  const t = ev.target;
  if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) return;
  if (!$("detail").hidden) {
    if (ev.key === "Escape") { closeDetail(); ev.preventDefault(); return; }
    const box = tileOf(view.detailId);
    const mk = KEYMARKS[ev.key.toLowerCase()];
    if (mk && box && box.dataset.markable === "yes") { mark_(box, mk); ev.preventDefault(); }
    return;
  }
  if (!(t instanceof HTMLElement) || !t.classList.contains("tile")) return;
  const mk = KEYMARKS[ev.key.toLowerCase()];
  if (mk && t.dataset.markable === "yes") { mark_(t, mk); ev.preventDefault(); return; }
  if (ev.key === "Enter") { openDetail(Number(t.dataset.id)); ev.preventDefault(); return; }
  if (ev.key.toLowerCase() === "l") { moreLike(Number(t.dataset.id)); ev.preventDefault(); return; }
  const tiles = [...t.parentElement.querySelectorAll(".tile")];
  const i = tiles.indexOf(t);
  const perRow = Math.max(1, Math.round(t.parentElement.clientWidth / t.offsetWidth));
  const step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: perRow, ArrowUp: -perRow }[ev.key];
  if (step !== undefined) {
    const j = Math.min(tiles.length - 1, Math.max(0, i + step));
    tiles[j].focus();
    ev.preventDefault();
  }
});

// ------------------------------------------------------------------ detail

async function openDetail(id) {
  view.detailId = id;
  const q = view.sel.classification ? `?classification=${encodeURIComponent(view.sel.classification)}` : "";
  let d;
  try { d = await api(`/api/item/${id}${q}`); } catch (e) { showError(e.message); return; }
  $("d-title").textContent = `item ${d.id}`;
  $("d-image").src = `/api/image/${d.id}`;
  $("d-path").textContent = d.path || "";
  $("d-reason").textContent = d.status === "rejected" ? `rejected: ${d.reason || "?"}` : "";
  $("d-caption").textContent = d.caption;
  const cols = $("d-columns");
  cols.textContent = "";
  for (const [k, v] of Object.entries(d.columns)) cols.append(el("div", { text: `${k}: ${v ?? ""}` }));
  const box = tileOf(id);
  const lab = $("d-label");
  lab.textContent = box && box.querySelector(".lab") ? `${box.querySelector(".lab").textContent}?` : "";
  lab.dataset.mark = box ? box.dataset.mark : "";
  $("d-marking").hidden = d.status === "rejected";
  // a duplicate group's member shows no label to judge: only "more like this"
  const markable = !!box && box.dataset.markable === "yes";
  for (const b of document.querySelectorAll("#d-marking .mk")) b.hidden = !markable;
  const top = $("d-top");
  top.textContent = "";
  for (const v of ["image", "caption", "ensemble"]) {
    if (!d.top[v].length) continue;
    const tbl = el("table", { class: "top", dataset: { view: v } }, el("caption", { text: `top 5 by ${v}` }));
    for (const r of d.top[v]) tbl.append(el("tr", {}, el("td", { text: r.label }), el("td", { text: r.prob.toFixed(3) })));
    top.append(tbl);
  }
  const dups = $("d-dups");
  dups.textContent = "";
  if (d.duplicates.length) {
    dups.append(el("h3", { text: `duplicate group (${d.duplicates.length})` }));
    const row = el("div", { class: "dups" });
    for (const g of d.duplicates) {
      const im = el("img", { alt: "", src: `/api/thumb/${g.id}`, title: g.representative ? "representative" : "" });
      im.addEventListener("click", () => openDetail(g.id));
      row.append(im);
    }
    dups.append(row);
  }
  const marks = $("d-marks");
  marks.textContent = "";
  if (d.review_marks.length || d.browse_marks.length) marks.append(el("h3", { text: "marks" }));
  for (const m of d.review_marks) marks.append(el("div", { text: `review set: ${m.label}: ${m.mark}` }));
  for (const m of d.browse_marks) marks.append(el("div", { text: `browsing: ${m.label}: ${m.mark}` }));
  $("detail").hidden = false;
  document.body.dataset.detail = String(id);
  $("d-close").focus();
}

function closeDetail() {
  $("detail").hidden = true;
  delete document.body.dataset.detail;
  const box = tileOf(view.detailId);
  view.detailId = null;
  if (box) box.focus();
}

// ------------------------------------------------------------------ search, export

function moreLike(id) {
  if (PAGE_VIEW !== "browse") { location.href = `/#like=${encodeURIComponent(id)}`; return; }
  closeDetailIfOpen();
  view.search = { like: id };
  reload();
}

function closeDetailIfOpen() { if (!$("detail").hidden) closeDetail(); }

function drawSearchChip() {
  $("search-chip").hidden = !view.search;
  if (!view.search) return;
  $("search-what").textContent = view.search.text !== undefined ? `search: “${view.search.text}”`
    : `more like item ${view.search.like}`;
}

async function loadCommand(gen) {
  const out = $("out").value.trim() || "subset.parquet";
  const exportable = view.sel.status === "embedded";
  $("export").disabled = !exportable;
  if (!exportable) {
    $("command").textContent = "rejected items are not exported (`curate filter` writes predictions)";
    $("command").dataset.exportable = "no";
    return;
  }
  const c = await api("/api/command", { selection: view.sel, out });
  if (gen !== view.generation) return;
  // no `curate filter` writes this selection (whole duplicate groups): say so, never a wrong command
  $("command").textContent = c.command === null ? c.why : c.command;
  $("command").dataset.exportable = c.command === null ? "no" : "yes";
  $("export").disabled = c.command === null;
  $("export").title = c.command === null ? c.why : view.search ? "writes the selection (without the search)" : "";
}

async function exportNow() {
  const out = $("out").value.trim();
  const res = $("export-result");
  res.textContent = "writing…";
  document.body.dataset.export = "running";
  try {
    const got = await api("/api/export", { selection: view.sel, out });
    res.textContent = got.summary;
    document.body.dataset.export = "done";
  } catch (e) {
    res.textContent = `not written: ${e.message}`;
    document.body.dataset.export = "failed";
  }
}

// ------------------------------------------------------------------ controls

function toggleLabel(label) {
  const s = view.sel;
  s.labels = s.labels.includes(label) ? s.labels.filter((l) => l !== label) : [...s.labels, label];
  reload();
}

let slideTimer = null;

function wire() {
  $("minprob").addEventListener("input", () => {
    const v = Number($("minprob").value);
    $("minprob-value").textContent = v.toFixed(2);
    clearTimeout(slideTimer);
    slideTimer = setTimeout(() => { view.sel.min_prob = v; reload(); }, 150);
  });
  $("classification").addEventListener("change", async () => {
    document.body.dataset.state = "loading";
    view.sel.classification = $("classification").value;
    try { await loadOverview(); } catch (e) { showError(e.message); return; }
    reload();
  });
  $("mode").addEventListener("change", () => { view.sel.mode = $("mode").value; reload(); });
  $("status").addEventListener("change", () => {
    view.sel.status = $("status").value;
    if (view.sel.status !== "embedded") view.search = null;
    drawDedup(view.overview && view.overview.duplicates);
    reload();
  });
  $("dedup").addEventListener("change", () => { view.sel.duplicates = $("dedup").value; reload(); });
  $("review-set").addEventListener("change", () => { view.sel.review_set = $("review-set").value || null; reload(); });
  $("labels-clear").addEventListener("click", () => { view.sel.labels = []; reload(); });
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("q").value.trim();
    if (!text) return;
    view.search = { text };
    if (view.sel.status !== "embedded") {
      view.sel.status = "embedded";
      $("status").value = "embedded";
      drawDedup(view.overview && view.overview.duplicates);
    }
    reload();
  });
  $("search-clear").addEventListener("click", () => { view.search = null; $("q").value = ""; reload(); });
  $("where-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const col = $("where-col").value;
    const val = $("where-val").value;
    if (!col) return;
    view.sel.where = [...view.sel.where, [col, val]];
    $("where-val").value = "";
    drawWhere();
    reload();
  });
  $("out").addEventListener("change", () => loadCommand(view.generation).catch((e) => showError(e.message)));
  $("export").addEventListener("click", exportNow);
  $("d-close").addEventListener("click", closeDetail);
  $("detail").addEventListener("click", (ev) => { if (ev.target === $("detail")) closeDetail(); });
  for (const b of document.querySelectorAll("#d-marking .mk")) {
    b.addEventListener("click", () => { const box = tileOf(view.detailId); if (box) mark_(box, b.dataset.mark); });
  }
  $("d-like").addEventListener("click", () => moreLike(view.detailId));
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadPage(view.generation).catch((e) => showError(e.message));
  }, { rootMargin: "400px" }).observe($("sentinel"));
}

function drawWhere() {
  const list = $("where-list");
  list.textContent = "";
  view.sel.where.forEach(([c, v], i) => {
    const b = el("button", { type: "button", title: "remove", text: "×" });
    b.addEventListener("click", () => { view.sel.where.splice(i, 1); drawWhere(); reload(); });
    list.append(el("li", {}, el("span", { text: `${c} = ${v}` }), b));
  });
}

// ------------------------------------------------------------------ compare

const cmp = { a: null, b: null, kind: "image", minProb: 0.5, label: null, next: null, loading: false, gen: 0,
  gridGen: 0 };
const SVG_NS = document.getElementById("cmp-svg").namespaceURI;   // the page's own <svg>: no URL in the script

function svgEl(tag, attrs = {}, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function pct(x) { return x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`; }

function initCompare() {
  const names = view.overview.classifications.map((c) => c.name);
  if (names.length < 2) {
    showError("compare needs two classifications of this workspace: run `curate classify --name NAME ...` again "
      + "with other prompts or labels");
    document.body.dataset.state = "ready";
    return;
  }
  cmp.a = view.overview.classification;
  cmp.b = names.find((n) => n !== cmp.a);
  fillSelect($("cmp-a"), names, cmp.a);
  fillSelect($("cmp-b"), names, cmp.b);
  fillSelect($("cmp-kind"), ["image"], "image");
  const change = (ev) => {
    // choosing for A what B shows (or the reverse) swaps the two
    if ($("cmp-a").value === $("cmp-b").value) {
      if (ev && ev.target === $("cmp-a")) $("cmp-b").value = cmp.a;
      else $("cmp-a").value = cmp.b;
    }
    cmp.a = $("cmp-a").value; cmp.b = $("cmp-b").value; cmp.kind = $("cmp-kind").value;
    const p = Number($("cmp-minprob").value);
    cmp.minProb = Number.isFinite(p) ? Math.min(1, Math.max(0, p)) : 0.5;
    cmp.label = null;
    loadCompare();
  };
  for (const id of ["cmp-a", "cmp-b", "cmp-kind", "cmp-minprob"]) $(id).addEventListener("change", change);
  $("cmp-form").addEventListener("submit", (ev) => { ev.preventDefault(); change(null); });
  $("cmp-label-clear").addEventListener("click", () => { cmp.label = null; reloadCmpGrid(); });
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadCmpPage(cmp.gridGen).catch((e) => showError(e.message));
  }, { rootMargin: "400px" }).observe($("cmp-sentinel"));
  loadCompare();
}

async function loadCompare() {
  cmp.gen += 1;
  const gen = cmp.gen;
  showError("");
  document.body.dataset.state = "loading";
  if (cmp.a === cmp.b) {
    showError("choose two different classifications");
    document.body.dataset.state = "ready";
    return;
  }
  const q = new URLSearchParams({ a: cmp.a, b: cmp.b, kind: cmp.kind, min_prob: String(cmp.minProb) });
  let s;
  try { s = await api(`/api/compare?${q}`); } catch (e) {
    if (gen === cmp.gen) { showError(e.message); document.body.dataset.state = "ready"; }
    return;
  }
  if (gen !== cmp.gen) return;
  fillSelect($("cmp-kind"), s.kinds, s.kind);
  drawCurves(s);
  drawAgreement(s);
  drawCmpLabels(s);
  // a tile's mark and detail judge what A says of it
  view.sel.classification = s.a;
  view.sel.mode = s.kind;
  await reloadCmpGrid();
  if (gen === cmp.gen) {
    document.body.dataset.compare = `${s.a}|${s.b}|${s.kind}`;
    document.body.dataset.state = "ready";
  }
}

function drawCurves(s) {
  const svg = $("cmp-svg");
  svg.textContent = "";
  const W = 420, H = 260, L = 44, R = 12, T = 12, B = 34;
  const x = (t) => L + t * (W - L - R);
  const y = (v) => T + (1 - v) * (H - T - B);
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    svg.append(svgEl("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }));
    svg.append(svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, `${100 * v}%`));
  }
  for (let t = 0; t <= 10; t += 2) {
    svg.append(svgEl("text", { x: x(t / 10), y: H - B + 16, "text-anchor": "middle", class: "tick" }, (t / 10).toFixed(1)));
  }
  svg.append(svgEl("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "axis" }, "threshold (top-label probability)"));
  svg.append(svgEl("line", { x1: x(s.min_prob), x2: x(s.min_prob), y1: T, y2: H - B, class: "minprob" }));
  [s.a, s.b].forEach((name, k) => {
    const rows = s.coverage[name];
    const pts = rows.map((r) => `${x(r.threshold).toFixed(1)},${y(r.share ?? 0).toFixed(1)}`).join(" ");
    svg.append(svgEl("polyline", { points: pts, class: `curve c${k}`, "data-name": name }));
    for (const r of rows) {
      const dot = svgEl("circle", { cx: x(r.threshold), cy: y(r.share ?? 0), r: 3, class: `dot c${k}` });
      dot.append(svgEl("title", {}, `${name}: ${r.classified} of ${r.images} at ≥ ${r.threshold.toFixed(1)} (${pct(r.share)})`));
      svg.append(dot);
    }
    svg.append(svgEl("rect", { x: W - R - 150, y: T + 4 + 16 * k, width: 10, height: 10, class: `key c${k}` }));
    svg.append(svgEl("text", { x: W - R - 136, y: T + 13 + 16 * k, class: "legend" }, `${k ? "B" : "A"}: ${name}`));
  });
  svg.dataset.curves = "2";
}

function drawAgreement(s) {
  const g = s.agreement;
  $("cmp-overall").textContent = `${pct(g.share_same)} of ${g.images} images get the same top label from ${s.a} and ${s.b}`;
  $("cmp-classified").textContent = g.both_classified === 0
    ? `no image is classified by both at ≥ ${s.min_prob}`
    : `${pct(g.share_same_classified)} of the ${g.both_classified} both classify at ≥ ${s.min_prob} `
      + `(${g.same_top_classified} the same)`;
  const list = $("cmp-changes");
  list.textContent = "";
  for (const c of g.changes) list.append(el("li", { text: `${c.from} → ${c.to}: ${c.images}` }));
  document.body.dataset.shareSame = g.share_same === null ? "" : g.share_same.toFixed(4);
}

function drawCmpLabels(s) {
  const body = $("cmp-labels").querySelector("tbody");
  body.textContent = "";
  for (const r of s.per_label) {
    const tr = el("tr", { tabindex: "0", dataset: { label: r.label } },
      el("td", { text: r.label }), el("td", { text: String(r.images) }), el("td", { text: String(r.same) }),
      el("td", { text: pct(r.share) }));
    const pick = () => { cmp.label = r.label; reloadCmpGrid(); };
    tr.addEventListener("click", pick);
    tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") pick(); });
    body.append(tr);
  }
}

async function reloadCmpGrid() {
  cmp.gridGen += 1;
  cmp.next = null;
  cmp.loading = false;
  $("cmp-grid").textContent = "";
  $("cmp-end").hidden = true;
  $("cmp-label-clear").hidden = cmp.label === null;
  for (const tr of $("cmp-labels").querySelectorAll("tbody tr")) tr.classList.toggle("on", tr.dataset.label === cmp.label);
  await loadCmpPage(cmp.gridGen, true);
}

async function loadCmpPage(gen, first = false) {
  if (cmp.loading || (!first && cmp.next === null) || cmp.a === null) return;
  cmp.loading = true;
  try {
    const page = await api("/api/compare/grid", { a: cmp.a, b: cmp.b, kind: cmp.kind, label: cmp.label,
      after: first ? null : cmp.next });
    if (gen !== cmp.gridGen) return;
    const grid = $("cmp-grid");
    for (const t of page.tiles) grid.append(tile(t));
    cmp.next = page.next;
    $("cmp-end").hidden = cmp.next !== null;
    $("cmp-grid-title").textContent = `${page.count} images ${cmp.a} (A) and ${cmp.b} (B) label differently`
      + (cmp.label === null ? "" : `, ${cmp.label} under A`) + ", the most confident first";
    document.body.dataset.disagree = String(page.count);
    document.body.dataset.tiles = String(grid.children.length);
  } finally {
    if (gen === cmp.gridGen) cmp.loading = false;
  }
}

// ------------------------------------------------------------------ duplicates

const dups = { kind: "image", next: null, loading: false, gen: 0 };

function initDuplicates() {
  $("dups-kind").addEventListener("change", () => { dups.kind = $("dups-kind").value; loadDups(); });
  new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadDupsPage(dups.gen).catch((e) => showError(e.message));
  }, { rootMargin: "400px" }).observe($("dups-sentinel"));
  loadDups();
}

async function loadDups() {
  dups.gen += 1;
  dups.next = null;
  dups.loading = false;
  $("dups-groups").textContent = "";
  $("dups-end").hidden = true;
  showError("");
  document.body.dataset.state = "loading";
  try { await loadDupsPage(dups.gen, true); } catch (e) { showError(e.message); }
  document.body.dataset.state = "ready";
}

async function loadDupsPage(gen, first = false) {
  if (dups.loading || (!first && dups.next === null)) return;
  dups.loading = true;
  try {
    const d = await api(`/api/duplicates?kind=${encodeURIComponent(dups.kind)}&after=${first ? 0 : dups.next}`);
    if (gen !== dups.gen) return;
    $("dups-none").hidden = d.ran;
    document.body.dataset.dups = d.ran ? String(d.total_groups) : "none";
    if (!d.ran) {
      $("dups-command").textContent = d.command;
      $("dups-summary").textContent = "";
      return;
    }
    $("dups-summary").textContent = d.total_groups === 0
      ? `no ${dups.kind} duplicate groups (\`${d.command}\` found none)`
      : `${d.total_groups} group${d.total_groups === 1 ? "" : "s"}, ${d.items} items: `
        + `\`curate filter --dedup\` keeps one of each group and leaves out ${d.removed}`;
    const box = $("dups-groups");
    for (const g of d.groups) box.append(group(g));
    dups.next = d.next;
    $("dups-end").hidden = dups.next !== null;
    document.body.dataset.groups = String(box.children.length);
  } finally {
    if (gen === dups.gen) dups.loading = false;
  }
}

function group(g) {
  const box = el("section", { class: "group", dataset: { group: String(g.group_id) } });
  const lowest = g.min_similarity === null ? "" : ` · lowest cosine to it ${g.min_similarity.toFixed(3)}`;
  box.append(el("h3", { text: `${g.size} items, the representative first${lowest}` }));
  const row = el("div", { class: "grid members" });
  for (const t of g.members) row.append(tile(t));
  if (g.size > g.members.length) row.append(el("div", { class: "more", text: `+${g.size - g.members.length} more` }));
  box.append(row);
  return box;
}

// ------------------------------------------------------------------ start

function showView() {
  document.body.dataset.view = PAGE_VIEW;
  for (const v of document.querySelectorAll(".view")) v.hidden = v.dataset.for !== PAGE_VIEW;
  for (const e of document.querySelectorAll(".for-browse")) e.hidden = PAGE_VIEW !== "browse";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === PAGE_VIEW) a.setAttribute("aria-current", "page");
  }
}

async function main() {
  showView();
  if (PAGE_VIEW === "review") {
    const review = await import("/static/review.js");
    review.start({ drawModel, showError });
    return;
  }
  wire();
  try {
    await loadOverview();
  } catch (e) {
    showError(e.message);
    document.body.dataset.state = "failed";
    return;
  }
  if (PAGE_VIEW === "compare") { initCompare(); return; }
  if (PAGE_VIEW === "duplicates") { initDuplicates(); return; }
  const like = /^#like=(\d+)$/.exec(location.hash);
  if (like) { view.search = { like: Number(like[1]) }; history.replaceState(null, "", "/"); }
  pollWarm();
  await reload();
}

main();
