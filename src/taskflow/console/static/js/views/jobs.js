// Jobs: the list with the API's filters and cursor paging, newest first.
import { identity, load, query } from "../api.js";
import { STATES, badge, clear, empty, failure, h, jobLink, table, when } from "../dom.js";
import { filterForm, pager, picked, tenantField } from "../filters.js";

const FILTERS = ["state", "queue", "task", "label", "created_after", "created_before",
                 "tenant", "cursor", "limit"];

export async function jobs(main, { params, signal }) {
  const who = identity();
  const fields = [
    { name: "state", label: "State (any of)", type: "multi", options: STATES },
    { name: "queue", label: "Queue", placeholder: "any" },
    { name: "task", label: "Task", placeholder: "any" },
    { name: "label", label: "Label", placeholder: "key=value" },
    { name: "created_after", label: "Created after", type: "datetime" },
    { name: "created_before", label: "Created before", type: "datetime" },
    ...tenantField(who),
  ];
  const results = h("section", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  clear(main, h("h1", {}, "Jobs"), filterForm("/jobs", fields, params), results);
  const page = await load(`/tasks${query({ limit: 50, ...picked(params, FILTERS) })}`,
                          signal, (err) => clear(results, failure(err)));
  if (!page) return;
  if (!page.items.length) {
    const filtered = FILTERS.some((f) => !["cursor", "limit"].includes(f) && params.has(f));
    clear(results, empty(filtered
      ? "No job matches these filters. Widen them, or Clear to see every job."
      : ["No jobs yet. Submit one: ", h("code", {}, "POST /tasks"),
         " with a task name, e.g. {\"task\": \"echo\"}."]));
    return;
  }
  const showTenant = who && who.admin;
  clear(results, table(
    ["Job", "Task", "Queue", "State", "Attempts#", "Created", "Ended", "Labels",
     ...(showTenant ? ["Tenant"] : [])],
    page.items.map((j) => h("tr", { "data-job": j.id },
      h("td", {}, jobLink(j.id)), h("td", {}, j.task), h("td", {}, j.queue),
      h("td", {}, badge(j.state)), h("td", { class: "num" }, `${j.attempts}/${j.max_attempts}`),
      h("td", {}, when(j.created_at)), h("td", {}, when(j.finished_at)),
      h("td", {}, Object.entries(j.labels).map(([k, v]) => h("span", { class: "chip" }, `${k}=${v}`))),
      showTenant ? h("td", {}, j.tenant) : null))),
    pager("/jobs", params, page.next_cursor));
}
