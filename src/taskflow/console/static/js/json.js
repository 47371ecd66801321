// Payloads and results as collapsible, pretty JSON. Past LIMIT characters only the start
// is shown, with a link that downloads the whole value.
import { h } from "./dom.js";

const LIMIT = 20_000;
const OPEN_DEPTH = 2;

export function jsonView(value, name) {
  if (value === undefined) return h("p", { class: "muted" }, "—");
  const text = JSON.stringify(value, null, 2);
  if (text.length > LIMIT) {
    const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
    return h("div", { "data-truncated": "" },
      h("p", { class: "muted" }, `${(text.length / 1024).toFixed(0)} KiB: the first `,
        `${LIMIT / 1000} K characters are shown. `,
        h("a", { href: url, download: `${name}.json` }, `Download the whole ${name}`)),
      h("pre", { class: "json-box" }, `${text.slice(0, LIMIT)}\n…`));
  }
  return h("div", { class: "json-box" }, node(value, null, 0));
}

function node(value, key, depth) {
  const label = key === null ? [] : [h("span", { class: "json-key" }, JSON.stringify(key)), ": "];
  if (value !== null && typeof value === "object") {
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
    if (!entries.length) return h("div", {}, label, open + close);
    const n = entries.length;
    const summary = Array.isArray(value) ? `${n} item${n === 1 ? "" : "s"}`
                                         : `${n} key${n === 1 ? "" : "s"}`;
    return h("details", { class: "json", open: depth < OPEN_DEPTH },
      h("summary", {}, label, `${open} `, h("span", { class: "muted" }, summary)),
      entries.map(([k, v]) => node(v, Array.isArray(value) ? null : k, depth + 1)),
      h("div", {}, close));
  }
  const kind = typeof value === "string" ? "json-str" : typeof value === "number" ? "json-num"
    : "json-lit";
  return h("div", {}, label, h("span", { class: kind }, JSON.stringify(value)));
}
