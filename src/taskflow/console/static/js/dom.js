// Building the page: elements from data (text is always set as text, never as markup),
// formatting, and the pieces every view shares.

export function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "g", "path", "rect", "text", "defs", "marker", "title"].includes(tag)
    || (tag === "a" && attrs.svg);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag)
                 : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false || key === "svg") continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.setAttribute("class", Array.isArray(value)
                                                   ? value.filter(Boolean).join(" ") : value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function badge(state) {
  return h("span", { class: ["badge", `state-${state}`], "data-state": state }, state);
}

export function shortId(id) {
  return id ? `${id.slice(0, 8)}…${id.slice(-4)}` : "";
}

export function jobLink(id, text = shortId(id)) {
  return h("a", { href: `#/jobs/${id}`, class: "mono", title: id }, text);
}

export function when(iso) {
  if (!iso) return "—";
  const at = new Date(iso);
  return h("time", { datetime: iso, title: at.toISOString() }, `${at.toLocaleString()} (${ago(at)})`);
}

export function ago(at) {
  const s = Math.round((Date.now() - at.getTime()) / 1000);
  const abs = Math.abs(s);
  const text = abs < 60 ? `${abs}s` : abs < 3600 ? `${Math.round(abs / 60)}m`
    : abs < 86400 ? `${Math.round(abs / 3600)}h` : `${Math.round(abs / 86400)}d`;
  return s >= 0 ? `${text} ago` : `in ${text}`;
}

export function seconds(value) {
  if (value === null || value === undefined) return "—";
  if (value < 1) return `${Math.round(value * 1000)} ms`;
  if (value < 120) return `${value.toFixed(1)} s`;
  if (value < 7200) return `${Math.round(value / 60)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

export function message(kind, ...text) {
  return h("div", { class: ["message", kind], role: kind === "error" ? "alert" : "status" },
           ...text);
}

/** An API error as a message that says what to do about it. */
export function failure(err) {
  if (err.status === 401) {
    return message("error", `The API refused the token: ${err.message}. `,
                   h("a", { href: "#/signin" }, "Sign in again"), ".");
  }
  if (err.status === 403) return message("error", `Not allowed: ${err.message}`);
  return message("error", err.status ? `The API answered ${err.status}: ${err.message}`
                                     : err.message);
}

export function empty(...text) {
  return h("div", { class: "empty", "data-empty": "" }, ...text);
}

export function table(headings, rows, attrs = {}) {
  return h("div", { class: "scroll" }, h("table", attrs,
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col",
      class: t.endsWith("#") ? "num" : null }, t.replace(/#$/, ""))))),
    h("tbody", {}, rows)));
}

/** Asks before a write; resolves true when confirmed. A <dialog>: Esc cancels. */
export function confirmDialog(title, text, action, danger = false) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title" }, title),
      h("p", {}, text),
      h("form", { method: "dialog", class: "actions" },
        h("button", { value: "cancel", type: "submit" }, "Cancel"),
        h("button", { value: "ok", type: "submit", class: ["primary", danger && "danger"],
                      "data-confirm": "" }, action)));
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "ok");
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A datetime-local value as RFC 3339 (UTC), or "" */
export function toRfc3339(local) {
  return local ? new Date(local).toISOString() : "";
}

/** An RFC 3339 value as a datetime-local input's value (local time), or "" */
export function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export const STATES = ["blocked", "scheduled", "queued", "running", "succeeded", "failed",
                       "cancelled"];
