// camlens web app: one photo, its predictions, and maps coloured in the browser.
// Each map arrives once as a grayscale PNG (the min-max scaled map at the photo's size);
// colormap and opacity changes recolour it here, with no request.
"use strict";

const state = { source: null, name: "", picture: null, maps: [], lut: null, target: null, methods: [], layers: [] };

function form(extra) {
  const data = new FormData();
  if (state.source instanceof Blob) data.append("image", state.source, state.name);
  else data.append("path", state.source);
  for (const [key, value] of Object.entries(extra)) if (value !== null && value !== "") data.append(key, value);
  return data;
}

async function useSource(source, name) {
  showError("");
  state.source = source;
  state.name = name;
  try {
    const predicted = await (await api("/api/predict", { method: "POST", body: form({ top: 5 }) })).json();
    const url = source instanceof Blob ? URL.createObjectURL(source) : `/api/image?path=${encodeURIComponent(source)}&size=4096`;
    state.picture = await loadImage(url);
    $("picture").src = url;
    $("photo").hidden = false;
    showPredictions(predicted.predictions);
    await explain(null);
  } catch (err) {
    showError(err.message);
  }
}

function showPredictions(predictions) {
  const rows = $("predrows");
  rows.replaceChildren();
  for (const [i, p] of predictions.entries()) {
    const tr = document.createElement("tr");
    tr.className = "pred";
    tr.dataset.index = p.index;
    const pct = p.probability === null ? "" : (100 * p.probability).toFixed(2) + "%";
    const bar = Object.assign(document.createElement("span"), { className: "bar" });
    bar.style.width = `${Math.round(100 * (p.probability || 0))}px`;
    const cells = [String(i + 1), `${p.index} ${p.label}`, pct].map((text) => Object.assign(document.createElement("td"), { textContent: text }));
    cells[2].prepend(bar);
    tr.append(...cells);
    tr.addEventListener("click", () => explain(String(p.index)));
    rows.appendChild(tr);
  }
  $("predictions").hidden = false;
}

function chosen(selectId) {
  return Array.from($(selectId).selectedOptions).map((o) => o.value);
}

function chosenMethods() {
  return Array.from(document.querySelectorAll("#methods input:checked")).map((i) => i.value);
}

async function explain(target) {
  if (state.source === null) return;
  showError("");
  state.target = target;
  const methods = chosenMethods();
  const layers = chosen("layers");
  try {
    const body = form({ method: methods.join(",") || "gradcam", layer: layers.join(","), target: target || "", top: 5 });
    const result = await (await api("/api/explain", { method: "POST", body })).json();
    state.maps = await Promise.all(result.explanations.map(async (e) => ({ info: e, gray: await grayOf(e.map) })));
    state.methods = methods;
    state.layers = layers;
    drawGrid();
    $("command").textContent = command();
    $("resulttitle").textContent = result.explanations.length ? `Maps: ${result.explanations[0].target.label}` : "Maps";
    $("results").hidden = false;
  } catch (err) {
    showError(err.message);
  }
}

async function loadColormap() {
  const name = $("colormap").value;
  state.lut = (await (await api(`/api/colormap/${encodeURIComponent(name)}`)).json()).lut;
}

function paint(canvas, gray) {
  const w = gray.width, h = gray.height;
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  blend(ctx, state.picture, gray, state.lut, parseFloat($("alpha").value));
  const threshold = parseFloat($("boxt").value);
  const box = threshold > 0 ? largestBox(gray, threshold) : null;
  canvas.dataset.box = box ? box.join(",") : "";
  if (box) {
    ctx.strokeStyle = "#e00";
    ctx.lineWidth = Math.max(2, Math.round(w / 200));
    ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
  }
}

// The box around the largest 8-connected region where the scaled map is at least `threshold`
// (the CAM paper's rule, as camlens.evaluation.boxes.boxes_from_map): [x0, y0, x1, y1], pixel
// edges, maxima exclusive; null when no pixel is above.
function largestBox(gray, threshold) {
  const w = gray.width, h = gray.height, d = gray.data, cut = threshold * 255 - 0.5;
  const seen = new Uint8Array(w * h), stack = new Int32Array(w * h);
  let best = null, bestCount = 0;
  for (let start = 0; start < w * h; start++) {
    if (seen[start] || d[4 * start] < cut) continue;
    let top = 0, count = 0, x0 = w, y0 = h, x1 = -1, y1 = -1;
    stack[top++] = start;
    seen[start] = 1;
    while (top) {
      const p = stack[--top], x = p % w, y = (p - x) / w;
      count++;
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
      for (let dy = -1; dy <= 1; dy++) for (let dx = -1; dx <= 1; dx++) {
        const nx = x + dx, ny = y + dy, q = ny * w + nx;
        if (nx >= 0 && ny >= 0 && nx < w && ny < h && !seen[q] && d[4 * q] >= cut) { seen[q] = 1; stack[top++] = q; }
      }
    }
    if (count > bestCount) { bestCount = count; best = [x0, y0, x1 + 1, y1 + 1]; }
  }
  return best;
}

function drawGrid() {
  const grid = $("grid");
  grid.replaceChildren();
  for (const [i, map] of state.maps.entries()) {
    const figure = document.createElement("figure");
    const canvas = document.createElement("canvas");
    canvas.dataset.map = i;
    paint(canvas, map.gray);
    const caption = document.createElement("figcaption");
    const title = document.createElement("div");
    title.textContent = map.info.title;
    caption.appendChild(title);
    caption.appendChild(link("overlay.png", () => canvas.toBlob((b) => save(b, `${map.info.file}.png`))));
    caption.appendChild(link("map.npy", () => downloadRaw(map.info)));
    caption.appendChild(link("json", () => save(new Blob([JSON.stringify(withoutMap(map.info), null, 2)],
      { type: "application/json" }), `${map.info.file}.json`)));
    figure.append(canvas, caption);
    grid.appendChild(figure);
  }
}

function withoutMap(info) {
  const copy = { ...info };
  delete copy.map;
  return copy;
}

function repaint() {
  for (const canvas of document.querySelectorAll("#grid canvas")) paint(canvas, state.maps[canvas.dataset.map].gray);
  if (state.source !== null) $("command").textContent = command();
}

function link(text, action) {
  const a = document.createElement("a");
  a.href = "#";
  a.textContent = text;
  a.addEventListener("click", (event) => { event.preventDefault(); action(); });
  return a;
}

function save(blob, filename) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  a.click();
}

async function downloadRaw(info) {
  try {
    const body = form({ method: info.method, layer: info.layer, target: state.target || "", output: "npy" });
    save(await (await api("/api/explain", { method: "POST", body })).blob(), `${info.file}.npy`);
  } catch (err) {
    showError(err.message);
  }
}

function quote(text) {
  return /^[\w.,:/+-]+$/.test(text) ? text : `'${text.replace(/'/g, "'\\''")}'`;
}

function command() {
  const parts = ["camlens", "explain", quote(state.source instanceof Blob ? state.name : state.source)];
  if (state.methods.length) parts.push("--method", quote(state.methods.join(",")));
  if (state.layers.length) parts.push("--layer", quote(state.layers.join(",")));
  if (state.target) parts.push("--target", quote(state.target));
  parts.push("--colormap", quote($("colormap").value), "--alpha", $("alpha").value);
  return parts.join(" ");
}

async function setup() {
  const health = await (await api("/api/health")).json();
  $("model").textContent = `${health.model}, ${health.classes} classes`;
  $("folderlink").hidden = !health.root;
  const methods = await (await api("/api/methods")).json();
  for (const m of methods) {
    const label = document.createElement("label");
    label.title = `${m.paper}: ${m.formula}`;
    const box = Object.assign(document.createElement("input"), { type: "checkbox", value: m.name, checked: m.name === "gradcam" });
    label.append(box, ` ${m.title} (${m.name})`);
    $("methods").appendChild(label);
  }
  const layers = await (await api("/api/layers")).json();
  for (const layer of layers.layers) {
    const option = document.createElement("option");
    option.value = layer.name;
    option.textContent = layer.name === layers.default ? `${layer.name} (automatic)` : layer.name;
    $("layers").appendChild(option);
  }
  for (const name of await (await api("/api/samples")).json()) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = name;
    button.addEventListener("click", async () => {
      const blob = await (await api(`/api/samples/${name}`)).blob();
      useSource(blob, `${name}.png`);
    });
    $("samples").appendChild(button);
  }
  await loadColormap();
}

function wire() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) useSource(file, file.name);
  });
  $("file").addEventListener("change", (e) => { const f = e.target.files[0]; if (f) useSource(f, f.name); });
  $("alpha").addEventListener("input", repaint);
  $("boxt").addEventListener("input", () => {
    const t = parseFloat($("boxt").value);
    $("boxtv").textContent = t > 0 ? t.toFixed(2) : "off";
    repaint();
  });
  $("colormap").addEventListener("change", async () => { await loadColormap(); repaint(); });
  $("classq").addEventListener("input", async (e) => {
    const q = e.target.value.trim();
    if (!q) return;
    const found = await (await api(`/api/classes?q=${encodeURIComponent(q)}&limit=12`)).json();
    $("classlist").replaceChildren(...found.map((c) => Object.assign(document.createElement("option"), { value: c.label })));
  });
  $("explainclass").addEventListener("click", () => explain($("classq").value.trim() || null));
  $("copy").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("command").textContent));
  document.querySelectorAll("#methods, #layers").forEach((el) => el.addEventListener("change", () => explain(state.target)));
  const params = new URLSearchParams(location.search);
  if (params.get("path")) useSource(params.get("path"), params.get("path"));
  document.body.dataset.ready = "1";
}

setup().then(wire).catch((err) => showError(err.message));
