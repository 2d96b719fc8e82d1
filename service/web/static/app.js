// The Stride page: pick a model, give an image, draw the answer the /v1 API sends.
// Everything from the image or the model (labels, names, messages) goes into the page as text, never HTML.

const ROUTES = {
  classification: "/v1/classify",
  detection: "/v1/detect",
  instance_segmentation: "/v1/segment",
  semantic_segmentation: "/v1/segment",
  keypoints: "/v1/keypoints",
};
const TASK_TITLES = {
  classification: "Classification",
  detection: "Detection",
  instance_segmentation: "Instance segmentation",
  semantic_segmentation: "Semantic segmentation",
  keypoints: "Keypoints",
};
const KEY_STORAGE = "stride.apiKey"; // sessionStorage: the key leaves with the tab
const MAX_UPSCALE = 8; // small images are enlarged to be seen, up to this factor
const LOADING_RETRY_MS = 1000; // how often to look again while models are still loading
// Sizes in CSS pixels (times devicePixelRatio), so drawings read alike at any image size.
const LINE_PX = 3;
const FONT_PX = 13;
const PAD_PX = 3;
const JOINT_PX = 4;

const $ = (id) => document.getElementById(id);
const state = { style: null, models: new Map(), file: null, bitmap: null, busy: false };

function setState(value) {
  document.body.dataset.state = value;
}

function apiHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { "X-API-Key": key } : {};
}

async function errorText(response) {
  // The API's own words: {"error": {"code", "message"}}; anything else as the status line.
  try {
    const body = await response.json();
    if (body && body.error) return `${response.status} ${body.error.code}: ${body.error.message}`;
  } catch (_) {
    // not JSON: fall through
  }
  return `${response.status} ${response.statusText}`;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function showStatus(text) {
  $("status").textContent = text;
}

// ---- models ----

async function loadStyle() {
  const response = await fetch("/ui/style.json");
  if (!response.ok) throw new Error(await errorText(response));
  state.style = await response.json();
}

async function loadModels() {
  showError("");
  const response = await fetch("/v1/models", { headers: apiHeaders() });
  if (response.status === 401) {
    setState("needs-key");
    showError(`${await errorText(response)}\nEnter the service's API key above.`);
    return;
  }
  if (!response.ok) {
    setState("error");
    showError(await errorText(response));
    return;
  }
  const listing = await response.json();
  fillModelList(listing);
  if (listing.models.some((m) => m.status === "loading")) setTimeout(loadModels, LOADING_RETRY_MS);
}

function fillModelList(listing) {
  const select = $("model");
  const previous = select.value;
  select.replaceChildren();
  state.models.clear();
  const byTask = new Map();
  for (const model of listing.models) {
    if (model.status !== "ready" || !ROUTES[model.task]) continue;
    if (!byTask.has(model.task)) byTask.set(model.task, []);
    byTask.get(model.task).push(model);
    state.models.set(model.name, model);
  }
  for (const [task, models] of byTask) {
    const group = document.createElement("optgroup");
    group.label = TASK_TITLES[task] || task;
    for (const model of models) {
      const option = document.createElement("option");
      option.value = model.name;
      option.textContent = listing.defaults[task] === model.name ? `${model.name} (default)` : model.name;
      group.append(option);
    }
    select.append(group);
  }
  select.disabled = state.models.size === 0;
  if (state.models.size === 0) {
    const none = document.createElement("option");
    none.textContent = "no model is ready";
    select.append(none);
  } else if (state.models.has(previous)) {
    select.value = previous;
  }
  onModelChange(false);
  if (state.style) setState(state.bitmap ? "ready" : "idle");
}

function selectedModel() {
  return state.models.get($("model").value) || null;
}

function onModelChange(run) {
  const model = selectedModel();
  const task = model ? model.task : "";
  for (const label of $("params").querySelectorAll("label[data-tasks]")) {
    const used = label.dataset.tasks.split(" ").includes(task);
    label.hidden = !used;
    for (const input of label.querySelectorAll("input, select")) input.disabled = !used;
  }
  $("model-info").textContent = model ? describe(model) : "";
  if (run) runModel();
}

function describe(model) {
  const parts = [TASK_TITLES[model.task] || model.task];
  if (model.labels) parts.push(`${model.labels.length} classes`);
  if (model.input) parts.push(`input ${model.input.width}x${model.input.height}`);
  if (model.provider) parts.push(model.provider.replace("ExecutionProvider", ""));
  return parts.join(" · ");
}

function queryFor(model) {
  const query = new URLSearchParams({ model: model.name });
  for (const input of $("params").querySelectorAll("input, select")) {
    if (input.disabled) continue;
    if (input.type === "checkbox") {
      if (input.checked) query.set(input.name, "true");
    } else if (input.value.trim() !== "") {
      query.set(input.name, input.value.trim());
    }
  }
  return query;
}

// ---- image in ----

async function takeFile(file) {
  if (!file) return;
  showError("");
  try {
    // The API answers in upright pixels, so the picture is shown with its EXIF orientation applied too.
    state.bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (_) {
    state.bitmap = null;
  }
  state.file = file;
  $("file-name").textContent = file.name ? `${file.name} (${file.size} bytes)` : `${file.size} bytes`;
  $("run").disabled = false;
  // Undecodable here (e.g. TIFF in this browser) still goes to the API, which says what it thinks of it.
  await runModel();
}

function wireImageInputs() {
  $("file").addEventListener("change", (event) => takeFile(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    takeFile(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) takeFile(item.getAsFile());
  });
}

// ---- the request ----

async function runModel() {
  const model = selectedModel();
  if (!model || !state.file || state.busy) return;
  state.busy = true;
  setState("running");
  showError("");
  showStatus(`${model.name}: sending...`);
  const form = new FormData();
  form.append("file", state.file, state.file.name || "image");
  const started = performance.now();
  try {
    const response = await fetch(`${ROUTES[model.task]}?${queryFor(model)}`, {
      method: "POST",
      body: form,
      headers: apiHeaders(),
    });
    const roundTrip = performance.now() - started;
    showTimings(response.headers.get("Server-Timing"), roundTrip);
    if (!response.ok) {
      showError(await errorText(response));
      showStatus(`${model.name}: failed`);
      setState("error");
      return;
    }
    const answer = await response.json();
    $("json").textContent = JSON.stringify(answer, null, 2);
    await drawAnswer(answer);
    showStatus(`${answer.model}: ${summary(answer)} · request ${answer.request_id}`);
    setState("done");
  } catch (error) {
    showError(`the request did not complete: ${error.message}`);
    setState("error");
  } finally {
    state.busy = false;
  }
}

function summary(answer) {
  if (answer.predictions) return answer.predictions.length ? `${answer.predictions[0].label}` : "no classes";
  if (answer.detections) return `${answer.detections.length} detections`;
  if (answer.segmentation) return `${answer.classes.length} classes present`;
  if (answer.instances) return `${answer.instances.length} instances`;
  return "done";
}

function showTimings(header, roundTrip) {
  const body = $("timings").querySelector("tbody");
  body.replaceChildren();
  const rows = (header || "").split(",").map((part) => part.trim()).filter(Boolean).map((part) => {
    const [name, ...params] = part.split(";");
    const duration = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    return [name.trim(), duration ? Number(duration.slice(4)) : NaN];
  });
  rows.push(["round trip (browser)", roundTrip]);
  for (const [name, ms] of rows) {
    const row = body.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = Number.isFinite(ms) ? ms.toFixed(2) : "";
  }
  $("timings").hidden = false;
}

// ---- drawing (the same rules as service/tasks/drawing.py, colours from /ui/style.json) ----

function colorOf(classId) {
  const colors = state.style.colors;
  return colors[classId % colors.length];
}

function textColorOf(classId) {
  const colors = state.style.text_colors;
  return colors[classId % colors.length];
}

function rgbOf(hex) {
  const value = parseInt(hex.slice(1), 16);
  return [(value >> 16) & 255, (value >> 8) & 255, value & 255];
}

async function drawAnswer(answer) {
  const width = answer.image.width;
  const height = answer.image.height;
  const canvas = $("canvas");
  const ratio = window.devicePixelRatio || 1;
  const room = Math.max(200, $("stage").clientWidth);
  const scale = Math.min(room / width, MAX_UPSCALE, Math.max(1, 720 / height));
  canvas.width = Math.round(width * scale * ratio);
  canvas.height = Math.round(height * scale * ratio);
  canvas.style.width = `${canvas.width / ratio}px`;
  canvas.style.height = `${canvas.height / ratio}px`;
  const ctx = canvas.getContext("2d");
  const k = canvas.width / width; // image pixels -> canvas pixels
  const px = (css) => css * ratio;
  const size = px(FONT_PX);
  const pen = { ctx, k, size, line: px(LINE_PX), pad: px(PAD_PX), joint: px(JOINT_PX), font: `${size}px sans-serif` };
  ctx.imageSmoothingEnabled = k < 1; // enlarged small images keep their pixels sharp
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (state.bitmap) ctx.drawImage(state.bitmap, 0, 0, canvas.width, canvas.height);

  if (answer.predictions) {
    drawTopK(pen, answer.predictions);
  } else if (answer.segmentation) {
    await drawClassMap(pen, answer);
  } else if (answer.skeleton) {
    drawBoxes(pen, answer.instances);
    drawSkeletons(pen, answer);
  } else if (answer.instances) {
    for (const instance of answer.instances) await drawMask(pen, instance, width, height);
    drawBoxes(pen, answer.instances);
  } else if (answer.detections) {
    drawBoxes(pen, answer.detections);
  }
}

function boxPixels(box) {
  // First and last pixel columns/rows the box covers, as the Python side; the outline lies inside them.
  const x0 = Math.floor(box.x1);
  const y0 = Math.floor(box.y1);
  return [x0, y0, Math.max(x0 + 1, Math.ceil(box.x2)), Math.max(y0 + 1, Math.ceil(box.y2))];
}

function drawBoxes(pen, detections) {
  const { ctx, k, line } = pen;
  ctx.lineWidth = line;
  ctx.lineJoin = "miter";
  for (const d of detections) {
    ctx.strokeStyle = colorOf(d.class_id);
    if (d.obb && d.obb.corners) {
      ctx.beginPath();
      d.obb.corners.forEach(([x, y], i) => (i ? ctx.lineTo(x * k, y * k) : ctx.moveTo(x * k, y * k)));
      ctx.closePath();
      ctx.stroke();
    } else {
      const [x0, y0, x1, y1] = boxPixels(d.box);
      ctx.strokeRect(x0 * k + line / 2, y0 * k + line / 2, (x1 - x0) * k - line, (y1 - y0) * k - line);
    }
  }
  for (const d of detections) drawLabel(pen, d); // after every outline, so no outline crosses a label
}

function drawLabel(pen, d) {
  const { ctx, k, pad, font } = pen;
  ctx.font = font;
  ctx.textBaseline = "top";
  const text = `${d.label} ${d.score.toFixed(2)}`;
  const tagWidth = ctx.measureText(text).width + 2 * pad;
  const tagHeight = lineHeight(pen);
  let [x, y] = [d.box.x1 * k, d.box.y1 * k];
  if (d.obb && d.obb.corners) {
    const top = [...d.obb.corners].sort((a, b) => a[1] - b[1] || a[0] - b[0])[0];
    [x, y] = [top[0] * k, top[1] * k];
  }
  x = Math.min(Math.max(0, x), Math.max(0, ctx.canvas.width - tagWidth));
  if (y - tagHeight >= 0) y -= tagHeight; // above the box, or inside it at the image's top
  ctx.fillStyle = colorOf(d.class_id);
  ctx.fillRect(x, y, tagWidth, tagHeight);
  ctx.fillStyle = textColorOf(d.class_id);
  ctx.fillText(text, x + pad, y + pad);
}

function drawSkeletons(pen, answer) {
  const { ctx, k, line, joint } = pen;
  for (const person of answer.instances) {
    const color = colorOf(person.class_id);
    const visible = new Map(person.keypoints.filter((j) => j.visible).map((j) => [j.name, j]));
    ctx.strokeStyle = color;
    ctx.lineWidth = line;
    ctx.lineCap = "round";
    for (const [start, end] of answer.skeleton) {
      const a = visible.get(start);
      const b = visible.get(end);
      if (!a || !b) continue;
      ctx.beginPath();
      ctx.moveTo(a.x * k, a.y * k);
      ctx.lineTo(b.x * k, b.y * k);
      ctx.stroke();
    }
    for (const j of visible.values()) {
      ctx.beginPath();
      ctx.arc(j.x * k, j.y * k, joint, 0, 2 * Math.PI);
      ctx.fillStyle = color;
      ctx.fill();
      ctx.lineWidth = Math.max(1, line / 2);
      ctx.strokeStyle = "#FFFFFF";
      ctx.stroke();
    }
  }
}

// Masks are painted at image resolution, then enlarged without smoothing: a mask pixel stays a pixel.
function paintMask(pen, mask, width, height, hex) {
  const [r, g, b] = rgbOf(hex);
  const alpha = Math.round(state.style.mask_alpha * 255);
  const pixels = new ImageData(width, height);
  for (let i = 0; i < mask.length; i++) {
    if (!mask[i]) continue;
    pixels.data[4 * i] = r;
    pixels.data[4 * i + 1] = g;
    pixels.data[4 * i + 2] = b;
    pixels.data[4 * i + 3] = alpha;
  }
  const layer = new OffscreenCanvas(width, height);
  layer.getContext("2d").putImageData(pixels, 0, 0);
  const { ctx } = pen;
  const smoothing = ctx.imageSmoothingEnabled;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(layer, 0, 0, ctx.canvas.width, ctx.canvas.height);
  ctx.imageSmoothingEnabled = smoothing;
}

async function drawMask(pen, instance, width, height) {
  const mask = instance.mask;
  if (mask === null || mask === undefined) return; // dropped to keep the answer within its budget
  const color = colorOf(instance.class_id);
  if (typeof mask === "string") {
    const values = await pngValues(mask, width, height);
    paintMask(pen, values.map((v) => (v > 0 ? 1 : 0)), width, height, color);
  } else if (Array.isArray(mask)) {
    paintMask(pen, fillPolygons(mask, width, height), width, height, color);
  } else {
    paintMask(pen, decodeRle(mask.counts, mask.size), width, height, color);
  }
}

async function drawClassMap(pen, answer) {
  const [height, width] = answer.segmentation.size;
  const unpainted = new Set(state.style.unpainted_labels);
  const labels = new Map(answer.classes.map((c) => [c.class_id, c.label]));
  const painted = (id) => !unpainted.has(labels.get(id));
  if (answer.segmentation.format === "png" && answer.segmentation.data) {
    const ids = await pngValues(answer.segmentation.data, width, height);
    for (const c of answer.classes) {
      if (painted(c.class_id)) paintMask(pen, ids.map((v) => (v === c.class_id ? 1 : 0)), width, height, colorOf(c.class_id));
    }
  } else {
    for (const m of answer.segmentation.masks || []) {
      if (painted(m.class_id)) paintMask(pen, decodeRle(m.rle.counts, m.rle.size), width, height, colorOf(m.class_id));
    }
  }
  const rows = answer.classes.filter((c) => !unpainted.has(c.label))
    .map((c) => [colorOf(c.class_id), `${c.label} ${(100 * c.pixel_fraction).toFixed(1)}%`]);
  drawLegend(pen, rows);
}

function lineHeight(pen) {
  return pen.size + 2 * pen.pad;
}

function shade(pen, x, y, w, h) {
  const { ctx } = pen;
  ctx.fillStyle = `rgba(0, 0, 0, ${state.style.panel_alpha})`;
  ctx.fillRect(x, y, w, h);
}

function drawLegend(pen, rows) {
  if (!rows.length) return;
  const { ctx, pad, font } = pen;
  ctx.font = font;
  ctx.textBaseline = "top";
  const step = lineHeight(pen);
  const swatch = step - pad;
  const width = Math.max(...rows.map(([, text]) => ctx.measureText(text).width)) + swatch + 3 * pad;
  const height = rows.length * step + pad;
  const top = ctx.canvas.height - height;
  shade(pen, 0, top, width, height);
  rows.forEach(([color, text], row) => {
    const y = top + pad + row * step;
    ctx.fillStyle = color;
    ctx.fillRect(pad, y, swatch, swatch);
    ctx.fillStyle = "#FFFFFF";
    ctx.fillText(text, 2 * pad + swatch, y);
  });
}

function drawTopK(pen, predictions) {
  if (!predictions.length) return;
  const { ctx, pad, font } = pen;
  ctx.font = font;
  ctx.textBaseline = "top";
  const step = lineHeight(pen);
  const texts = predictions.map((p) => `${p.label} ${p.score.toFixed(2)}`);
  const textWidth = Math.max(...texts.map((t) => ctx.measureText(t).width));
  const width = Math.min(ctx.canvas.width, Math.ceil(Math.max(textWidth + 2 * pad, ctx.canvas.width * 0.4)));
  shade(pen, 0, 0, width, predictions.length * step + pad);
  predictions.forEach((p, row) => {
    const y = pad + row * step;
    const bar = Math.round((width - 2 * pad) * Math.min(1, Math.max(0, p.score)));
    ctx.fillStyle = colorOf(p.class_id);
    if (bar > 0) ctx.fillRect(pad, y, bar, step - pad);
    ctx.lineWidth = 2;
    ctx.strokeStyle = "#000000";
    ctx.strokeText(texts[row], pad, y);
    ctx.fillStyle = "#FFFFFF";
    ctx.fillText(texts[row], pad, y);
  });
}

// ---- mask formats ----

// COCO compressed RLE string -> run lengths (pycocotools' rleFrString; service/tasks/rle.py).
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let value = 0;
    let shift = 0;
    let more = true;
    while (more) {
      const chunk = text.charCodeAt(p) - 48;
      value |= (chunk & 0x1f) << shift;
      more = (chunk & 0x20) !== 0;
      p += 1;
      shift += 5;
      if (!more && chunk & 0x10) value |= -1 << shift;
    }
    if (counts.length > 2) value += counts[counts.length - 2];
    counts.push(value);
  }
  return counts;
}

// Runs go down columns (column-major); the result is row-major, one byte per pixel.
function decodeRle(counts, size) {
  const [height, width] = size;
  const mask = new Uint8Array(height * width);
  let position = 0;
  rleCounts(counts).forEach((run, i) => {
    if (i % 2 === 1) {
      for (let p = position; p < position + run; p++) {
        const column = Math.floor(p / height);
        mask[(p - column * height) * width + column] = 1;
      }
    }
    position += run;
  });
  return mask;
}

// Pixel-corner polygons -> mask: a pixel is inside when its centre is (even-odd), as the Python side.
function fillPolygons(polygons, width, height) {
  const crossings = new Int32Array(height * (width + 1));
  for (const polygon of polygons) {
    for (let i = 0; i < polygon.length; i++) {
      const [x0, y0] = polygon[i];
      const [x1, y1] = polygon[(i + 1) % polygon.length];
      if (y0 === y1) continue;
      for (let row = Math.max(0, Math.ceil(Math.min(y0, y1) - 0.5)); row < height; row++) {
        const centre = row + 0.5;
        if (centre >= Math.max(y0, y1)) break;
        if (centre < Math.min(y0, y1)) continue;
        const x = x0 + ((centre - y0) * (x1 - x0)) / (y1 - y0);
        const first = Math.min(width, Math.max(0, Math.ceil(x - 0.5)));
        crossings[row * (width + 1) + first] += 1;
      }
    }
  }
  const mask = new Uint8Array(height * width);
  for (let row = 0; row < height; row++) {
    let inside = 0;
    for (let col = 0; col < width; col++) {
      inside ^= crossings[row * (width + 1) + col] & 1;
      mask[row * width + col] = inside;
    }
  }
  return mask;
}

// A base64 PNG (1-bit mask or 8-bit class ids) -> its pixel values, without colour management.
async function pngValues(base64, width, height) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }), {
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  const layer = new OffscreenCanvas(width, height);
  const ctx = layer.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, width, height);
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const values = new Uint8Array(width * height);
  for (let i = 0; i < values.length; i++) values[i] = rgba[4 * i];
  return values;
}

// ---- start ----

function wireControls() {
  const keyInput = $("api-key");
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("change", () => {
    const key = keyInput.value.trim();
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
    loadModels();
  });
  $("model").addEventListener("change", () => onModelChange(true));
  $("params").addEventListener("change", () => runModel());
  $("run").addEventListener("click", () => runModel());
}

async function start() {
  wireControls();
  wireImageInputs();
  try {
    await loadStyle();
    await loadModels();
  } catch (error) {
    setState("error");
    showError(`the page could not start: ${error.message}`);
  }
}

start();
