// camlens folder gallery: thumbnails of the images under a folder of --root, their predicted
// class and probability (one request per image, with progress and Cancel), filters by class and,
// when the images sit in class sub-folders, by correct / wrong. A click opens the photo view.
"use strict";

const folder = new URLSearchParams(location.search).get("path") || "";
const items = [];  // {path, truth, figure, caption, label, probability}
let stop = null;

function truthOf(path) {
  // the class sub-folder right under the gallery's folder, if any
  const rest = folder ? path.slice(folder.length + 1) : path;
  const parts = rest.split("/");
  return parts.length > 1 ? parts[0] : null;
}

function matches(label, truth) {
  const names = label.toLowerCase().split(",").map((s) => s.trim());
  return names.includes(truth.toLowerCase().replace(/_/g, " ")) || names.includes(truth.toLowerCase());
}

function applyFilters() {
  const byClass = $("byclass").value, byTruth = $("bytruth").value;
  let shown = 0;
  for (const item of items) {
    const correct = item.label && item.truth ? matches(item.label, item.truth) : null;
    const visible = (!byClass || item.label === byClass) &&
      (!byTruth || (byTruth === "correct" ? correct === true : correct === false));
    item.figure.hidden = !visible;
    item.figure.className = correct === null ? "" : correct ? "correct" : "wrong";
    if (visible) shown += 1;
  }
  $("count").textContent = `${shown} of ${items.length} images`;
}

function refreshClasses() {
  const select = $("byclass"), current = select.value;
  const labels = [...new Set(items.filter((i) => i.label).map((i) => i.label))].sort();
  select.replaceChildren(Object.assign(document.createElement("option"), { value: "", textContent: "all" }),
    ...labels.map((l) => Object.assign(document.createElement("option"), { value: l, textContent: l })));
  select.value = labels.includes(current) ? current : "";
}

async function predictAll() {
  stop = new AbortController();
  $("run").disabled = true;
  $("cancel").disabled = false;
  let done = 0;
  try {
    for (const item of items) {
      if (item.label) { done += 1; continue; }
      const body = new FormData();
      body.append("path", item.path);
      body.append("top", "1");
      try {
        const answer = await (await api("/api/predict", { method: "POST", body, signal: stop.signal })).json();
        const best = answer.predictions[0];
        item.label = best ? best.label : "";
        item.caption.textContent = best ? `${best.label} ${(100 * best.probability).toFixed(1)}%` : "(no class)";
      } catch (err) {
        if (err.name === "AbortError") throw err;
        item.caption.textContent = err.message;
      }
      done += 1;
      $("progress").textContent = `${done} / ${items.length}`;
      refreshClasses();
      applyFilters();
    }
    $("progress").textContent = `${done} / ${items.length} predicted`;
  } catch (err) {
    $("progress").textContent = `cancelled at ${done} / ${items.length}`;
  } finally {
    $("run").disabled = false;
    $("cancel").disabled = true;
  }
}

async function setup() {
  $("where").textContent = folder ? `folder ${folder}` : "the root folder";
  const listing = await (await api(`/api/files?path=${encodeURIComponent(folder)}&recursive=true`)).json();
  if (listing.run) {
    const a = Object.assign(document.createElement("a"), { id: "runlink", href: `/run?path=${encodeURIComponent(folder)}`,
      textContent: "this folder is a camlens evaluate run: open its scores" });
    $("folders").appendChild(a);
  }
  for (const sub of listing.folders) {
    const a = Object.assign(document.createElement("a"), { href: `/gallery?path=${encodeURIComponent(sub)}`, textContent: sub + "/" });
    $("folders").appendChild(a);
  }
  for (const path of listing.images) {
    const figure = document.createElement("figure");
    const link = Object.assign(document.createElement("a"), { href: `/?path=${encodeURIComponent(path)}` });
    const img = Object.assign(document.createElement("img"), { loading: "lazy", alt: path,
      src: `/api/image?path=${encodeURIComponent(path)}&size=180` });
    link.appendChild(img);
    const caption = Object.assign(document.createElement("figcaption"), { textContent: path.split("/").pop() });
    figure.append(link, caption);
    $("thumbs").appendChild(figure);
    items.push({ path, truth: truthOf(path), figure, caption, label: null });
  }
  $("truthfilter").hidden = !items.some((i) => i.truth);
  applyFilters();
  $("run").addEventListener("click", predictAll);
  $("cancel").addEventListener("click", () => stop && stop.abort());
  $("byclass").addEventListener("change", applyFilters);
  $("bytruth").addEventListener("change", applyFilters);
  document.body.dataset.ready = "1";
}

setup().catch((err) => { showError(err.message); document.body.dataset.ready = "1"; });
