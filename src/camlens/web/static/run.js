// camlens evaluate run: the scores table (ranked by any column), the run's curves and examples,
// and its images one row each with every method's scores, filtered, sorted by any score and
// paged. A row opens the image with its true boxes (green), each method's box at the protocol's
// threshold (red) and, when the served model is the run's, each method's map at the run's layer.
"use strict";

const folder = new URLSearchParams(location.search).get("path") || "";
const view = { run: null, offset: 0, limit: 25, lut: null, rank: null, asked: 0, opened: 0 };
const PER_IMAGE = {
  iou: "IoU", pointing_hit: "Pointing", average_drop: "Drop", increase: "Increase",
  deletion_auc: "Deletion AUC", insertion_auc: "Insertion AUC",
};

function cell(text, tag = "td") {
  return Object.assign(document.createElement(tag), { textContent: text });
}

function option(value, text) {
  return Object.assign(document.createElement("option"), { value, textContent: text });
}

function summaryText(key, value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "-";
  return key.endsWith("_auc") ? value.toFixed(3) : value.toFixed(1);
}

function rowText(key, value) {
  if (value === null || value === undefined) return "-";
  if (key === "pointing_hit") return value ? "hit" : "miss";
  if (key === "increase") return value ? "yes" : "no";
  return value.toFixed(3);
}

function drawScores() {
  const run = view.run, columns = run.columns;
  const head = document.createElement("tr");
  head.append(cell("method", "th"));
  for (const c of columns) {
    const th = cell(`${c.heading} ${c.better === "up" ? "↑" : "↓"}`, "th");
    th.className = "link";
    th.dataset.key = c.key;
    if (view.rank === c.key) th.classList.add("active");
    th.addEventListener("click", () => { view.rank = c.key; drawScores(); });
    head.append(th);
  }
  $("scores").tHead.replaceChildren(head);
  let methods = [...run.methods];
  const ranked = columns.find((c) => c.key === view.rank);
  if (ranked) {
    const value = (m) => run.scores[m][ranked.key] ?? (ranked.better === "up" ? -Infinity : Infinity);
    methods.sort((a, b) => (ranked.better === "up" ? value(b) - value(a) : value(a) - value(b)));
  }
  const best = {};
  for (const c of columns) {
    const values = run.methods.map((m) => run.scores[m][c.key]).filter((v) => v !== undefined && v !== null);
    best[c.key] = c.better === "up" ? Math.max(...values) : Math.min(...values);
  }
  $("scores").tBodies[0].replaceChildren(...methods.map((m) => {
    const tr = document.createElement("tr");
    tr.dataset.method = m;
    tr.append(cell(m));
    for (const c of columns) {
      const td = cell(summaryText(c.key, run.scores[m][c.key]));
      if (run.scores[m][c.key] === best[c.key]) td.className = "best";
      tr.append(td);
    }
    return tr;
  }));
}

function drawPictures() {
  const captions = { "curves.png": "Mean deletion and insertion curves", "examples.png": "Examples: true boxes green, boxes from the maps red" };
  $("pictures").replaceChildren(...view.run.pictures.map((name) => {
    const figure = document.createElement("figure");
    const img = Object.assign(document.createElement("img"), {
      src: `/api/run/picture?path=${encodeURIComponent(folder)}&name=${name}`, alt: captions[name] || name,
    });
    img.className = "runpicture";
    figure.append(img, cell(captions[name] || name, "figcaption"));
    return figure;
  }));
}

function better(key) {
  if (key in PER_IMAGE) return view.run.scores_per_image.find((s) => s.key === key).better;
  return key === "probability" ? "up" : "down";  // file order and image names: as listed
}

async function loadRows() {
  showError("");
  const sort = $("sort").value;
  const descending = sort && (better(sort) === "up") === ($("order").value === "best");
  const params = new URLSearchParams({
    path: folder, sort, method: $("method").value, descending: String(Boolean(descending)), show: $("show").value,
    q: $("query").value, offset: String(view.offset), limit: String(view.limit),
  });
  const asked = ++view.asked;  // an answer to an earlier choice that comes late is dropped
  try {
    const found = await (await api(`/api/run/rows?${params}`)).json();
    if (asked === view.asked) drawRows(found);
  } catch (err) {
    if (asked === view.asked) showError(err.message);
  }
}

function drawRows(found) {
  const method = $("method").value;
  const head = document.createElement("tr");
  head.append(...["", "image", "class", "predicted", ...Object.values(PER_IMAGE)].map((t) => cell(t, "th")));
  $("rows").tHead.replaceChildren(head);
  $("rows").tBodies[0].replaceChildren(...found.rows.map((row) => {
    const tr = document.createElement("tr");
    tr.className = "pred" + (row.correct === false ? " wrongrow" : "");
    tr.dataset.image = row.image;
    const thumb = document.createElement("td");
    if (row.path) {
      thumb.append(Object.assign(document.createElement("img"), {
        src: `/api/image?path=${encodeURIComponent(row.path)}&size=64`, alt: "", className: "thumb",
      }));
    }
    const pct = row.probability === null ? "" : ` (${(100 * row.probability).toFixed(1)}%)`;
    tr.append(thumb, cell(row.image), cell(row.label || "-"), cell(row.predicted + pct));
    for (const key of Object.keys(PER_IMAGE)) tr.append(cell(rowText(key, (row.scores[method] || {})[key])));
    tr.addEventListener("click", () => openRow(row));
    return tr;
  }));
  const last = Math.min(found.offset + view.limit, found.total);
  $("range").textContent = found.total ? `${found.offset + 1}-${last} of ${found.total} images` : "no image";
  $("prev").disabled = found.offset === 0;
  $("next").disabled = last >= found.total;
}

function strokeBoxes(ctx, boxes, scale, color) {
  ctx.strokeStyle = color;
  ctx.lineWidth = Math.max(2, Math.round(ctx.canvas.width / 150));
  for (const [x0, y0, x1, y1] of boxes) ctx.strokeRect(x0 * scale, y0 * scale, (x1 - x0) * scale, (y1 - y0) * scale);
}

async function openRow(row) {
  showError("");
  const run = view.run, opened = ++view.opened;
  $("detail").hidden = false;
  $("detailtitle").textContent = `${row.image}: ${row.label || "?"} -> ${row.predicted}`;
  $("views").replaceChildren();
  if (!row.path) {
    $("detailnote").textContent = "This image is not under the served folder, so it cannot be shown.";
    return;
  }
  $("detailnote").textContent = run.same_model
    ? `Computing the maps at layer ${run.layer}...`
    : `The served model is not this run's (${run.model || "not recorded"}): boxes only. ` +
      "Serve the run's model (camlens serve --model ... --weights ...) to see its maps.";
  try {
    const picture = await loadImage(`/api/image?path=${encodeURIComponent(row.path)}&size=4096`);
    let maps = {};
    if (run.same_model) {
      const body = new FormData();
      body.append("path", row.path);
      body.append("method", run.methods.join(","));
      body.append("layer", run.layer);
      if (row.target !== null) body.append("target", String(row.target));
      const result = await (await api("/api/explain", { method: "POST", body })).json();
      for (const e of result.explanations) maps[e.method] = await grayOf(e.map);
      if (opened !== view.opened) return;  // another row was opened meanwhile
      $("detailnote").textContent = `Maps of ${row.label ? "the true class" : "the predicted class"} at layer ${run.layer}; ` +
        "true boxes green, the method's box red.";
    }
    const scale = row.width ? picture.naturalWidth / row.width : 1;
    const views = [["image", null], ...run.methods.map((m) => [m, m])];
    $("views").replaceChildren(...views.map(([title, method]) => {
      const figure = document.createElement("figure");
      const canvas = document.createElement("canvas");
      canvas.width = picture.naturalWidth;
      canvas.height = picture.naturalHeight;
      canvas.dataset.method = method || "";
      const ctx = canvas.getContext("2d");
      if (method && maps[method]) blend(ctx, picture, maps[method], view.lut, 0.5);
      else ctx.drawImage(picture, 0, 0);
      strokeBoxes(ctx, row.true_boxes, scale, "#0c0");
      const found = method ? row.boxes[method] : null;
      if (found) strokeBoxes(ctx, [found], scale, "#e00");
      canvas.dataset.box = found ? found.join(",") : "";
      const scores = method ? Object.keys(PER_IMAGE).map((k) => `${PER_IMAGE[k]} ${rowText(k, row.scores[method][k])}`).join(", ") : "";
      const caption = cell(method ? `${title}: ${scores}` : title, "figcaption");
      figure.append(canvas, caption);
      return figure;
    }));
    $("detail").scrollIntoView({ block: "nearest" });
  } catch (err) {
    showError(err.message);
  }
}

async function setup() {
  view.run = await (await api(`/api/run?path=${encodeURIComponent(folder)}`)).json();
  const run = view.run;
  document.title = `camlens: ${run.title}`;
  $("title").textContent = run.title;
  $("folder").href = `/gallery?path=${encodeURIComponent(folder)}`;
  const accuracy = run.classification_accuracy === null ? "-" : `${run.classification_accuracy.toFixed(1)}%`;
  $("about").textContent = `${run.images} images, classification accuracy ${accuracy}, ${run.localized_images} with boxes; ` +
    `layer ${run.layer}; model ${run.model || "not recorded"}` + (run.failed.length ? `; ${run.failed.length} not evaluated` : "");
  drawScores();
  drawPictures();
  $("method").replaceChildren(...run.methods.map((m) => option(m, m)));
  $("sort").replaceChildren(option("", "file order"), option("image", "image"), option("probability", "probability"),
    ...Object.entries(PER_IMAGE).map(([k, t]) => option(k, t)));
  view.lut = (await (await api("/api/colormap/jet")).json()).lut;
  await loadRows();
}

function wire() {
  const reload = () => { view.offset = 0; loadRows(); };
  for (const id of ["method", "sort", "order", "show"]) $(id).addEventListener("change", reload);
  $("query").addEventListener("input", reload);
  $("prev").addEventListener("click", () => { view.offset = Math.max(0, view.offset - view.limit); loadRows(); });
  $("next").addEventListener("click", () => { view.offset += view.limit; loadRows(); });
  document.body.dataset.ready = "1";
}

setup().then(wire).catch((err) => showError(err.message));
