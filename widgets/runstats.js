// sxlab RunStats: cctbx.xfel run-statistics panels as SVG; clicking a point selects a frame.

const RS_W = 860;
const RS_H = 150;

function render({ model, el }) {
  const root = sxEl("div", { class: "sx-widget sx-runstats", tabindex: "0" });
  root.dataset.title = model.get("title");
  el.appendChild(root);
  const plots = sxEl("div", { class: "sx-plots" });
  const bar = sxEl("div", { class: "sx-statbar-wrap" });
  const lists = sxEl("div", { class: "sx-lists" });
  const sel = sxEl("div", { class: "sx-selected sx-dim" });
  root.appendChild(bar);
  root.appendChild(plots);
  root.appendChild(sel);
  root.appendChild(lists);

  function select(run, frame, shot) {
    model.set("selected", { run, frame, shot });
    model.save_changes();
  }

  function runSeparators(svg, ax, runs) {
    for (const r of runs.slice(1)) {
      const x = ax.sx(r.first_shot - 0.5);
      svg.appendChild(sxSvg("line", { x1: x, x2: x, y1: ax.top, y2: ax.top + ax.h, class: "sx-threshold" }));
    }
    for (const r of runs) {
      if (runs.length > 1) svg.appendChild(sxSvg("text", { x: ax.sx((r.first_shot + r.last_shot) / 2), y: ax.top + 10, class: "sx-tick-label", "text-anchor": "middle", text: r.run }));
    }
  }

  function line(svg, ax, xs, ys, cls) {
    let d = "";
    let pen = false;
    for (let i = 0; i < xs.length; i++) {
      if (ys[i] === null) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${ax.sx(xs[i]).toFixed(1)},${ax.sy(ys[i]).toFixed(1)}`;
      pen = true;
    }
    svg.appendChild(sxSvg("path", { d, class: cls }));
  }

  function legend(svg, items, x, y) {
    items.forEach(([label, cls], i) => {
      svg.appendChild(sxSvg("line", { x1: x + i * 120, x2: x + i * 120 + 16, y1: y, y2: y, class: cls }));
      svg.appendChild(sxSvg("text", { x: x + i * 120 + 20, y: y + 4, class: "sx-legend", text: label }));
    });
  }

  function draw() {
    plots.innerHTML = "";
    const p = model.get("points") || {};
    const runs = model.get("runs") || [];
    if (!p.shot || !p.shot.length) {
      plots.appendChild(sxEl("div", { class: "sx-dim", text: "no processed frames yet" }));
      return;
    }
    const n = p.n_shots;
    const x0 = -0.5;
    const x1 = Math.max(n - 0.5, 0.5);
    const selected = model.get("selected") || {};

    // A: spots per image.
    const svgA = sxSvg("svg", { width: RS_W, height: RS_H, class: "sx-plot sx-plot-spots" });
    const ymax = Math.max(1, ...p.n_peaks) * 1.05;
    const axA = sxAxes(svgA, { x0, x1, y0: 0, y1: ymax, width: RS_W, height: RS_H, top: 24, ylabel: "strong spots" });
    runSeparators(svgA, axA, runs);
    const gPts = sxSvg("g");
    for (let i = 0; i < p.shot.length; i++) {
      const cls = p.indexed[i] ? "sx-indexed" : "sx-unindexed";
      const isSel = selected.shot === p.shot[i];
      const c = sxSvg("circle", {
        cx: axA.sx(p.shot[i]).toFixed(1), cy: axA.sy(p.n_peaks[i]).toFixed(1), r: isSel ? 5 : 3,
        class: `sx-point ${cls}${isSel ? " sx-selected" : ""}`,
        "data-shot": p.shot[i], "data-frame": p.frame[i], "data-run": p.run[i],
      });
      c.appendChild(sxSvg("title", { text: `run ${p.run[i]} frame ${p.frame[i]}: ${p.n_peaks[i]} spots${p.indexed[i] ? ", indexed" : ""}` }));
      c.addEventListener("click", () => select(p.run[i], p.frame[i], p.shot[i]));
      gPts.appendChild(c);
    }
    svgA.appendChild(gPts);
    svgA.appendChild(sxSvg("text", { x: RS_W - 14, y: 15, class: "sx-plot-title", "text-anchor": "end", text: "spots per image (blue: indexed)" }));
    plots.appendChild(svgA);

    // B: moving-average rates.
    const r = p.rates;
    const svgB = sxSvg("svg", { width: RS_W, height: RS_H, class: "sx-plot sx-plot-rates" });
    const rmax = Math.max(10, ...r.indexing.filter((v) => v !== null), ...r.solvent.filter((v) => v !== null), ...r.multi_lattice.filter((v) => v !== null)) * 1.05;
    const axB = sxAxes(svgB, { x0, x1, y0: 0, y1: Math.min(rmax, 105), width: RS_W, height: RS_H, top: 24, ylabel: "rate (%)" });
    runSeparators(svgB, axB, runs);
    line(svgB, axB, r.shot, r.indexing, "sx-line-indexing");
    line(svgB, axB, r.shot, r.multi_lattice, "sx-line-multi");
    line(svgB, axB, r.shot, r.solvent, "sx-line-solvent");
    legend(svgB, [["indexing", "sx-line-indexing"], ["multi-lattice", "sx-line-multi"], ["solvent", "sx-line-solvent"]], 60, 12);
    plots.appendChild(svgB);

    // C: per-image resolution (high resolution at the top) and high-quality rate.
    const svgC = sxSvg("svg", { width: RS_W, height: RS_H, class: "sx-plot sx-plot-resolution" });
    const res = p.resolution_A.filter((v) => v !== null);
    const dlo = res.length ? Math.min(...res) : 1;
    const dhi = res.length ? Math.max(...res) : 5;
    const pad = Math.max(0.1, 0.05 * (dhi - dlo));
    // Inverted axis: plot -d so that small d (high resolution) is at the top.
    const axC = sxAxes(svgC, { x0, x1, y0: -(dhi + pad), y1: -(dlo - pad), width: RS_W, height: RS_H, right: 40, top: 24, ylabel: "resolution (Å)", yfmt: (v) => sxFmt(-v) });
    runSeparators(svgC, axC, runs);
    for (let i = 0; i < p.shot.length; i++) {
      if (p.resolution_A[i] === null) continue;
      const c = sxSvg("circle", { cx: axC.sx(p.shot[i]).toFixed(1), cy: axC.sy(-p.resolution_A[i]).toFixed(1), r: 2.5, class: "sx-point sx-indexed", "data-shot": p.shot[i], "data-frame": p.frame[i], "data-run": p.run[i] });
      c.addEventListener("click", () => select(p.run[i], p.frame[i], p.shot[i]));
      svgC.appendChild(c);
    }
    const hqY = (v) => axC.top + axC.h - (v / 100) * axC.h;
    let d = "";
    r.shot.forEach((s, i) => {
      if (r.high_quality[i] !== null) d += `${d ? "L" : "M"}${axC.sx(s).toFixed(1)},${hqY(r.high_quality[i]).toFixed(1)}`;
    });
    svgC.appendChild(sxSvg("path", { d, class: "sx-line-hq" }));
    for (const tv of [0, 50, 100]) svgC.appendChild(sxSvg("text", { x: RS_W - 36, y: hqY(tv) + 4, class: "sx-tick-label", text: `${tv}%` }));
    const hq = (model.get("settings") || {}).hq_resolution;
    legend(svgC, [[`high quality (≤ ${sxFmt(hq)} Å) rate`, "sx-line-hq"]], 60, 12);
    plots.appendChild(svgC);
  }

  function drawBar() {
    bar.innerHTML = "";
    const runs = model.get("runs") || [];
    const total = model.get("total") || {};
    const rows = runs.length > 1 ? [...runs, total] : runs;
    const table = sxEl("table", { class: "sx-list sx-statbar-table" });
    table.appendChild(sxEl("tr", {}, ["run", "images", "hits", "indexed", "high quality", "solvent %", "hit %", "indexed %", "HQ %", "median d (Å)", "failed"].map((h) => sxEl("th", { text: h }))));
    for (const r of rows) {
      table.appendChild(sxEl("tr", {}, [r.run, r.shots, r.hits, r.indexed, r.high_quality, sxFmt(r.solvent_pct, 3), sxFmt(r.hit_pct, 3), sxFmt(r.indexed_pct, 3), sxFmt(r.high_quality_pct, 3), sxFmt(r.median_resolution_A, 3), r.failed].map((v) => sxEl("td", { text: String(v ?? "–") }))));
    }
    bar.appendChild(sxEl("div", { class: "sx-statbar" }, [table]));
  }

  function drawLists() {
    lists.innerHTML = "";
    const l = model.get("lists") || {};
    for (const [key, title] of [["indexed", "strongest indexed"], ["unindexed", "strongest unindexed"]]) {
      const table = sxEl("table", { class: `sx-list sx-list-${key}` });
      table.appendChild(sxEl("caption", { text: title }));
      table.appendChild(sxEl("tr", {}, ["run", "frame", "spots", "lattices", "d (Å)"].map((h) => sxEl("th", { text: h }))));
      for (const r of l[key] || []) {
        const tr = sxEl("tr", { class: "sx-row", "data-frame": r.frame, "data-run": r.run }, [r.run, r.frame, r.n_peaks, r.n_crystals, sxFmt(r.resolution_A, 3)].map((v) => sxEl("td", { text: String(v ?? "–") })));
        tr.addEventListener("click", () => select(r.run, r.frame, r.shot));
        table.appendChild(tr);
      }
      lists.appendChild(table);
    }
  }

  function showSelected() {
    const s = model.get("selected") || {};
    sel.textContent = s.frame !== undefined ? `selected: run ${s.run} frame ${s.frame}` : "click a point or a row to open the frame in the linked viewer";
    root.dataset.selectedFrame = s.frame ?? "";
    for (const c of plots.querySelectorAll("circle.sx-selected")) {
      c.classList.remove("sx-selected");
      c.setAttribute("r", 3);
    }
    for (const c of plots.querySelectorAll(`.sx-plot-spots circle[data-shot="${s.shot}"]`)) {
      c.classList.add("sx-selected");
      c.setAttribute("r", 5);
    }
  }

  model.on("change:points", draw);
  model.on("change:runs", () => {
    draw();
    drawBar();
  });
  model.on("change:total", drawBar);
  model.on("change:lists", drawLists);
  model.on("change:selected", showSelected);
  draw();
  drawBar();
  drawLists();
  showSelected();
  return () => root.remove();
}

export default { render };
