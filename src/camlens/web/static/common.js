// What the pages share: element lookup, the error box, API calls whose failures carry the
// server's one-line {"error": ...} message, and colouring a grayscale map over a picture.
"use strict";

const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function api(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser cannot show this image"));
    img.src = src;
  });
}

// A map sent as a base64 grayscale PNG (0..255 for the min-max scaled map), as pixel data.
async function grayOf(base64png) {
  const img = await loadImage(`data:image/png;base64,${base64png}`);
  const canvas = new OffscreenCanvas(img.width, img.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, img.width, img.height);
}

// Draw `picture` at the map's size, then the map coloured by `lut` (256 RGB rows) over it at
// opacity `alpha`, as camlens.render.overlay does.
function blend(ctx, picture, gray, lut, alpha) {
  const w = gray.width, h = gray.height;
  ctx.drawImage(picture, 0, 0, w, h);
  const base = ctx.getImageData(0, 0, w, h);
  const out = base.data, g = gray.data;
  for (let i = 0; i < out.length; i += 4) {
    const c = lut[g[i]];
    out[i] = (1 - alpha) * out[i] + alpha * c[0];
    out[i + 1] = (1 - alpha) * out[i + 1] + alpha * c[1];
    out[i + 2] = (1 - alpha) * out[i + 2] + alpha * c[2];
  }
  ctx.putImageData(base, 0, 0);
}
