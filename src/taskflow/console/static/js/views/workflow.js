// A workflow: its graph (layered, pan and zoom, nodes coloured by state, a click opens
// the job), live from its event stream (polling if the stream fails), and its jobs as a
// table for keyboard and screen-reader use.
import { call, events } from "../api.js";
import { badge, clear, failure, h, jobLink, message, table } from "../dom.js";
import { drawGraph } from "../graph.js";
import { REFRESH_MS } from "../live.js";

const MAX_DRAWN = 2000;
const MAX_ROWS = 2000;

export async function workflow(main, { match, signal }) {
  const id = match[1];
  const title = h("h1", {}, "Workflow");
  const notice = h("div", { "aria-live": "polite" });
  const holder = h("div", {});
  const jobs = h("details", {}, h("summary", {}, "Jobs as a table"));
  clear(main, h("p", {}, h("a", { href: "#/workflows" }, "← Workflows")), title, notice, holder, jobs);
  let view, edges;
  try {
    [view, edges] = await Promise.all([call(`/workflows/${id}`, { signal }),
                                       call(`/workflows/${id}/edges`, { signal })]);
  } catch (err) {
    if (err.name !== "AbortError") clear(notice, failure(err));
    return;
  }
  // Layout is superlinear in the graph's size: past MAX_DRAWN jobs (a workflow may have
  // 20,000) the browser would stall, so such a workflow is shown as its table only.
  const drawn = view.jobs.length <= MAX_DRAWN;
  const graph = drawn ? drawGraph(holder, view.jobs, edges.edges) : null;
  if (!drawn) {
    clear(holder, message("info", `${view.jobs.length} jobs: too many to draw here. `,
                          "The table below lists them."));
    jobs.open = true;
  }
  const show = (v) => {
    clear(title, `${v.name} `, badge(v.state));
    graph?.update(v.jobs);
    const shown = v.jobs.slice(0, MAX_ROWS);
    clear(jobs, h("summary", {}, `Jobs as a table (${v.jobs.length})`),
      table(["Name", "Task", "State", "Attempts#", "Job"], shown.map((j) => h("tr", {},
        h("td", {}, j.name), h("td", {}, j.task), h("td", {}, badge(j.state)),
        h("td", { class: "num" }, j.attempts), h("td", {}, jobLink(j.id))))),
      v.jobs.length > MAX_ROWS
        ? h("p", { class: "muted" }, `The first ${MAX_ROWS} of ${v.jobs.length} jobs.`) : null);
  };
  show(view);
  follow(id, view, show, notice, signal);
}

/** The event stream until the workflow ends; on a failed stream, polling instead. */
async function follow(id, view, show, notice, signal) {
  let lastId = null;
  while (!signal.aborted && view.state === "running") {
    try {
      for await (const message of events(`/workflows/${id}/events`, signal, lastId)) {
        lastId = message.id;
        view = JSON.parse(message.data);
        show(view);
      }
    } catch (err) {
      if (signal.aborted) return;
      clear(notice, failure(err));
      await pause(REFRESH_MS, signal);
      try {
        view = await call(`/workflows/${id}`, { signal });
        show(view);
        clear(notice);
      } catch { /* the message stays; try again */ }
    }
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); });
  });
}

