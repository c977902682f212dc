/* A small SVG time-series chart: one series, gaps for null values, hover tooltip.
 * drawChart(svg, tip, points, {from, to, format, axis}) — points: [{t: Date, v: number|null}];
 * format() labels values in the tooltip, axis() on the y axis; niceMax() picks the top of
 * the y axis (default: 1, 1.25, 2, 2.5 or 5 times a power of ten). */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, parent) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, value);
  if (parent) parent.appendChild(el);
  return el;
}

function niceMax(value) {
  if (!(value > 0)) return 1;
  const exp = Math.pow(10, Math.floor(Math.log10(value)));
  for (const m of [1, 1.25, 2, 2.5, 5, 10]) {
    if (value <= m * exp) return m * exp;
  }
  return 10 * exp;
}

function timeTicks(from, to, count) {
  const spanMs = to - from;
  const steps = [60e3, 5 * 60e3, 10 * 60e3, 15 * 60e3, 30 * 60e3, 3600e3, 2 * 3600e3,
    3 * 3600e3, 6 * 3600e3, 12 * 3600e3, 24 * 3600e3];
  const step = steps.find((s) => spanMs / s <= count) || 24 * 3600e3;
  const offset = new Date(from).getTimezoneOffset() * 60e3;
  let t = Math.ceil((from.getTime() - offset) / step) * step + offset;
  const ticks = [];
  for (; t <= to.getTime(); t += step) ticks.push(new Date(t));
  return { ticks, step };
}

function formatTick(date, stepMs) {
  const hhmm = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (stepMs >= 6 * 3600e3) {
    const day = date.toLocaleDateString([], { weekday: "short", day: "numeric" });
    return date.getHours() === 0 ? day : `${day} ${hhmm}`;
  }
  return hhmm;
}

function drawChart(svg, tip, points, opts) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const width = svg.clientWidth || 600;
  const height = svg.clientHeight || 300;
  const m = { left: 62, right: 14, top: 12, bottom: 26 };
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);

  const defs = svgEl("defs", {}, svg);
  const grad = svgEl("linearGradient", { id: "area-fill", x1: 0, y1: 0, x2: 0, y2: 1 }, defs);
  svgEl("stop", { offset: "0%", "stop-color": "#4fd1c5", "stop-opacity": 0.35 }, grad);
  svgEl("stop", { offset: "100%", "stop-color": "#4fd1c5", "stop-opacity": 0.02 }, grad);

  const from = opts.from.getTime();
  const to = opts.to.getTime();
  const values = points.filter((p) => p.v !== null).map((p) => p.v);
  const yMax = (opts.niceMax || niceMax)(Math.max(0, ...values) * 1.08);
  const x = (t) => m.left + ((t - from) / Math.max(to - from, 1)) * w;
  const y = (v) => m.top + h - (v / yMax) * h;

  const axis = svgEl("g", { class: "axis" }, svg);
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    svgEl("line", { class: "grid-line", x1: m.left, x2: m.left + w, y1: y(v), y2: y(v) }, axis);
    const label = svgEl("text", { x: m.left - 8, y: y(v) + 4, "text-anchor": "end" }, axis);
    label.textContent = (opts.axis || opts.format)(v);
  }
  const { ticks, step } = timeTicks(opts.from, opts.to, Math.max(2, Math.floor(w / 90)));
  for (const t of ticks) {
    const label = svgEl("text", { x: x(t.getTime()), y: height - 6, "text-anchor": "middle" },
      axis);
    label.textContent = formatTick(t, step);
  }

  // One path per run of non-null points: a gap in the data stays a gap.
  const runs = [];
  let run = [];
  for (const p of points) {
    if (p.v === null) {
      if (run.length) runs.push(run);
      run = [];
    } else {
      run.push(p);
    }
  }
  if (run.length) runs.push(run);
  for (const r of runs) {
    const line = r.map((p, i) => `${i ? "L" : "M"}${x(p.t.getTime()).toFixed(1)},` +
      `${y(p.v).toFixed(1)}`).join("");
    const first = x(r[0].t.getTime()).toFixed(1);
    const last = x(r[r.length - 1].t.getTime()).toFixed(1);
    svgEl("path", { class: "series-area", d: `${line}L${last},${y(0)}L${first},${y(0)}Z` },
      svg);
    svgEl("path", { class: "series-line", d: r.length > 1 ? line :
      `${line}l0.1,0` }, svg).setAttribute("stroke-linecap", "round");
  }

  const hover = svgEl("g", { visibility: "hidden" }, svg);
  const hoverLine = svgEl("line", { class: "hover-line", y1: m.top, y2: m.top + h }, hover);
  const hoverDot = svgEl("circle", { class: "hover-dot", r: 4 }, hover);
  const known = points.filter((p) => p.v !== null);
  svg.onmousemove = (event) => {
    if (!known.length) return;
    const rect = svg.getBoundingClientRect();
    const px = event.clientX - rect.left;
    let best = known[0];
    for (const p of known) {
      if (Math.abs(x(p.t.getTime()) - px) < Math.abs(x(best.t.getTime()) - px)) best = p;
    }
    const bx = x(best.t.getTime());
    hoverLine.setAttribute("x1", bx);
    hoverLine.setAttribute("x2", bx);
    hoverDot.setAttribute("cx", bx);
    hoverDot.setAttribute("cy", y(best.v));
    hover.setAttribute("visibility", "visible");
    tip.hidden = false;
    tip.textContent = "";
    const strong = document.createElement("strong");
    strong.textContent = opts.format(best.v);
    tip.append(strong, ` · ${best.t.toLocaleString([], { weekday: "short", hour: "2-digit",
      minute: "2-digit" })}`);
    const left = Math.min(Math.max(bx - tip.offsetWidth / 2, 0), width - tip.offsetWidth);
    tip.style.left = `${left}px`;
    tip.style.top = `${Math.max(y(best.v) - 42, 0)}px`;
  };
  svg.onmouseleave = () => {
    hover.setAttribute("visibility", "hidden");
    tip.hidden = true;
  };
}
