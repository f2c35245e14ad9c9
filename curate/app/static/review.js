// curate app, the review view (/review; `curate review` opens it): one image at a time,
// one key or one click per mark. Every mark is POSTed at once and stored by the server
// (the review journal, fsynced) before it answers; marks waiting for an answer stay queued
// (and are retried) so a slow or restarted server loses nothing. All text from the
// collection goes in with textContent, never as HTML. A module: app.js imports it.

const KEYS = {
  h: "hit", y: "hit", 1: "hit",
  m: "miss", n: "miss", 2: "miss",
  s: "skip", " ": "skip", 3: "skip",
};
const PREFETCH = 4;

let items = [];
let pos = 0;
// A sequential review (curate sample --target-width): a class is done once its Wilson
// interval is at most targetWidth wide after at least minMarks marks (the server sends
// z, the rule's constants; curate/validate/intervals.py has the same rule).
let targetWidth = null;
let z = 1.959963984540054;
let minMarks = 10;
let progress = { total: 0, done: 0, left: 0, hits: 0, misses: 0, skips: 0 };
const queue = [];      // marks not yet acknowledged by the server, in order
let sending = false;

const $ = (id) => document.getElementById(id);

function wilson(h, n) {
  if (n === 0) return [0, 1];
  const p = h / n, z2 = z * z, d = 1 + z2 / n;
  const c = (p + z2 / (2 * n)) / d;
  const half = z * Math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / d;
  return [Math.max(0, c - half), Math.min(1, c + half)];
}

function classStats(label) {
  const c = { label, items: 0, hits: 0, misses: 0, skips: 0 };
  for (const it of items) {
    if (it.label !== label) continue;
    c.items++;
    if (it.mark === "hit") c.hits++;
    else if (it.mark === "miss") c.misses++;
    else if (it.mark === "skip") c.skips++;
  }
  c.n = c.hits + c.misses;
  [c.low, c.high] = wilson(c.hits, c.n);
  c.done = targetWidth !== null &&
    ((c.n >= minMarks && ruleWidth(c.hits, c.n) <= targetWidth + 1e-12) || c.n + c.skips >= c.items);
  return c;
}

function ruleWidth(h, n) {
  // intervals.sequential_width: Wilson's width at the Agresti-Coull share, at least the plain one
  if (n === 0) return 1;
  const pt = (h + z * z / 2) / (n + z * z);
  const [a, b] = wilson(pt * n, n), [c, d] = wilson(h, n);
  return Math.max(b - a, d - c);
}

function needed(c) {
  // marks still likely needed if the share stays where the marks put it (one half before any)
  if (c.done) return 0;
  const p = c.n > 0 ? c.hits / c.n : 0.5;
  let m = Math.max(c.n, 1);
  const width = (k) => ruleWidth(Math.round(p * k), k);
  while (m < 100000 && width(m) > targetWidth) m = Math.ceil(m * 1.05) + 1;
  let lo = Math.max(c.n, 1), hi = m;
  while (lo < hi) { const mid = Math.floor((lo + hi) / 2); if (width(mid) <= targetWidth) hi = mid; else lo = mid + 1; }
  return Math.min(Math.max(lo - c.n, minMarks - c.n, 1), c.items - c.n - c.skips);
}

function pctText(c) {
  if (c.n === 0) return "no marks yet";
  const est = Math.round(100 * c.hits / c.n);
  return `${est}% (${Math.floor(100 * c.low + 1e-9)}-${Math.ceil(100 * c.high - 1e-9)}%) from ${c.n} marks`;
}

function firstUnmarked(from) {
  // In a sequential review the classes with enough marks are passed over: the marks of a
  // class stay the first ones of its random order.
  const done = {};
  const open = (it) => !it.mark && !(done[it.label] ??= classStats(it.label).done);
  for (let i = from; i < items.length; i++) if (open(items[i])) return i;
  for (let i = 0; i < from && i < items.length; i++) if (open(items[i])) return i;
  return items.length;  // all marked (or every class has enough): the "finished" screen
}

function showClasses() {
  const list = $("classes");
  list.textContent = "";
  const labels = [...new Set(items.map((it) => it.label))];
  let doneCount = 0;
  for (const label of labels) {
    const c = classStats(label);
    if (c.done) doneCount++;
    const li = document.createElement("li");
    li.dataset.label = label;
    li.dataset.done = String(c.done);
    li.className = c.done ? "done" : "";
    let text = `${label}: ${pctText(c)}`;
    if (targetWidth !== null) text += c.done ? " · enough" : ` · ~${needed(c)} more`;
    li.textContent = text;
    list.appendChild(li);
  }
  document.body.dataset.classesDone = String(doneCount);
  return labels.length;
}

function localProgress() {
  // What the page knows, including marks still in flight; the server's answer replaces it.
  const p = { total: items.length, hits: 0, misses: 0, skips: 0 };
  for (const it of items) {
    if (it.mark === "hit") p.hits++;
    else if (it.mark === "miss") p.misses++;
    else if (it.mark === "skip") p.skips++;
  }
  p.done = p.hits + p.misses + p.skips;
  p.left = p.total - p.done;
  return p;
}

function showProgress() {
  const p = localProgress();
  $("progress").textContent = `done ${p.done} · left ${p.left} · hits ${p.hits} · misses ${p.misses} · skips ${p.skips}`;
  $("bar-done").style.width = p.total ? `${(100 * p.done) / p.total}%` : "0";
  document.body.dataset.done = String(p.done);
  document.body.dataset.left = String(p.left);
}

function showSave() {
  const el = $("save");
  if (queue.length === 0) { el.className = "saved"; el.textContent = "all marks saved"; }
  else if (el.className !== "failed") { el.className = "saving"; el.textContent = `saving ${queue.length}…`; }
}

function render() {
  showProgress();
  showClasses();
  document.body.dataset.position = String(pos);
  if (pos >= items.length) {
    $("finished").hidden = false;
    const p = localProgress();
    $("finished-summary").textContent = `${p.total} images: ${p.hits} hits, ${p.misses} misses, ${p.skips} skipped.`
      + (targetWidth !== null ? ` Every class's interval is at most ±${(50 * targetWidth).toFixed(1)} points wide (or its images are all marked).` : "");
    document.body.dataset.state = "finished";
    return;
  }
  $("finished").hidden = true;
  document.body.dataset.state = "reviewing";
  const it = items[pos];
  const img = $("image");
  $("image-error").hidden = true;
  img.hidden = false;
  img.src = `/api/image/${it.id}`;
  img.alt = it.label;
  $("label").textContent = it.label + "?";
  $("prob").textContent = `p = ${it.prob.toFixed(3)}`;
  // Position inside the label's group: the set is shown class by class.
  let first = pos, last = pos;
  while (first > 0 && items[first - 1].label === it.label) first--;
  while (last < items.length - 1 && items[last + 1].label === it.label) last++;
  $("position").textContent = `${pos - first + 1} / ${last - first + 1} of this class`;
  const c = classStats(it.label);
  $("class-estimate").textContent = `this class: ${pctText(c)}` + (targetWidth === null ? ""
    : c.done ? " · enough marks" : ` · target ±${(50 * targetWidth).toFixed(1)} points: about ${needed(c)} more`);
  $("caption").textContent = it.caption;
  const cm = $("current-mark");
  cm.className = it.mark || "";
  cm.textContent = it.mark ? `marked: ${it.mark}` : "";
  for (let i = pos + 1; i <= pos + PREFETCH && i < items.length; i++) new Image().src = `/api/image/${items[i].id}`;
}

async function flush() {
  if (sending) return;
  sending = true;
  try {
    while (queue.length) {
      const m = queue[0];
      let res;
      try {
        res = await fetch("/api/review/mark", {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ id: m.id, mark: m.mark }),
        });
      } catch (e) {
        res = null;
      }
      if (res && res.ok) {
        const body = await res.json();
        progress = body.progress;
        queue.shift();
        $("save").className = "saving";
        showSave();
      } else {
        const why = res ? (await res.json().catch(() => ({}))).error || res.status : "server unreachable";
        $("save").className = "failed";
        $("save").textContent = `NOT SAVED (${why}): ${queue.length} mark(s) waiting, retrying…`;
        if (res && res.status >= 400 && res.status < 500) { queue.shift(); continue; }  // will never succeed
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
  } finally {
    sending = false;
  }
}

function mark(value) {
  if (pos >= items.length) return;
  const it = items[pos];
  it.mark = value;
  queue.push({ id: it.id, mark: value });
  showSave();
  flush();
  // Carry on with the next item nobody has marked (after going back to fix a mark, this
  // returns to where the reviewer stopped).
  const next = firstUnmarked(pos + 1);
  pos = next;
  render();
}

function onKey(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;  // leave browser shortcuts alone
  const k = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
  if (k in KEYS) { ev.preventDefault(); mark(KEYS[k]); return; }
  if (k === "b" || k === "Backspace" || k === "ArrowLeft") {
    ev.preventDefault();
    if (pos > 0) { pos = Math.min(pos, items.length) - 1; render(); }
  } else if (k === "ArrowRight") {
    ev.preventDefault();
    if (pos < items.length) { pos++; render(); }
  } else if (k === "u") {
    ev.preventDefault();
    pos = firstUnmarked(0);
    render();
  }
}

async function load(shared) {
  const res = await fetch("/api/review/items");
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  if (body.set === null) {       // `curate app` on a workspace with no review set yet
    $("review-none").hidden = false;
    $("review-main").hidden = true;
    $("review-none-why").textContent = body.error || "no review set";
    $("progress").textContent = "";
    document.body.dataset.state = "no-set";
    return;
  }
  shared.drawModel(body.model);
  items = body.items;
  progress = body.progress;
  targetWidth = body.target_width ?? null;
  if (body.z) z = body.z;
  if (body.min_marks) minMarks = body.min_marks;
  document.title = `curate review: ${body.set}`;
  $("title").textContent = `review · ${body.set} (${body.source} predictions)`;
  pos = firstUnmarked(0);  // reopening continues where the last session stopped
  showSave();
  render();
  document.addEventListener("keydown", onKey);
  for (const b of document.querySelectorAll("#review-buttons .rv")) {
    b.addEventListener("click", () => { b.blur(); mark(b.dataset.mark); });
  }
  $("review-back").addEventListener("click", () => { if (pos > 0) { pos = Math.min(pos, items.length) - 1; render(); } });
}

export function start(shared) {
  $("image").addEventListener("error", () => {
    $("image").hidden = true;
    $("image-error").hidden = false;
  });
  window.addEventListener("beforeunload", (ev) => {
    if (queue.length) { ev.preventDefault(); ev.returnValue = ""; }
  });
  load(shared).catch((e) => {
    document.body.dataset.state = "error";
    $("progress").textContent = `could not load the review set: ${e}`;
  });
}
