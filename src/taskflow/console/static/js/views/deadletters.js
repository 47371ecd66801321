// Dead letters: the terminal failures with filters, and a redrive of those that match,
// counted first (a dry run) and confirmed.
import { call, identity, load, query } from "../api.js";
import { clear, confirmDialog, empty, failure, h, jobLink, message, table, when } from "../dom.js";
import { filterForm, pager, picked, tenantField } from "../filters.js";

const FILTERS = ["queue", "task", "error", "failed_after", "failed_before", "tenant", "cursor"];
const REDRIVE_FILTERS = ["queue", "task", "error", "failed_after", "failed_before"];

export async function deadLetters(main, { params, signal }) {
  const who = identity();
  const fields = [
    { name: "queue", label: "Queue", placeholder: "any" },
    { name: "task", label: "Task", placeholder: "any" },
    { name: "error", label: "Error contains", placeholder: "text" },
    { name: "failed_after", label: "Failed after", type: "datetime" },
    { name: "failed_before", label: "Failed before", type: "datetime" },
    ...tenantField(who),
  ];
  const results = h("section", { "aria-live": "polite" }, h("p", { class: "muted" }, "Loading…"));
  clear(main, h("h1", {}, "Dead letters"),
    h("p", { class: "muted" }, "Jobs that failed for good: retries exhausted or a ",
      "non-retryable error. A redrive sends them back to their queue with a fresh attempt budget."),
    filterForm("/dead-letters", fields, params), redrivePanel(who, params), results);
  const page = await load(`/dead-letters${query({ limit: 50, ...picked(params, FILTERS) })}`,
                          signal, (err) => clear(results, failure(err)));
  if (!page) return;
  if (!page.items.length) {
    clear(results, empty(FILTERS.some((f) => f !== "cursor" && params.has(f))
      ? "No dead letter matches these filters. Widen them, or Clear to see them all."
      : "No dead letters: no job has failed for good. Nothing to do."));
    return;
  }
  clear(results, table(["Job", "Task", "Queue", "Attempts#", "Failed", "Error",
                        ...(who && who.admin ? ["Tenant"] : [])],
    page.items.map((j) => h("tr", { "data-job": j.id },
      h("td", {}, jobLink(j.id)), h("td", {}, j.task), h("td", {}, j.queue),
      h("td", { class: "num" }, j.attempts), h("td", {}, when(j.finished_at)),
      h("td", { class: "mono" }, (j.error || "").split("\n")[0].slice(0, 200)),  // the job page has it all
      who && who.admin ? h("td", {}, j.tenant) : null))),
    pager("/dead-letters", params, page.next_cursor));
}

function redrivePanel(who, params) {
  if (!who || !who.canWrite) {
    return h("p", { class: "muted" }, "Redriving needs a token with tasks:write.");
  }
  const filter = {};
  for (const name of REDRIVE_FILTERS) if (params.get(name)) filter[name] = params.get(name);
  const limit = h("input", { id: "redrive-limit", type: "number", min: "1", max: "100000",
                             value: "1000" });
  const out = h("div", { "aria-live": "polite" });
  const count = async () => {
    const body = { filter, limit: Number(limit.value), dry_run: true };
    let dry;
    try {
      dry = await call("/dead-letters/redrive", { method: "POST", body });
    } catch (err) {
      clear(out, failure(err));
      return;
    }
    if (!dry.matched) {
      clear(out, message("info", "No dead letter of your tenant matches: nothing to redrive."));
      return;
    }
    clear(out, message("info", h("span", { "data-matched": dry.matched },
      `${dry.matched} dead letter${dry.matched === 1 ? "" : "s"} match.`), " ",
      h("button", { type: "button", class: "primary", "data-action": "redrive",
                    onclick: () => redrive(dry.matched) }, `Redrive ${dry.matched}…`)));
  };
  const redrive = async (matched) => {
    if (!(await confirmDialog("Redrive dead letters?",
      `${matched} job(s) go back to their queues with a fresh attempt budget.`, "Redrive"))) return;
    try {
      const done = await call("/dead-letters/redrive", {
        method: "POST", body: { filter, limit: Number(limit.value) } });
      clear(out, message("ok", h("span", { "data-redriven": done.redriven },
        `Redriven: ${done.redriven} job(s) are back in their queues.`), " ",
        h("a", { href: "#/jobs" }, "See the jobs")));
    } catch (err) {
      clear(out, failure(err));
    }
  };
  const described = Object.keys(filter).length
    ? `the dead letters matching the filters above (${Object.entries(filter).map(([k, v]) => `${k}: ${v}`).join(", ")})`
    : "all your tenant's dead letters (set filters above to narrow it)";
  return h("section", { class: "filters", "aria-labelledby": "redrive-h" },
    h("div", {}, h("h2", { id: "redrive-h" }, "Redrive"),
      h("p", {}, `Sends ${described} back to work: your tenant's only.`),
      h("div", { class: "actions" },
        h("label", { for: "redrive-limit", class: "inline" }, "At most", limit, "jobs"),
        h("button", { type: "button", "data-action": "count", onclick: count }, "Count matching")),
      out));
}
