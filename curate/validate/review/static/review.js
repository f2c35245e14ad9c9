// curate review page: one image at a time, one key per mark.
// Every mark is POSTed at once and stored by the server before it answers; marks
// waiting for an answer stay queued (and are retried) so a slow or restarted server
// loses nothing. All text from the collection goes in with textContent, never as HTML.
"use strict";

const KEYS = {
  h: "hit", y: "hit", 1: "hit",
  m: "miss", n: "miss", 2: "miss",
  s: "skip", " ": "skip", 3: "skip",
};
const PREFETCH = 4;

let items = [];
let pos = 0;
let progress = { total: 0, done: 0, left: 0, hits: 0, misses: 0, skips: 0 };
const queue = [];      // marks not yet acknowledged by the server, in order
let sending = false;

const $ = (id) => document.getElementById(id);

function firstUnmarked(from) {
  for (let i = from; i < items.length; i++) if (!items[i].mark) return i;
  for (let i = 0; i < from && i < items.length; i++) if (!items[i].mark) return i;
  return items.length;  // all marked: the "finished" screen
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
  document.body.dataset.position = String(pos);
  if (pos >= items.length) {
    $("finished").hidden = false;
    const p = localProgress();
    $("finished-summary").textContent = `${p.total} images: ${p.hits} hits, ${p.misses} misses, ${p.skips} skipped.`;
    document.body.dataset.state = "finished";
    return;
  }
  $("finished").hidden = true;
  document.body.dataset.state = "reviewing";
  const it = items[pos];
  const img = $("image");
  $("image-error").hidden = true;
  img.hidden = false;
  img.src = `/image/${it.id}`;
  img.alt = it.label;
  $("label").textContent = it.label + "?";
  $("prob").textContent = `p = ${it.prob.toFixed(3)}`;
  // Position inside the label's group: the set is shown class by class.
  let first = pos, last = pos;
  while (first > 0 && items[first - 1].label === it.label) first--;
  while (last < items.length - 1 && items[last + 1].label === it.label) last++;
  $("position").textContent = `${pos - first + 1} / ${last - first + 1} of this class`;
  $("caption").textContent = it.caption;
  const cm = $("current-mark");
  cm.className = it.mark || "";
  cm.textContent = it.mark ? `marked: ${it.mark}` : "";
  for (let i = pos + 1; i <= pos + PREFETCH && i < items.length; i++) new Image().src = `/image/${items[i].id}`;
}

async function flush() {
  if (sending) return;
  sending = true;
  try {
    while (queue.length) {
      const m = queue[0];
      let res;
      try {
        res = await fetch("/api/mark", {
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

async function load() {
  const res = await fetch("/api/items");
  const body = await res.json();
  items = body.items;
  progress = body.progress;
  document.title = `curate review: ${body.set}`;
  $("title").textContent = `curate review · ${body.set} (${body.source} predictions)`;
  pos = firstUnmarked(0);  // reopening continues where the last session stopped
  showSave();
  render();
  document.addEventListener("keydown", onKey);
}

$("image").addEventListener("error", () => {
  $("image").hidden = true;
  $("image-error").hidden = false;
});
window.addEventListener("beforeunload", (ev) => {
  if (queue.length) { ev.preventDefault(); ev.returnValue = ""; }
});
load().catch((e) => {
  document.body.dataset.state = "error";
  $("progress").textContent = `could not load the review set: ${e}`;
});
