// maskformer serve: the web page. Plain JavaScript, no build step, no other hosts.
// Flow: image (file, drop, example) -> POST /predict?format=segments -> COCO RLE masks decoded here ->
// a segment index per pixel -> overlay canvas (opacity, highlight/hide by class) + legend + hover read-out.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null,     // GET /model
  file: null,      // the Blob last sent
  result: null,    // the last JSON answer
  segIndex: null,  // Int32Array [h*w]: segment index per pixel, -1 = none
  classState: {},  // label_id -> "highlight" | "hidden"
  photo: null,     // ImageData of the photo at the result's size
};

// ---------------------------------------------------------------------------------------- COCO RLE
// Compressed counts: 5-bit groups + 48, bit 0x20 = more groups, the count two back added from the third on.
// Runs are column-major, starting with 0s. Returns a row-major Uint8Array [h*w].
function rleDecode(rle) {
  const [h, w] = rle.size;
  const s = rle.counts;
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0, k = 0, more = true;
    while (more) {
      const c = s.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p++; k++;
      if (!more && (c & 0x10) && 5 * k < 32) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  const mask = new Uint8Array(h * w);
  let i = 0;
  counts.forEach((n, r) => {
    if (r % 2 === 1) {
      for (let j = i; j < i + n; j++) mask[(j % h) * w + Math.floor(j / h)] = 1;
    }
    i += n;
  });
  return mask;
}

// ---------------------------------------------------------------------------------------- model + examples
async function loadModel() {
  const info = await (await fetch("/model")).json();
  state.model = info;
  $("model-info").textContent =
    `${info.model} · ${info.arch} ${info.backbone} · ${info.classes.length} classes (${info.dataset})`;
  const task = $("task");
  for (const t of info.tasks) task.add(new Option(t, t, false, t === info.default_task));
  const examples = await (await fetch("/examples")).json();
  const box = $("examples");
  box.append(Object.assign(document.createElement("span"), { className: "dim", textContent: "examples:" }));
  for (const ex of examples) {
    const img = Object.assign(document.createElement("img"), { src: ex.url, alt: ex.name, title: ex.name });
    img.addEventListener("click", async () => run(await (await fetch(ex.url)).blob()));
    box.append(img);
  }
}

function colorOf(seg, k) {
  const c = state.model.classes[seg.label_id].color;
  if (state.result.task === "semantic") return c;
  const f = 1 + 0.18 * (((k * 7) % 5) - 2) / 2;  // things of one class: slightly different shades
  return c.map((v) => Math.max(0, Math.min(255, Math.round(v * f))));
}

// ---------------------------------------------------------------------------------------- predict
function predictUrl(format) {
  const q = new URLSearchParams({ task: $("task").value, format, threshold: $("threshold").value || "0.5" });
  return `/predict?${q}`;
}

async function run(blob) {
  if (!blob) return;
  state.file = blob;
  document.body.dataset.state = "busy";
  $("status").textContent = "running…";
  const t0 = performance.now();
  try {
    const [answer, bitmap] = await Promise.all([
      fetch(predictUrl("segments"), { method: "POST", body: blob, headers: { "Content-Type": "application/octet-stream" } }),
      createImageBitmap(blob, { imageOrientation: "from-image" }),
    ]);
    const body = await answer.json();
    if (!answer.ok) throw new Error(body.error || answer.statusText);
    state.result = body;
    state.classState = {};
    drawPhoto(bitmap);
    buildIndex();
    render();
    buildLegend();
    const n = body.segments.length;
    $("status").textContent = `${n} segment${n === 1 ? "" : "s"} · ${Math.round(performance.now() - t0)} ms`;
    for (const id of ["download-overlay", "download-label", "download-json"]) $(id).disabled = false;
    document.body.dataset.state = "ready";
  } catch (err) {
    $("status").textContent = `error: ${err.message}`;
    document.body.dataset.state = "error";
  }
}

function drawPhoto(bitmap) {
  const { width: w, height: h } = state.result;
  for (const id of ["photo", "overlay"]) Object.assign($(id), { width: w, height: h });
  const ctx = $("photo").getContext("2d");
  ctx.drawImage(bitmap, 0, 0, w, h);
  state.photo = ctx.getImageData(0, 0, w, h);
}

function buildIndex() {
  const { width: w, height: h, segments } = state.result;
  const index = new Int32Array(w * h).fill(-1);
  for (let k = segments.length - 1; k >= 0; k--) {  // best instance painted last, on top
    const mask = rleDecode(segments[k].rle);
    for (let i = 0; i < mask.length; i++) if (mask[i]) index[i] = k;
  }
  state.segIndex = index;
}

// ---------------------------------------------------------------------------------------- drawing
function render() {
  const { width: w, height: h, segments } = state.result;
  const alpha = $("opacity").value / 100;
  const anyHighlight = Object.values(state.classState).includes("highlight");
  const colors = segments.map((s, k) => colorOf(s, k));
  const weights = segments.map((s) => {
    const st = state.classState[s.label_id];
    if (st === "hidden") return 0;
    if (anyHighlight && st !== "highlight") return alpha * 0.2;
    return st === "highlight" ? Math.min(1, alpha + 0.25) : alpha;
  });
  const src = state.photo.data;
  const out = new ImageData(w, h);
  const dst = out.data, index = state.segIndex;
  for (let i = 0; i < w * h; i++) {
    const k = index[i], o = 4 * i;
    const a = k >= 0 ? weights[k] : 0;
    const c = k >= 0 ? colors[k] : null;
    const edge = k >= 0 && a > 0 && ((i % w < w - 1 && index[i + 1] !== k) || (i + w < w * h && index[i + w] !== k));
    for (let ch = 0; ch < 3; ch++) dst[o + ch] = edge ? 255 : a ? (1 - a) * src[o + ch] + a * c[ch] : src[o + ch];
    dst[o + 3] = 255;
  }
  $("overlay").getContext("2d").putImageData(out, 0, 0);
}

function buildLegend() {
  const byClass = new Map();
  state.result.segments.forEach((s) => {
    const e = byClass.get(s.label_id) || { label: s.label, id: s.label_id, n: 0, area: 0 };
    e.n++; e.area += s.area;
    byClass.set(s.label_id, e);
  });
  const list = $("legend");
  list.replaceChildren();
  for (const e of [...byClass.values()].sort((a, b) => b.area - a.area)) {
    const li = document.createElement("li");
    li.dataset.labelId = e.id;
    li.dataset.label = e.label;
    const sw = Object.assign(document.createElement("span"), { className: "swatch" });
    sw.style.background = `rgb(${state.model.classes[e.id].color.join(",")})`;
    const name = Object.assign(document.createElement("span"), { className: "name", textContent: e.label });
    const pct = (100 * e.area) / (state.result.width * state.result.height);
    const count = Object.assign(document.createElement("span"), {
      className: "count", textContent: (e.n > 1 ? `${e.n}× · ` : "") + `${pct.toFixed(1)}%`,
    });
    li.append(sw, name, count);
    li.addEventListener("click", () => cycleClass(e.id, li));
    list.append(li);
  }
}

function cycleClass(id, li) {
  const next = { undefined: "highlight", highlight: "hidden", hidden: undefined }[state.classState[id]];
  if (next) state.classState[id] = next; else delete state.classState[id];
  li.classList.toggle("highlight", next === "highlight");
  li.classList.toggle("hidden", next === "hidden");
  render();
}

function hover(ev) {
  if (!state.result) return;
  const c = $("overlay"), r = c.getBoundingClientRect();
  const x = Math.floor(((ev.clientX - r.left) * c.width) / r.width);
  const y = Math.floor(((ev.clientY - r.top) * c.height) / r.height);
  const k = x >= 0 && y >= 0 && x < c.width && y < c.height ? state.segIndex[y * c.width + x] : -1;
  const info = $("hover-info");
  if (k < 0) {
    info.textContent = "no segment";
    info.classList.remove("on");
    return;
  }
  const s = state.result.segments[k];
  info.textContent = s.score === null ? s.label : `${s.label} · score ${s.score.toFixed(3)}`;
  info.classList.add("on");
}

// ---------------------------------------------------------------------------------------- downloads
function save(blob, name) {
  const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: name });
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function downloadLabel() {
  const answer = await fetch(predictUrl("png"), { method: "POST", body: state.file });
  if (answer.ok) save(await answer.blob(), `${state.result.task}.png`);
}

// ---------------------------------------------------------------------------------------- wiring
function wire() {
  const drop = $("drop");
  $("file-input").addEventListener("change", (e) => run(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    run(e.dataTransfer.files[0]);
  });
  $("task").addEventListener("change", () => run(state.file));
  $("threshold").addEventListener("change", () => run(state.file));
  $("opacity").addEventListener("input", () => state.result && render());
  $("overlay").addEventListener("mousemove", hover);
  $("download-overlay").addEventListener("click", () => $("overlay").toBlob((b) => save(b, "overlay.png")));
  $("download-json").addEventListener("click", () =>
    save(new Blob([JSON.stringify(state.result, null, 1)], { type: "application/json" }), "segments.json"));
  $("download-label").addEventListener("click", downloadLabel);
}

wire();
loadModel().catch((err) => { $("model-info").textContent = `cannot read /model: ${err.message}`; });
