// sxlab frame canvas: ImageViewer, MaskPainter and PeakTuner (model trait "kind").
// Python sends screen-sized colour-code images of the requested view; this module keeps
// the view transform, draws image, mask and overlays, and reports hovers, paint strokes
// and parameter changes back to Python.

const CANVAS_W = 720;
const CANVAS_H = 600;
const MAX_SCALE = 64;

function render({ model, el }) {
  const kind = model.get("kind");
  const root = sxEl("div", { class: `sx-widget sx-frame sx-${kind}`, tabindex: "0" });
  root.dataset.widget = kind;
  // Keys typed in the widget are its shortcuts, not JupyterLab's.
  root.setAttribute("data-lm-suppress-shortcuts", "true");
  root.setAttribute("data-p-suppress-shortcuts", "true");
  el.appendChild(root);

  // ---------------------------------------------------------------- toolbar
  const slider = sxEl("input", { type: "range", min: 0, max: Math.max(model.get("n_frames") - 1, 0), step: 1, value: model.get("frame"), class: "sx-frame-slider", title: "frame" });
  const frameBox = sxEl("input", { type: "number", min: 0, value: model.get("frame"), class: "sx-frame-number", title: "frame" });
  const btn = (text, title, onclick, cls = "") => sxEl("button", { class: `sx-btn ${cls}`, title, text, onclick });
  const step = (direction, what) => {
    markRequest();
    model.send({ type: "step", direction, what });
  };
  const hitPrev = btn("◀ hit", "previous hit (H)", () => step(-1, "hit"), "sx-prev-hit");
  const hitNext = btn("hit ▶", "next hit (h)", () => step(1, "hit"), "sx-next-hit");
  const idxPrev = btn("◀ indexed", "previous indexed frame (I)", () => step(-1, "indexed"), "sx-prev-indexed");
  const idxNext = btn("indexed ▶", "next indexed frame (i)", () => step(1, "indexed"), "sx-next-indexed");
  const select = (options, value, onchange, cls) => {
    const s = sxEl("select", { class: cls, onchange: (e) => onchange(e.target.value) });
    for (const o of options) s.appendChild(sxEl("option", { value: o, text: o }));
    s.value = value;
    return s;
  };
  const contrastSel = select(["percentile", "linear", "log"], model.get("contrast"), (v) => setTrait("contrast", v), "sx-contrast");
  const cmapSel = select(Object.keys(model.get("colormaps")), model.get("colormap"), (v) => setTrait("colormap", v), "sx-colormap");
  const reduceSel = select(["max", "mean"], model.get("reduce"), (v) => setTrait("reduce", v), "sx-reduce");
  const vminBox = sxEl("input", { type: "number", class: "sx-vmin", step: "any", title: "lower colour limit" });
  const vmaxBox = sxEl("input", { type: "number", class: "sx-vmax", step: "any", title: "upper colour limit" });
  const limitsChanged = () => {
    model.set("vmin", parseFloat(vminBox.value));
    model.set("vmax", parseFloat(vmaxBox.value));
    if (model.get("contrast") === "percentile") model.set("contrast", "linear");
    model.save_changes();
  };
  vminBox.addEventListener("change", limitsChanged);
  vmaxBox.addEventListener("change", limitsChanged);
  const showBoxes = {};
  const showBar = sxEl("span", { class: "sx-show" });
  for (const name of ["peaks", "reflections", "mask", "rings", "beam"]) {
    const cb = sxEl("input", { type: "checkbox", class: `sx-show-${name}` });
    cb.addEventListener("change", () => setTrait("show", { ...model.get("show"), [name]: cb.checked }));
    showBoxes[name] = cb;
    showBar.appendChild(sxEl("label", {}, [cb, document.createTextNode(name)]));
  }
  const nav = sxEl("div", { class: "sx-toolbar" }, [
    btn("◀", "previous frame (←)", () => stepFrame(-1)), slider, btn("▶", "next frame (→)", () => stepFrame(1)),
    frameBox, hitPrev, hitNext, idxPrev, idxNext,
  ]);
  const look = sxEl("div", { class: "sx-toolbar" }, [
    contrastSel, vminBox, vmaxBox, cmapSel, reduceSel, btn("reset", "reset zoom (r)", () => resetView()), showBar,
  ]);
  root.appendChild(nav);
  root.appendChild(look);

  // ------------------------------------------------------------------ stage
  const stage = sxEl("div", { class: "sx-stage" });
  stage.style.width = `${CANVAS_W}px`;
  stage.style.height = `${CANVAS_H}px`;
  const imgCanvas = sxEl("canvas", { class: "sx-image", width: CANVAS_W, height: CANVAS_H });
  const ovCanvas = sxEl("canvas", { class: "sx-overlay", width: CANVAS_W, height: CANVAS_H });
  stage.appendChild(imgCanvas);
  stage.appendChild(ovCanvas);
  const side = sxEl("div", { class: "sx-side" });
  const body = sxEl("div", { class: "sx-body" }, [stage, side]);
  root.appendChild(body);
  const readout = sxEl("div", { class: "sx-readout", text: " " });
  const status = sxEl("div", { class: "sx-status" });
  const info = sxEl("div", { class: "sx-info" });
  side.appendChild(info);
  root.appendChild(readout);
  root.appendChild(status);
  const ictx = imgCanvas.getContext("2d");
  const octx = ovCanvas.getContext("2d");

  // ------------------------------------------------------------ view state
  const grid = model.get("grid");
  let cx = grid.width / 2;
  let cy = grid.height / 2;
  let scale = Math.min(CANVAS_W / grid.width, CANVAS_H / grid.height);
  let seq = 0;
  let inFlight = null; // seq of the request awaiting its image
  let pending = false;
  let lastSentAt = 0;
  let offscreen = null; // {canvas, mask, meta}
  let lut = sxCodeLut(model.get("colormaps")[model.get("colormap")]);
  let requestT = null; // {frame, t} of a frame request started here
  let draws = 0;

  function setTrait(name, value) {
    model.set(name, value);
    model.save_changes();
  }
  function viewRect() {
    const hw = CANVAS_W / (2 * scale);
    const hh = CANVAS_H / (2 * scale);
    return { x0: cx - hw, y0: cy - hh, x1: cx + hw, y1: cy + hh };
  }
  function adoptView(v) {
    scale = Math.min(MAX_SCALE, Math.min(CANVAS_W / Math.max(v.x1 - v.x0, 1e-6), CANVAS_H / Math.max(v.y1 - v.y0, 1e-6)));
    cx = (v.x0 + v.x1) / 2;
    cy = (v.y0 + v.y1) / 2;
  }
  function sendView() {
    if (inFlight !== null && performance.now() - lastSentAt < 1500) {
      pending = true;
      return;
    }
    seq += 1;
    inFlight = seq;
    pending = false;
    lastSentAt = performance.now();
    root.dataset.sent = String(seq);
    setTrait("view", { ...viewRect(), width: CANVAS_W, height: CANVAS_H, seq });
  }
  function resetView() {
    scale = Math.min(CANVAS_W / grid.width, CANVAS_H / grid.height);
    cx = grid.width / 2;
    cy = grid.height / 2;
    draw();
    sendView();
  }
  function toGrid(px, py) {
    return [cx + (px - CANVAS_W / 2) / scale, cy + (py - CANVAS_H / 2) / scale];
  }
  function toScreen(gx, gy) {
    return [(gx - cx) * scale + CANVAS_W / 2, (gy - cy) * scale + CANVAS_H / 2];
  }
  function markRequest(frame = null) {
    requestT = { frame, t: performance.now() };
  }
  function stepFrame(d) {
    const f = Math.min(Math.max(model.get("frame") + d, 0), model.get("n_frames") - 1);
    if (f === model.get("frame")) return;
    markRequest(f);
    setTrait("frame", f);
  }

  // ----------------------------------------------------------------- images
  function buildOffscreen() {
    const meta = model.get("image_meta");
    const codes = sxBytes(model.get("image"));
    if (!meta || !meta.w || codes.length < meta.w * meta.h) return;
    const c = offscreen && offscreen.canvas.width === meta.w && offscreen.canvas.height === meta.h ? offscreen.canvas : sxEl("canvas", { width: meta.w, height: meta.h });
    const cctx = c.getContext("2d");
    const im = cctx.createImageData(meta.w, meta.h);
    const px = new Uint32Array(im.data.buffer);
    const lut32 = new Uint32Array(lut.buffer);
    const n = meta.w * meta.h;
    for (let i = 0; i < n; i++) px[i] = lut32[codes[i]];
    cctx.putImageData(im, 0, 0);
    let mask = null;
    const mcodes = sxBytes(model.get("mask_image"));
    if (mcodes.length >= n) {
      mask = sxEl("canvas", { width: meta.w, height: meta.h });
      const mctx = mask.getContext("2d");
      const mi = mctx.createImageData(meta.w, meta.h);
      const mp = new Uint32Array(mi.data.buffer);
      const red = new Uint32Array(new Uint8ClampedArray([255, 40, 40, 120]).buffer)[0];
      for (let i = 0; i < n; i++) if (mcodes[i]) mp[i] = red;
      mctx.putImageData(mi, 0, 0);
    }
    offscreen = { canvas: c, mask, meta };
  }

  function draw() {
    draws += 1;
    ictx.setTransform(1, 0, 0, 1, 0, 0);
    ictx.fillStyle = "#1e1e22";
    ictx.fillRect(0, 0, CANVAS_W, CANVAS_H);
    if (offscreen) {
      const m = offscreen.meta;
      ictx.imageSmoothingEnabled = false;
      ictx.setTransform(scale, 0, 0, scale, CANVAS_W / 2 - cx * scale, CANVAS_H / 2 - cy * scale);
      ictx.drawImage(offscreen.canvas, m.col0, m.row0, m.w * m.step, m.h * m.step);
      if (offscreen.mask) ictx.drawImage(offscreen.mask, m.col0, m.row0, m.w * m.step, m.h * m.step);
      ictx.setTransform(1, 0, 0, 1, 0, 0);
    }
    drawOverlay();
    root.dataset.scale = scale.toFixed(6);
    root.dataset.cx = cx.toFixed(4);
    root.dataset.cy = cy.toFixed(4);
    root.dataset.draws = String(draws);
  }

  function drawOverlay() {
    octx.setTransform(1, 0, 0, 1, 0, 0);
    octx.clearRect(0, 0, CANVAS_W, CANVAS_H);
    const ov = model.get("overlays") || {};
    const show = model.get("show") || {};
    const r = viewRect();
    const inView = (x, y, pad) => x > r.x0 - pad && x < r.x1 + pad && y > r.y0 - pad && y < r.y1 + pad;
    if (show.rings && ov.beam) {
      const [bx, by] = toScreen(ov.beam[0], ov.beam[1]);
      octx.strokeStyle = "rgba(255,255,255,0.55)";
      octx.fillStyle = "rgba(255,255,255,0.85)";
      octx.lineWidth = 1;
      octx.font = "11px sans-serif";
      for (const ring of ov.rings || []) {
        const rr = ring.r * scale;
        octx.beginPath();
        octx.arc(bx, by, rr, 0, 2 * Math.PI);
        octx.stroke();
        octx.fillText(`${sxFmt(ring.d)} Å`, bx + rr * 0.7071 + 3, by - rr * 0.7071 - 3);
      }
    }
    if (show.beam && ov.beam) {
      const [bx, by] = toScreen(ov.beam[0], ov.beam[1]);
      octx.strokeStyle = "#ffffff";
      octx.lineWidth = 1.5;
      octx.beginPath();
      octx.moveTo(bx - 8, by);
      octx.lineTo(bx + 8, by);
      octx.moveTo(bx, by - 8);
      octx.lineTo(bx, by + 8);
      octx.stroke();
    }
    if (show.reflections && ov.reflections) {
      const xs = ov.reflections.x;
      const ys = ov.reflections.y;
      const radii = ov.radii || [];
      const rings = radii.length && radii[radii.length - 1] * scale >= 4;
      octx.strokeStyle = "#39d0ff";
      octx.lineWidth = 1;
      for (let i = 0; i < xs.length; i++) {
        if (!inView(xs[i], ys[i], 10)) continue;
        const [sx, sy] = toScreen(xs[i], ys[i]);
        octx.beginPath();
        if (rings) {
          for (const rad of radii) {
            octx.moveTo(sx + rad * scale, sy);
            octx.arc(sx, sy, rad * scale, 0, 2 * Math.PI);
          }
        } else {
          octx.arc(sx, sy, 5, 0, 2 * Math.PI);
        }
        octx.stroke();
      }
    }
    if (show.peaks && ov.peaks) {
      const xs = ov.peaks.x;
      const ys = ov.peaks.y;
      octx.strokeStyle = "#ff4d4d";
      octx.lineWidth = 1.5;
      const half = Math.max(5, 2.5 * scale);
      for (let i = 0; i < xs.length; i++) {
        if (!inView(xs[i], ys[i], 10)) continue;
        const [sx, sy] = toScreen(xs[i], ys[i]);
        octx.strokeRect(sx - half, sy - half, 2 * half, 2 * half);
      }
    }
    if (tool && tool.drawPreview) tool.drawPreview(octx);
  }

  function onImage() {
    buildOffscreen();
    const meta = model.get("image_meta") || {};
    if (meta.seq >= (inFlight ?? -1)) {
      inFlight = null;
      if (pending) sendView();
    }
    draw();
    root.dataset.frame = String(meta.frame);
    root.dataset.step = String(meta.step);
    root.dataset.seq = String(meta.seq);
    root.dataset.vmin = String(meta.vmin);
    root.dataset.vmax = String(meta.vmax);
    root.dataset.nbytes = String(meta.nbytes);
    if (requestT && (requestT.frame === null || requestT.frame === meta.frame)) {
      root.dataset.frameMs = (performance.now() - requestT.t).toFixed(2);
      root.dataset.framesDrawn = String((+root.dataset.framesDrawn || 0) + 1);
      requestT = null;
    }
    if (model.get("contrast") === "percentile") {
      vminBox.value = sxFmt(meta.vmin, 4);
      vmaxBox.value = sxFmt(meta.vmax, 4);
    }
  }

  // ------------------------------------------------------------- readouts
  function showReadout() {
    const r = model.get("readout") || {};
    const parts = [];
    if (r.fs !== undefined) {
      if (r.panel) parts.push(`panel ${r.panel}`);
      if (r.module !== undefined) parts.push(`module ${r.module}`);
      parts.push(`fs ${r.fs}`, `ss ${r.ss}`, `value ${sxFmt(r.value, 5)}`);
      if (r.d_A !== undefined) parts.push(`d ${r.d_A === null ? "∞" : sxFmt(r.d_A, 4)} Å`);
      if (r.bad) parts.push("masked");
    } else if (r.x !== undefined) {
      parts.push("no pixel");
    }
    if (r.peak) parts.push(`| peak I ${sxFmt(r.peak.intensity, 4)}, SNR ${sxFmt(r.peak.snr)}, ${r.peak.npix} px`);
    if (r.reflection) {
      const f = r.reflection;
      parts.push(`| hkl ${f.h} ${f.k} ${f.l}, I ${sxFmt(f.I, 4)}, σ ${sxFmt(f.sigma, 3)}, d ${sxFmt(f.d_A, 3)} Å`);
    }
    readout.textContent = parts.join("  ") || " ";
    readout.dataset.fs = r.fs ?? "";
    readout.dataset.ss = r.ss ?? "";
    readout.dataset.d = r.d_A ?? "";
  }
  const sendHover = sxThrottle((gx, gy) => model.send({ type: "hover", x: gx, y: gy, tol: 8 / scale }), 40);

  // ----------------------------------------------------------- interaction
  let drag = null;
  let tool = null; // painter tool state, set below for kind == "painter"
  function eventPos(e) {
    const b = ovCanvas.getBoundingClientRect();
    return [e.clientX - b.left, e.clientY - b.top];
  }
  ovCanvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const [px, py] = eventPos(e);
    const [gx, gy] = toGrid(px, py);
    const factor = Math.exp(-e.deltaY * 0.0015);
    const minScale = 0.5 * Math.min(CANVAS_W / grid.width, CANVAS_H / grid.height);
    scale = Math.min(MAX_SCALE, Math.max(minScale, scale * factor));
    cx = gx - (px - CANVAS_W / 2) / scale;
    cy = gy - (py - CANVAS_H / 2) / scale;
    draw();
    sendView();
  }, { passive: false });
  ovCanvas.addEventListener("mousedown", (e) => {
    root.focus({ preventScroll: true });
    const [px, py] = eventPos(e);
    if (tool && tool.active() && !e.shiftKey && e.button === 0) {
      tool.down(toGrid(px, py), e);
      draw();
      return;
    }
    drag = { px, py, cx, cy };
  });
  window.addEventListener("mousemove", (e) => {
    const [px, py] = eventPos(e);
    if (drag) {
      cx = drag.cx - (px - drag.px) / scale;
      cy = drag.cy - (py - drag.py) / scale;
      draw();
      sendView();
      return;
    }
    if (tool && tool.dragging()) {
      tool.move(toGrid(px, py), e);
      drawOverlay();
      return;
    }
    if (px >= 0 && py >= 0 && px < CANVAS_W && py < CANVAS_H) {
      const [gx, gy] = toGrid(px, py);
      if (tool && tool.hover) {
        tool.hover([gx, gy]);
        drawOverlay();
      }
      sendHover(gx, gy);
    }
  });
  window.addEventListener("mouseup", (e) => {
    if (drag) {
      drag = null;
      return;
    }
    if (tool && tool.dragging()) {
      const [px, py] = eventPos(e);
      tool.up(toGrid(px, py), e);
      drawOverlay();
    }
  });
  ovCanvas.addEventListener("dblclick", (e) => {
    if (tool && tool.active() && tool.dblclick) {
      tool.dblclick();
      drawOverlay();
      return;
    }
    resetView();
  });
  root.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    const nv = model.get("nav") || {};
    let handled = true;
    if (e.key === "ArrowRight") stepFrame(1);
    else if (e.key === "ArrowLeft") stepFrame(-1);
    else if (e.key === "h" && nv.hit) step(1, "hit");
    else if (e.key === "H" && nv.hit) step(-1, "hit");
    else if (e.key === "i" && nv.indexed) step(1, "indexed");
    else if (e.key === "I" && nv.indexed) step(-1, "indexed");
    else if (e.key === "r") resetView();
    else if (e.key === "l") {
      const modes = ["percentile", "linear", "log"];
      setTrait("contrast", modes[(modes.indexOf(model.get("contrast")) + 1) % modes.length]);
    } else if (e.key === "m") setTrait("show", { ...model.get("show"), mask: !model.get("show").mask });
    else if (e.key === "p") setTrait("show", { ...model.get("show"), peaks: !model.get("show").peaks });
    else if (tool && tool.key && tool.key(e)) handled = true;
    else handled = false;
    if (handled) {
      e.preventDefault();
      e.stopPropagation();
    }
  });
  slider.addEventListener("input", () => {
    markRequest(+slider.value);
    setTrait("frame", +slider.value);
  });
  frameBox.addEventListener("change", () => {
    markRequest(+frameBox.value);
    setTrait("frame", +frameBox.value);
  });

  // ------------------------------------------------------------ model sync
  function syncControls() {
    slider.max = Math.max(model.get("n_frames") - 1, 0);
    slider.value = model.get("frame");
    frameBox.value = model.get("frame");
    contrastSel.value = model.get("contrast");
    cmapSel.value = model.get("colormap");
    reduceSel.value = model.get("reduce");
    const show = model.get("show") || {};
    for (const [k, cb] of Object.entries(showBoxes)) cb.checked = !!show[k];
    const nv = model.get("nav") || {};
    for (const b of [hitPrev, hitNext]) b.disabled = !nv.hit;
    for (const b of [idxPrev, idxNext]) b.disabled = !nv.indexed;
    info.innerHTML = model.get("info_html");
    status.textContent = model.get("status");
    status.style.display = model.get("status") ? "" : "none";
  }
  const onChange = (names, fn) => {
    for (const n of names) model.on(`change:${n}`, fn);
  };
  onChange(["frame", "n_frames", "contrast", "colormap", "reduce", "show", "nav", "info_html", "status"], syncControls);
  // image_meta changes with every reply (its seq), the image bytes only when they differ.
  model.on("change:image_meta", onImage);
  model.on("change:mask_image", () => {
    buildOffscreen();
    draw();
  });
  model.on("change:overlays", drawOverlay);
  model.on("change:readout", showReadout);
  model.on("change:colormap", () => {
    lut = sxCodeLut(model.get("colormaps")[model.get("colormap")]);
    buildOffscreen();
    draw();
  });
  model.on("change:view", () => {
    const v = model.get("view");
    if (v && v.seq !== undefined && v.seq > seq) {
      // A view set from Python (zoom()): adopt it.
      seq = v.seq;
      adoptView(v);
      draw();
      sendView();
    }
  });

  // ---------------------------------------------------- kind-specific parts
  if (kind === "painter") tool = sxPainter(model, side, root, setTrait, toScreen, () => scale);
  if (kind === "tuner") sxTuner(model, side, root);

  root.dataset.title = model.get("title");
  syncControls();
  onImage();
  sendView();
  return () => {
    root.remove();
  };
}

// ------------------------------------------------------------- mask painter
function sxPainter(model, side, root, setTrait, toScreen, getScale) {
  const tools = ["pan", "rectangle", "circle", "polygon", "brush", "beamstop"];
  const bar = sxEl("div", { class: "sx-tools" });
  const toolBtns = {};
  for (const t of tools) {
    const b = sxEl("button", { class: `sx-btn sx-tool sx-tool-${t}`, text: t, onclick: () => setTrait("tool", t) });
    toolBtns[t] = b;
    bar.appendChild(b);
  }
  const erase = sxEl("input", { type: "checkbox", class: "sx-erase" });
  erase.addEventListener("change", () => setTrait("erase", erase.checked));
  const radius = sxEl("input", { type: "number", min: 0.5, step: 0.5, class: "sx-brush-radius", title: "brush radius (pixels)" });
  radius.addEventListener("change", () => setTrait("brush_radius", parseFloat(radius.value)));
  const rod = sxEl("input", { type: "number", min: 0, step: 1, class: "sx-rod-width", title: "beam-stop rod width (pixels, 0: none)" });
  rod.addEventListener("change", () => setTrait("rod_width", parseFloat(rod.value)));
  const undo = sxEl("button", { class: "sx-btn sx-undo", text: "undo", onclick: () => model.send({ type: "undo" }) });
  const redo = sxEl("button", { class: "sx-btn sx-redo", text: "redo", onclick: () => model.send({ type: "redo" }) });
  const counts = sxEl("div", { class: "sx-mask-count" });
  side.prepend(
    sxEl("div", { class: "sx-panel" }, [
      sxEl("div", { class: "sx-panel-title", text: "mask" }),
      bar,
      sxEl("label", {}, [erase, document.createTextNode(" erase (mark good)")]),
      sxEl("label", {}, [document.createTextNode("brush radius "), radius]),
      sxEl("label", {}, [document.createTextNode("rod width "), rod]),
      sxEl("div", {}, [undo, redo]),
      counts,
    ]),
  );
  function sync() {
    for (const [t, b] of Object.entries(toolBtns)) b.classList.toggle("sx-active", model.get("tool") === t);
    erase.checked = model.get("erase");
    radius.value = model.get("brush_radius");
    rod.value = model.get("rod_width");
    const s = model.get("mask_state") || {};
    undo.disabled = !s.can_undo;
    redo.disabled = !s.can_redo;
    counts.textContent = `${(s.n_bad ?? 0).toLocaleString()} masked pixels (${sxFmt(100 * (s.fraction_bad ?? 0))} %), ${s.n_operations ?? 0} strokes`;
    root.dataset.nBad = String(s.n_bad ?? 0);
  }
  for (const n of ["tool", "erase", "brush_radius", "rod_width", "mask_state"]) model.on(`change:${n}`, sync);
  sync();

  let shape = null; // {kind, points}
  let hoverPt = null;
  const send = () => {
    if (!shape) return;
    const msg = { type: "shape", kind: shape.kind, points: shape.points, erase: model.get("erase") };
    if (shape.kind === "brush") msg.radius = model.get("brush_radius");
    if (shape.kind === "beamstop") msg.rod_width = model.get("rod_width");
    model.send(msg);
    shape = null;
  };
  const tool = {
    active: () => model.get("tool") !== "pan",
    dragging: () => !!shape && shape.kind !== "polygon",
    down(p) {
      const t = model.get("tool");
      if (t === "polygon") {
        if (!shape) shape = { kind: "polygon", points: [p] };
        else {
          const [fx, fy] = toScreen(...shape.points[0]);
          const [px, py] = toScreen(...p);
          if (shape.points.length >= 3 && Math.hypot(px - fx, py - fy) < 6) send();
          else shape.points.push(p);
        }
        return;
      }
      shape = { kind: t, points: t === "brush" ? [p] : [p, p] };
    },
    move(p) {
      if (!shape) return;
      if (shape.kind === "brush") {
        const last = shape.points[shape.points.length - 1];
        if (Math.hypot(p[0] - last[0], p[1] - last[1]) * getScale() >= 2) shape.points.push(p);
      } else shape.points[1] = p;
    },
    up(p) {
      if (!shape) return;
      if (shape.kind === "brush") shape.points.push(p);
      else shape.points[1] = p;
      send();
    },
    hover(p) {
      hoverPt = p;
    },
    dblclick() {
      if (shape && shape.kind === "polygon" && shape.points.length >= 3) send();
    },
    key(e) {
      if (e.key === "Escape") {
        shape = null;
        return true;
      }
      if ((e.ctrlKey || e.metaKey) && e.key === "z") {
        model.send({ type: "undo" });
        return true;
      }
      if ((e.ctrlKey || e.metaKey) && e.key === "y") {
        model.send({ type: "redo" });
        return true;
      }
      return false;
    },
    drawPreview(ctx) {
      if (!shape) return;
      ctx.strokeStyle = model.get("erase") ? "#7dff7d" : "#ffd23f";
      ctx.lineWidth = 1.5;
      ctx.setLineDash([4, 3]);
      const pts = shape.points.map((p) => toScreen(...p));
      ctx.beginPath();
      if (shape.kind === "rectangle") {
        ctx.rect(pts[0][0], pts[0][1], pts[1][0] - pts[0][0], pts[1][1] - pts[0][1]);
      } else if (shape.kind === "circle" || shape.kind === "beamstop") {
        ctx.arc(pts[0][0], pts[0][1], Math.hypot(pts[1][0] - pts[0][0], pts[1][1] - pts[0][1]), 0, 2 * Math.PI);
        if (shape.kind === "beamstop") {
          ctx.moveTo(pts[0][0], pts[0][1]);
          ctx.lineTo(pts[1][0], pts[1][1]);
        }
      } else {
        ctx.moveTo(...pts[0]);
        for (const q of pts.slice(1)) ctx.lineTo(...q);
        if (shape.kind === "polygon" && hoverPt) ctx.lineTo(...toScreen(...hoverPt));
        if (shape.kind === "brush") {
          ctx.lineWidth = 2 * model.get("brush_radius") * getScale();
          ctx.lineCap = "round";
          ctx.lineJoin = "round";
          ctx.setLineDash([]);
          ctx.strokeStyle = model.get("erase") ? "rgba(125,255,125,0.45)" : "rgba(255,210,63,0.45)";
        }
      }
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.lineCap = "butt";
    },
  };
  return tool;
}

// --------------------------------------------------------------- peak tuner
function sxTuner(model, side, root) {
  const panel = sxEl("div", { class: "sx-panel sx-tuner-panel" });
  side.prepend(panel);
  const result = sxEl("div", { class: "sx-tuner-result" });
  const sample = sxEl("div", { class: "sx-tuner-sample" });
  const inputs = {};
  const push = sxDebounce(() => {
    const s = { ...model.get("settings") };
    for (const [name, inp] of Object.entries(inputs)) {
      if (inp.type === "checkbox") s[name] = inp.checked;
      else if (inp.tagName === "SELECT") s[name] = inp.value;
      else s[name] = parseFloat(inp.value);
    }
    model.set("settings", s);
    model.save_changes();
  }, 120);
  function build() {
    panel.innerHTML = "";
    panel.appendChild(sxEl("div", { class: "sx-panel-title", text: "peak search" }));
    for (const c of model.get("controls")) {
      const value = model.get("settings")[c.name];
      let inp;
      if (c.kind === "select") {
        inp = sxEl("select", { class: `sx-param sx-param-${c.name}` });
        for (const o of c.options) inp.appendChild(sxEl("option", { value: o, text: o }));
        inp.value = value;
        inp.addEventListener("change", () => {
          push();
        });
      } else if (c.kind === "check") {
        inp = sxEl("input", { type: "checkbox", class: `sx-param sx-param-${c.name}` });
        inp.checked = !!value;
        inp.addEventListener("change", push);
      } else {
        inp = sxEl("input", { type: "range", min: c.min, max: c.max, step: c.step, value, class: `sx-param sx-param-${c.name}` });
        const out = sxEl("input", { type: "number", min: c.min, max: c.max, step: c.step, value, class: "sx-param-value" });
        inp.addEventListener("input", () => {
          out.value = inp.value;
          push();
        });
        out.addEventListener("change", () => {
          inp.value = out.value;
          push();
        });
        panel.appendChild(sxEl("label", { class: "sx-param-row", title: c.help || "" }, [sxEl("span", { text: c.label }), inp, out]));
        inputs[c.name] = inp;
        continue;
      }
      panel.appendChild(sxEl("label", { class: "sx-param-row", title: c.help || "" }, [sxEl("span", { text: c.label }), inp]));
      inputs[c.name] = inp;
    }
    panel.appendChild(result);
    panel.appendChild(sample);
  }
  function showResult() {
    const r = model.get("tuner_state") || {};
    result.innerHTML = "";
    result.appendChild(sxEl("div", { class: "sx-peak-count", text: `${r.n_peaks ?? "–"} peaks` }));
    result.appendChild(sxEl("div", { class: r.hit ? "sx-hit" : "sx-miss", text: r.hit ? "hit" : "not a hit" }));
    result.appendChild(sxEl("div", { class: "sx-dim", text: `peak search ${sxFmt(r.recompute_ms)} ms` }));
    root.dataset.nPeaks = String(r.n_peaks ?? "");
    root.dataset.recomputeMs = String(r.recompute_ms ?? "");
    const s = r.sample;
    sample.innerHTML = "";
    if (s && s.n_frames) {
      sample.appendChild(sxEl("div", { text: `sample of ${s.n_frames} frames: hit rate ${sxFmt(100 * s.hit_rate)} %, median ${sxFmt(s.median_peaks)} peaks` }));
      const W = 260;
      const H = 110;
      const svg = sxSvg("svg", { width: W, height: H, class: "sx-hist" });
      const counts = s.counts;
      const edges = s.edges;
      const ymax = Math.max(1, ...counts);
      const ax = sxAxes(svg, { x0: edges[0], x1: edges[edges.length - 1], y0: 0, y1: ymax, width: W, height: H, left: 30, bottom: 26, xlabel: "peaks per frame" });
      for (let i = 0; i < counts.length; i++) {
        const x0 = ax.sx(edges[i]);
        const x1 = ax.sx(edges[i + 1]);
        svg.appendChild(sxSvg("rect", { x: x0, y: ax.sy(counts[i]), width: Math.max(1, x1 - x0 - 1), height: ax.sy(0) - ax.sy(counts[i]), class: edges[i] >= s.min_peaks ? "sx-bar-hit" : "sx-bar" }));
      }
      const xt = ax.sx(s.min_peaks);
      svg.appendChild(sxSvg("line", { x1: xt, x2: xt, y1: ax.top, y2: ax.sy(0), class: "sx-threshold" }));
      sample.appendChild(svg);
    }
  }
  model.on("change:controls", build);
  model.on("change:settings", () => {
    const s = model.get("settings");
    for (const [name, inp] of Object.entries(inputs)) {
      if (inp.type === "checkbox") inp.checked = !!s[name];
      else inp.value = s[name];
      if (inp.nextSibling && inp.nextSibling.classList && inp.nextSibling.classList.contains("sx-param-value")) inp.nextSibling.value = s[name];
    }
  });
  model.on("change:tuner_state", showResult);
  build();
  showResult();
}

export default { render };
