// Filter forms whose values live in the URL's query (see router.js).
import { h, toLocalInput, toRfc3339 } from "./dom.js";
import { go } from "./router.js";

/**
 * A form of fields ({name, label, type: text|select|datetime, options, placeholder});
 * submitting it goes to ``path`` with the values as the query. Datetime fields are
 * written to the URL as RFC 3339.
 */
export function filterForm(path, fields, params, extra = []) {
  const controls = fields.map((f) => {
    const id = `f-${f.name}`;
    const value = params.get(f.name) ?? "";
    let input;
    if (f.type === "multi") {  // any of several values: the key repeats in the URL
      const chosen = new Set(params.getAll(f.name));
      return h("fieldset", { class: "multi" }, h("legend", {}, f.label),
        f.options.map((o) => h("label", { class: "inline", for: `${id}-${o}` },
          h("input", { type: "checkbox", id: `${id}-${o}`, name: f.name, value: o,
                       checked: chosen.has(o) }), o)));
    }
    if (f.type === "select") {
      input = h("select", { id, name: f.name },
        h("option", { value: "" }, "any"),
        f.options.map((o) => h("option", { value: o, selected: o === value }, o)));
    } else if (f.type === "datetime") {
      input = h("input", { id, name: f.name, type: "datetime-local", value: toLocalInput(value) });
    } else {
      input = h("input", { id, name: f.name, type: "text", value, placeholder: f.placeholder,
                           list: f.list, autocomplete: "off" });
    }
    return h("label", { for: id }, f.label, input);
  });
  const form = h("form", { class: "filters", role: "search" }, controls,
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "primary" }, "Apply"),
      h("button", { type: "button", onclick: () => go(path) }, "Clear")),
    extra);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go(path, formValues(form, fields));
  });
  return form;
}

export function formValues(form, fields) {
  const values = {};
  for (const f of fields) {
    if (f.type === "multi") {
      values[f.name] = [...form.querySelectorAll(`input[name="${f.name}"]:checked`)]
        .map((box) => box.value);
      continue;
    }
    const raw = form.elements[f.name].value.trim();
    values[f.name] = f.type === "datetime" ? toRfc3339(raw) : raw;
  }
  return values;
}

/** The tenant filter, for admin tokens only (the API refuses it to anyone else). */
export function tenantField(who) {
  return who && who.admin ? [{ name: "tenant", label: "Tenant", placeholder: "all tenants" }] : [];
}

/** The filters of ``params`` that ``names`` allows, as an object for api.query. */
export function picked(params, names) {
  const out = {};
  for (const name of names) {
    const all = params.getAll(name);
    if (all.length) out[name] = all.length === 1 ? all[0] : all;
  }
  return out;
}

/** Older/Newest links for cursor paging: the cursor is part of the URL too. */
export function pager(path, params, nextCursor) {
  const newest = new URLSearchParams(params);
  newest.delete("cursor");
  const older = new URLSearchParams(params);
  if (nextCursor) older.set("cursor", nextCursor);
  return h("div", { class: "actions" },
    params.get("cursor") ? h("button", { type: "button", onclick: () => go(path, newest) },
                             "← Newest") : null,
    nextCursor ? h("button", { type: "button", "data-older": "",
                               onclick: () => go(path, older) }, "Older →") : null);
}
