// sxlab widgets: helpers shared by every widget's ES module.
// This file is placed in front of each widget's own module (see sxlab/widgets/_assets.py),
// so it declares plain functions and constants and exports nothing.

const SX_NS = "http://www.w3.org/2000/svg";

function sxEl(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k === "html") node.innerHTML = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.appendChild(c);
  return node;
}

function sxSvg(tag, attrs = {}, children = []) {
  const node = document.createElementNS(SX_NS, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.appendChild(c);
  return node;
}

function sxFmt(v, digits = 3) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return v.toPrecision(digits).replace(/\.?0+$/, "");
}

// 256-entry RGBA lookup of colour codes: 0 = no pixel (background), 1..255 = colour map.
function sxCodeLut(table, background = [40, 40, 46]) {
  const lut = new Uint8ClampedArray(256 * 4);
  lut.set([...background, 255], 0);
  for (let c = 1; c < 256; c++) {
    const j = Math.round(((c - 1) * 255) / 254);
    lut[4 * c] = table[3 * j];
    lut[4 * c + 1] = table[3 * j + 1];
    lut[4 * c + 2] = table[3 * j + 2];
    lut[4 * c + 3] = 255;
  }
  return lut;
}

function sxBytes(value) {
  // Binary traits arrive as DataView (ipywidgets) or ArrayBuffer.
  if (!value) return new Uint8Array(0);
  if (value instanceof DataView) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  return new Uint8Array(0);
}

function sxThrottle(fn, ms) {
  let last = 0;
  let timer = null;
  let args = null;
  return (...a) => {
    args = a;
    const now = performance.now();
    if (now - last >= ms) {
      last = now;
      fn(...args);
    } else if (!timer) {
      timer = setTimeout(() => {
        timer = null;
        last = performance.now();
        fn(...args);
      }, ms - (now - last));
    }
  };
}

function sxDebounce(fn, ms) {
  let timer = null;
  return (...a) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...a), ms);
  };
}

// Nice axis ticks between lo and hi.
function sxTicks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(+v.toPrecision(12));
  return out;
}

// A small SVG chart frame: returns helpers mapping data to pixels.
function sxAxes(svg, { x0, x1, y0, y1, left = 48, right = 12, top = 10, bottom = 30, width, height, xlabel, ylabel, yfmt }) {
  const w = width - left - right;
  const h = height - top - bottom;
  const sx = (x) => left + ((x - x0) / (x1 - x0 || 1)) * w;
  const sy = (y) => top + h - ((y - y0) / (y1 - y0 || 1)) * h;
  const g = sxSvg("g", { class: "sx-axes" });
  g.appendChild(sxSvg("rect", { x: left, y: top, width: w, height: h, class: "sx-plot-bg" }));
  for (const t of sxTicks(x0, x1)) {
    g.appendChild(sxSvg("line", { x1: sx(t), x2: sx(t), y1: top + h, y2: top + h + 4, class: "sx-tick" }));
    g.appendChild(sxSvg("text", { x: sx(t), y: top + h + 15, class: "sx-tick-label", "text-anchor": "middle", text: sxFmt(t) }));
  }
  for (const t of sxTicks(y0, y1, 4)) {
    g.appendChild(sxSvg("line", { x1: left - 4, x2: left + w, y1: sy(t), y2: sy(t), class: "sx-grid" }));
    g.appendChild(sxSvg("text", { x: left - 6, y: sy(t) + 4, class: "sx-tick-label", "text-anchor": "end", text: yfmt ? yfmt(t) : sxFmt(t) }));
  }
  if (xlabel) g.appendChild(sxSvg("text", { x: left + w / 2, y: height - 3, class: "sx-axis-label", "text-anchor": "middle", text: xlabel }));
  if (ylabel) g.appendChild(sxSvg("text", { x: 12, y: top + h / 2, class: "sx-axis-label", "text-anchor": "middle", transform: `rotate(-90 12 ${top + h / 2})`, text: ylabel }));
  svg.appendChild(g);
  return { sx, sy, w, h, left, top };
}
