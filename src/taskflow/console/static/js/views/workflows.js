// Workflows: the list, newest first, with cursor paging.
import { identity, load, query } from "../api.js";
import { badge, clear, empty, failure, h, table, when } from "../dom.js";
import { filterForm, pager, picked, tenantField } from "../filters.js";

export async function workflows(main, { params, signal }) {
  const who = identity();
  const results = h("section", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  clear(main, h("h1", {}, "Workflows"),
    tenantField(who).length ? filterForm("/workflows", tenantField(who), params) : null, results);
  const page = await load(`/workflows${query({ limit: 50, ...picked(params, ["tenant", "cursor"]) })}`,
                          signal, (err) => clear(results, failure(err)));
  if (!page) return;
  if (!page.items.length) {
    clear(results, empty("No workflows yet. Submit a graph of jobs with ",
      h("code", {}, "POST /workflows"), ": jobs name the jobs they run ", h("code", {}, "after"), "."));
    return;
  }
  clear(results, table(["Workflow", "State", "Jobs#", "Unfinished#", "Failed#", "Created",
                        ...(who && who.admin ? ["Tenant"] : [])],
    page.items.map((w) => h("tr", { "data-workflow": w.id },
      h("td", {}, h("a", { href: `#/workflows/${w.id}` }, w.name)), h("td", {}, badge(w.state)),
      h("td", { class: "num" }, w.more_jobs ? `${w.jobs.toLocaleString("en")}+` : w.jobs),
      h("td", { class: "num" }, w.more_jobs && w.unfinished ? `${w.unfinished}+` : w.unfinished),
      h("td", { class: "num" }, w.failed), h("td", {}, when(w.created_at)),
      who && who.admin ? h("td", {}, w.tenant) : null))),
    pager("/workflows", params, page.next_cursor));
}
