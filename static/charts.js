// rlhfCharts: small dependency-free SVG line charts for the dashboard (no build step).
// Every label goes in through textContent, never as HTML.
"use strict";
window.rlhfCharts = (function () {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#0c8599", "#c92a2a"];
  const W = 420, H = 220, M = { l: 50, r: 12, t: 12, b: 30 };

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // About n "nice" tick values covering [lo, hi].
  function ticks(lo, hi, n) {
    if (!(hi > lo)) { const d = Math.abs(lo) || 1; lo -= d / 2; hi += d / 2; }
    const raw = (hi - lo) / Math.max(1, n);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toFixed(12));
    return { values: out, lo: Math.min(lo, out[0]), hi: Math.max(hi, out[out.length - 1]), step };
  }

  function fmt(v, percent) {
    if (percent) return (v * 100).toFixed(Math.abs(v) < 0.1 ? 1 : 0) + "%";
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e4 || a < 1e-3) return v.toExponential(1);
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, "");
    return v.toPrecision(2);
  }

  // Draw a chart into `target` (emptied first).
  // opts: {title, series: [{label, points: [[x, y], ...]}], percent, xLabel}
  function line(target, opts) {
    target.replaceChildren();
    const box = document.createElement("div");
    box.className = "chart";
    const h = document.createElement("h4");
    h.textContent = opts.title;
    box.append(h);
    const series = (opts.series || []).filter(s => s.points && s.points.length);
    if (!series.length) {
      const empty = document.createElement("div");
      empty.className = "empty";
      empty.textContent = opts.emptyText || "no data yet";
      box.append(empty);
      target.append(box);
      return box;
    }
    const xs = series.flatMap(s => s.points.map(p => p[0]));
    const ys = series.flatMap(s => s.points.map(p => p[1])).filter(Number.isFinite);
    const xt = ticks(Math.min(...xs), Math.max(...xs), 5);
    const yt = ticks(Math.min(...ys), Math.max(...ys), 4);
    const sx = x => M.l + (x - xt.lo) / (xt.hi - xt.lo || 1) * (W - M.l - M.r);
    const sy = y => H - M.b - (y - yt.lo) / (yt.hi - yt.lo || 1) * (H - M.t - M.b);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.title });
    for (const v of yt.values) {
      root.append(svg("line", { x1: M.l, x2: W - M.r, y1: sy(v), y2: sy(v), stroke: "#e9ecef" }));
      root.append(svg("text", { x: M.l - 6, y: sy(v) + 4, "text-anchor": "end", "font-size": 12, fill: "#667085" }, fmt(v, opts.percent)));
    }
    for (const v of xt.values) {
      root.append(svg("text", { x: sx(v), y: H - M.b + 16, "text-anchor": "middle", "font-size": 12, fill: "#667085" }, fmt(v)));
    }
    root.append(svg("line", { x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b, stroke: "#adb5bd" }));
    root.append(svg("text", { x: W - M.r, y: H - 2, "text-anchor": "end", "font-size": 11, fill: "#868e96" }, opts.xLabel || "step"));
    series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const pts = s.points.filter(p => Number.isFinite(p[1]));
      if (pts.length > 1) {
        root.append(svg("polyline", {
          points: pts.map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" "),
          fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round",
        }));
      }
      if (pts.length <= 30) {
        for (const p of pts) root.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.6, fill: color }));
      }
    });
    // Hover: a guide line and the nearest values.
    const guide = svg("line", { y1: M.t, y2: H - M.b, stroke: "#868e96", "stroke-dasharray": "3 3", visibility: "hidden" });
    const tip = svg("text", { y: M.t + 10, "font-size": 12, fill: "#1d2330", visibility: "hidden" });
    root.append(guide, tip);
    const overlay = svg("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, fill: "transparent" });
    overlay.addEventListener("mousemove", ev => {
      const r = root.getBoundingClientRect();
      const x = xt.lo + ((ev.clientX - r.left) * W / r.width - M.l) / (W - M.l - M.r) * (xt.hi - xt.lo);
      const parts = series.map(s => {
        const p = s.points.reduce((a, b) => Math.abs(b[0] - x) < Math.abs(a[0] - x) ? b : a);
        return { p, label: s.label };
      });
      const step = parts[0].p[0];
      guide.setAttribute("x1", sx(step)); guide.setAttribute("x2", sx(step));
      tip.textContent = `step ${step}: ` + parts.map(q => `${q.label} ${fmt(q.p[1], opts.percent)}`).join(", ");
      const left = sx(step) > W / 2;
      tip.setAttribute("x", left ? sx(step) - 6 : sx(step) + 6);
      tip.setAttribute("text-anchor", left ? "end" : "start");
      guide.setAttribute("visibility", "visible"); tip.setAttribute("visibility", "visible");
    });
    overlay.addEventListener("mouseleave", () => {
      guide.setAttribute("visibility", "hidden"); tip.setAttribute("visibility", "hidden");
    });
    root.append(overlay);
    box.append(root);
    const legend = document.createElement("div");
    legend.className = "legend";
    series.forEach((s, i) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = COLORS[i % COLORS.length];
      const last = s.points[s.points.length - 1];
      item.append(swatch, document.createTextNode(`${s.label} (last ${fmt(last[1], opts.percent)})`));
      legend.append(item);
    });
    box.append(legend);
    target.append(box);
    return box;
  }

  return { line, ticks, fmt };
})();
