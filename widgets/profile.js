// sxlab ProfileView: mean time per frame per stage as stacked areas (SVG), redrawn live.

const PV_W = 820;
const PV_H = 300;
const PV_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8"];

function render({ model, el }) {
  const root = sxEl("div", { class: "sx-widget sx-profile" });
  root.dataset.title = model.get("title");
  el.appendChild(root);
  const controls = sxEl("div", { class: "sx-toolbar" });
  const block = sxEl("input", { type: "number", min: 1, step: 1, class: "sx-block", title: "frames per block" });
  const level = sxEl("input", { type: "number", min: 1, max: 6, step: 1, class: "sx-level", title: "depth of the stages" });
  const wait = sxEl("input", { type: "checkbox", class: "sx-wait" });
  const state = sxEl("span", { class: "sx-dim" });
  const set = (name, value) => {
    model.set(name, value);
    model.save_changes();
  };
  block.addEventListener("change", () => set("block", Math.max(1, parseInt(block.value, 10))));
  level.addEventListener("change", () => set("level", Math.max(1, parseInt(level.value, 10))));
  wait.addEventListener("change", () => set("include_wait", wait.checked));
  controls.append("block ", block, " depth ", level, sxEl("label", {}, [wait, document.createTextNode(" include waiting")]), state);
  root.appendChild(controls);
  const holder = sxEl("div");
  root.appendChild(holder);

  function draw() {
    block.value = model.get("block");
    level.value = model.get("level");
    wait.checked = model.get("include_wait");
    const d = model.get("data") || {};
    state.textContent = ` ${d.n_records || 0} frames${model.get("following") ? " (following)" : ""}`;
    root.dataset.nRecords = String(d.n_records || 0);
    holder.innerHTML = "";
    if (!d.x || !d.x.length) {
      holder.appendChild(sxEl("div", { class: "sx-dim", text: "no profile rows yet" }));
      return;
    }
    const xs = d.x.length === 1 ? [d.x[0] - 0.5, d.x[0] + 0.5] : d.x;
    const values = d.values.map((v) => (d.x.length === 1 ? [v[0], v[0]] : v));
    const totals = xs.map((_, i) => values.reduce((s, v) => s + v[i], 0));
    const svg = sxSvg("svg", { width: PV_W, height: PV_H, class: "sx-plot sx-profile-plot" });
    const ax = sxAxes(svg, { x0: xs[0], x1: xs[xs.length - 1], y0: 0, y1: Math.max(...totals) * 1.05 || 1, width: PV_W, height: PV_H, right: 170, left: 56, xlabel: "frame (completion order)", ylabel: "mean time per frame (s)" });
    const base = xs.map(() => 0);
    d.categories.forEach((cat, k) => {
      const top = base.map((b, i) => b + values[k][i]);
      let path = `M${ax.sx(xs[0])},${ax.sy(base[0])}`;
      for (let i = 0; i < xs.length; i++) path += `L${ax.sx(xs[i]).toFixed(1)},${ax.sy(top[i]).toFixed(1)}`;
      for (let i = xs.length - 1; i >= 0; i--) path += `L${ax.sx(xs[i]).toFixed(1)},${ax.sy(base[i]).toFixed(1)}`;
      const area = sxSvg("path", { d: `${path}Z`, fill: PV_COLOURS[k % PV_COLOURS.length], class: "sx-area", "data-category": cat });
      area.appendChild(sxSvg("title", { text: cat }));
      svg.appendChild(area);
      for (let i = 0; i < xs.length; i++) base[i] = top[i];
    });
    const lx = PV_W - 160;
    [...d.categories].reverse().forEach((cat, j) => {
      const k = d.categories.length - 1 - j;
      svg.appendChild(sxSvg("rect", { x: lx, y: 14 + j * 16, width: 10, height: 10, fill: PV_COLOURS[k % PV_COLOURS.length] }));
      svg.appendChild(sxSvg("text", { x: lx + 14, y: 23 + j * 16, class: "sx-legend", text: cat }));
    });
    holder.appendChild(svg);
  }
  for (const n of ["data", "block", "level", "include_wait", "following"]) model.on(`change:${n}`, draw);
  draw();
  return () => root.remove();
}

export default { render };
