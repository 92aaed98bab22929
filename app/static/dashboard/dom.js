// Small DOM helpers. Text always goes in as text, never as HTML: dataset texts and labels are user data.

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "style") Object.assign(el.style, value); // CSSOM: allowed by the page's CSP
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** h("td", {class: "num"}, "0.91") -> <td class="num">0.91</td> */
export const h = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);

/** The same for SVG elements. */
export const s = (tag, attrs, ...children) =>
  build(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, children);

export const fixed = (value, digits = 3) => (typeof value === "number" ? value.toFixed(digits) : "–");
export const percent = (value, digits = 1) => (typeof value === "number" ? `${(100 * value).toFixed(digits)} %` : "–");
export const shortId = (id) => (id ? String(id).slice(0, 8) : "–");
export const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");

export function duration(seconds) {
  if (typeof seconds !== "number" || !isFinite(seconds)) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function progressBar(percentDone) {
  const value = Math.max(0, Math.min(100, percentDone || 0));
  return h("span", { class: "bar", title: `${value.toFixed(1)} %` },
           h("span", { class: "fill", style: { width: `${value}%` } }));
}
