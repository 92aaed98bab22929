// Learning curves and the confusion-matrix heatmap, drawn as plain SVG (no chart library, nothing to build).
import { h, s } from "./dom.js";

const W = 380, H = 230;
const M = { left: 52, right: 14, top: 12, bottom: 34 };

/** A "nice" tick step (1, 2 or 5 times a power of ten) giving about `count` ticks over `span`. */
function niceStep(span, count) {
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const f = raw / power;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * power;
}

/** [lo, hi] widened to whole steps, and the ticks inside; a flat series gets some room around it. */
function axis(lo, hi, count, clamp) {
  if (hi - lo < 1e-12) {
    const pad = Math.abs(lo) * 0.1 || 0.1;
    lo -= pad;
    hi += pad;
  }
  const step = niceStep(hi - lo, count);
  lo = Math.floor(lo / step) * step;
  hi = Math.ceil(hi / step) * step;
  if (clamp) {
    lo = Math.max(lo, clamp[0]);
    hi = Math.min(hi, clamp[1]);
  }
  const ticks = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return { lo, hi, ticks };
}

// Ten well-separated colours (Tableau 10); past ten, hues a golden angle apart so neighbours still differ.
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
                 "#9c755f", "#bab0ac"];

/** The colour of line `i` when a chart has one line per run (a sweep's children). */
export const seriesColor = (i) => (i < PALETTE.length ? PALETTE[i] : `hsl(${(i * 137.508) % 360}, 62%, 45%)`);

/**
 * A line chart of per-epoch values.
 * series: [{name, points: [[epoch, value], ...], color?, dashed?}]: without a colour, line i takes the style's
 * class c<i>; format: tick and tooltip text; clamp: [min, max] of the y axis; legend: false when the page draws
 * one legend for several charts; marks: [{name, epoch, value, color?}], single points drawn as rings over the
 * lines (the served model's figure, which the per-epoch lines of the network alone need not pass through).
 */
export function lineChart({ title, series, format = (v) => String(Number(v.toPrecision(3))), clamp = null,
                            legend: withLegend = true, wide = false, marks = [] }) {
  const shown = marks.filter((m) => Number.isFinite(m.epoch) && Number.isFinite(m.value));
  const points = [...series.flatMap((line) => line.points), ...shown.map((m) => [m.epoch, m.value])]
    .filter((p) => Number.isFinite(p[1]));
  const root = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  const box = h("figure", { class: wide ? "chart-box wide" : "chart-box" }, h("figcaption", {}, title), root);
  if (!points.length) {
    root.append(s("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, "no epoch finished yet"));
    return box;
  }
  const lastEpoch = Math.max(...points.map((p) => p[0]));
  const x = { lo: 1, hi: Math.max(2, lastEpoch) };  // at least two epochs wide, so one point is not at the edge
  const y = axis(Math.min(...points.map((p) => p[1])), Math.max(...points.map((p) => p[1])), 5, clamp);
  const sx = (v) => M.left + ((v - x.lo) / (x.hi - x.lo)) * (W - M.left - M.right);
  const sy = (v) => H - M.bottom - ((v - y.lo) / (y.hi - y.lo)) * (H - M.top - M.bottom);

  for (const t of y.ticks) {
    root.append(s("line", { class: "grid", x1: M.left, x2: W - M.right, y1: sy(t), y2: sy(t) }),
                s("text", { class: "tick", x: M.left - 6, y: sy(t) + 4, "text-anchor": "end" }, format(t)));
  }
  const xStep = Math.max(1, Math.ceil((x.hi - x.lo) / 8));
  for (let t = x.lo; t <= x.hi; t += xStep) {
    root.append(s("text", { class: "tick", x: sx(t), y: H - M.bottom + 16, "text-anchor": "middle" }, t));
  }
  root.append(s("line", { class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }),
              s("text", { class: "axis-title", x: (M.left + W - M.right) / 2, y: H - 3, "text-anchor": "middle" },
                "epoch"));

  const legend = h("div", { class: "legend" });
  series.forEach((line, i) => {
    const pts = line.points.filter((p) => Number.isFinite(p[1]));
    if (!pts.length) return;
    const d = pts.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    const colour = line.color ? "" : ` c${i}`;
    root.append(s("path", { class: `series${colour}${line.dashed ? " dashed" : ""}`, d, "data-name": line.name,
                            style: line.color && { stroke: line.color } }));
    for (const p of pts) {
      root.append(s("circle", { class: `dot${colour}`, cx: sx(p[0]), cy: sy(p[1]), r: 2.8,
                                style: line.color && { stroke: line.color, fill: line.color } },
                    s("title", {}, `${line.name}, epoch ${p[0]}: ${format(p[1])}`)));
    }
    legend.append(h("span", { class: `key${colour}`, style: line.color && { color: line.color } }, line.name));
  });
  for (const m of shown) {
    root.append(s("circle", { class: "served", cx: sx(m.epoch), cy: sy(m.value), r: 6, "data-value": m.value,
                              style: m.color && { stroke: m.color } },
                  s("title", {}, `${m.name}, epoch ${m.epoch}: ${format(m.value)}`)));
    legend.append(h("span", { class: "key served", style: m.color && { color: m.color } }, m.name));
  }
  if (withLegend) box.append(legend);
  return box;
}

/** White to blue by the share of the row (recall), so a small class's mistakes show as clearly as a big one's. */
function shade(share) {
  const mix = (from, to) => Math.round(from + (to - from) * share);
  return `rgb(${mix(255, 29)},${mix(255, 78)},${mix(255, 216)})`;
}

/** The confusion matrix as a heatmap: rows are true labels, columns predicted labels. */
export function heatmap(labels, matrix) {
  const n = labels.length;
  const cell = Math.max(6, Math.min(44, Math.floor(520 / n)));
  const showLabels = cell >= 12;
  const showCounts = cell >= 24;
  const longest = Math.max(...labels.map((l) => String(l).length));
  const labelRoom = showLabels ? Math.min(150, 12 + 7 * longest) : 8;
  const x0 = 18 + labelRoom, y0 = 18 + labelRoom;  // cells start after an axis title band and the labels
  const size = x0 + n * cell + 8;
  const root = s("svg", { class: "heatmap", viewBox: `0 0 ${size} ${size}`, width: size, height: size,
                          role: "img", "aria-label": "confusion matrix" });
  root.append(s("text", { class: "axis-title", x: x0 + (n * cell) / 2, y: 12, "text-anchor": "middle" },
                "predicted label"),
              s("text", { class: "axis-title", x: 12, y: y0 + (n * cell) / 2, "text-anchor": "middle",
                          transform: `rotate(-90 12 ${y0 + (n * cell) / 2})` }, "true label"));
  matrix.forEach((row, i) => {
    const total = row.reduce((a, b) => a + b, 0) || 1;
    row.forEach((count, j) => {
      const share = count / total;
      const x = x0 + j * cell, y = y0 + i * cell;
      root.append(s("rect", { class: i === j ? "cell diag" : "cell", x, y, width: cell - 1, height: cell - 1,
                              fill: shade(share), "data-count": count },
                    s("title", {}, `true ${labels[i]} → predicted ${labels[j]}: ${count} ` +
                                   `(${(100 * share).toFixed(1)} % of the row)`)));
      if (showCounts && count) {
        root.append(s("text", { class: share > 0.5 ? "count light" : "count", x: x + cell / 2, y: y + cell / 2 + 4,
                                "text-anchor": "middle" }, count));
      }
    });
  });
  if (showLabels) {
    labels.forEach((label, i) => {
      root.append(s("text", { class: "label", x: x0 - 4, y: y0 + i * cell + cell / 2 + 4, "text-anchor": "end" },
                    label));
      const mid = x0 + i * cell + cell / 2;
      root.append(s("text", { class: "label", x: mid, y: y0 - 4, "text-anchor": "start",
                              transform: `rotate(-60 ${mid} ${y0 - 4})` }, label));
    });
  }
  return h("figure", { class: "heatmap-box" },
           h("figcaption", {}, "Confusion matrix (shade: share of the true label's row)"), root);
}
