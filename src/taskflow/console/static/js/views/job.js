// A job: what it is, its payload and result, its attempts as a timeline, its neighbours
// in the graph, its notifications; cancel and retry. Refreshes while it is unfinished.
import { ApiError, call, identity } from "../api.js";
import {
  badge, clear, confirmDialog, failure, h, jobLink, message, seconds, table, when,
} from "../dom.js";
import { jsonView } from "../json.js";
import { repeat, stamp } from "../live.js";

const ACTIVE = new Set(["blocked", "scheduled", "queued", "running"]);

export async function job(main, { match, signal }) {
  const id = match[1];
  const live = h("span", { class: "live" }, "");
  const notice = h("div", { "aria-live": "polite" });
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  clear(main, h("p", {}, h("a", { href: "#/jobs" }, "← Jobs")), notice, body);
  let last = null;  // the state last drawn: a finished job is drawn once more, then left
  await repeat(signal, async () => {
    if (last && !ACTIVE.has(last)) return;
    let data;
    try {
      data = await fetchJob(id, signal);
    } catch (err) {
      if (err.name !== "AbortError") clear(body, failure(err));
      last = "error";
      return;
    }
    draw(body, data, live, notice, () => { last = null; });
    last = data.job.state;
    stamp(live);
  });
}

async function fetchJob(id, signal) {
  const [job, attempts, links, notes] = await Promise.all([
    call(`/tasks/${id}`, { signal }), call(`/tasks/${id}/attempts`, { signal }),
    call(`/tasks/${id}/dependencies`, { signal }),
    call(`/tasks/${id}/notifications`, { signal })]);
  return { job, attempts: attempts.items, links, notes: notes.items };
}

function draw(el, { job, attempts, links, notes }, live, notice, again) {
  clear(el,
    h("h1", {}, `${job.task} `, badge(job.state), " ", live),
    actions(job, notice, again),
    h("div", { class: "grid2" },
      h("section", {}, h("h2", {}, "Job"), h("dl", { class: "facts" },
        fact("Id", h("span", { class: "mono" }, job.id)),
        fact("Queue", h("a", { href: `#/jobs?queue=${encodeURIComponent(job.queue)}` }, job.queue)),
        fact("Tenant", job.tenant), fact("Priority", job.priority),
        fact("Attempts", `${job.attempts} of ${job.max_attempts}`),
        fact("Created", when(job.created_at)), fact("Due", when(job.run_at)),
        fact("Started", when(job.started_at)), fact("Ended", when(job.finished_at)),
        job.timeout ? fact("Timeout", seconds(job.timeout)) : null,
        job.idempotency_key ? fact("Idempotency key", job.idempotency_key) : null,
        job.workflow_id ? fact("Workflow", h("a", { href: `#/workflows/${job.workflow_id}` },
                                               job.node || job.workflow_id)) : null,
        job.cancelled_by ? fact("Cancelled by", jobLink(job.cancelled_by)) : null,
        fact("Labels", Object.keys(job.labels).length
          ? Object.entries(job.labels).map(([k, v]) => h("a", {
              class: "chip", href: `#/jobs?label=${encodeURIComponent(`${k}=${v}`)}` }, `${k}=${v}`))
          : "—"))),
      h("section", {}, h("h2", {}, "Attempts"), timeline(job, attempts))),
    job.error ? [h("h2", {}, "Error"), h("pre", { "data-error": "" }, job.error)] : null,
    h("div", { class: "grid2" },
      h("section", {}, h("h2", {}, "Payload"), jsonView(job.payload, "payload")),
      h("section", {}, h("h2", {}, "Result"), job.result === null && job.state !== "succeeded"
        ? h("p", { class: "muted" }, "No result yet.") : jsonView(job.result, "result"))),
    h("div", { class: "grid2" },
      h("section", {}, h("h2", {}, "Upstream"), neighbours(links.upstream, "Runs after no job.")),
      h("section", {}, h("h2", {}, "Downstream"),
        neighbours(links.downstream, "No job runs after this one."))),
    links.more ? h("p", { class: "muted" }, "Only the first 100 of each are listed.") : null,
    h("section", {}, h("h2", {}, "Notifications"), notes.length
      ? table(["Event", "Channel", "Target", "Status", "Attempts#", "Last error", "Delivered"],
          notes.map((n) => h("tr", {}, h("td", {}, n.event), h("td", {}, n.channel),
            h("td", { class: "mono" }, n.target ?? "—"), h("td", {}, n.status),
            h("td", { class: "num" }, n.attempts), h("td", {}, n.last_error ?? "—"),
            h("td", {}, when(n.delivered_at)))))
      : h("p", { class: "muted" }, "None: no subscription or notify setting matched this job's events.")));
}

function fact(term, value) {
  return [h("dt", {}, term), h("dd", {}, value)];
}

function timeline(job, attempts) {
  const items = attempts.map((a) => h("li", { class: `outcome-${a.outcome}`, "data-attempt": a.attempt },
    h("strong", {}, `Attempt ${a.attempt}: ${a.outcome}`), " · ",
    h("span", { class: "mono" }, a.worker ?? "?"), " · ", when(a.started_at), " · ",
    seconds(a.duration ?? (Date.parse(a.finished_at) - Date.parse(a.started_at)) / 1000),
    a.error ? h("pre", {}, a.error) : null));
  if (job.state === "running") {
    items.push(h("li", { class: "outcome-running" },
      h("strong", {}, `Attempt ${job.attempts}: running`), " since ", when(job.started_at)));
  }
  return items.length ? h("ol", { class: "timeline" }, items)
    : h("p", { class: "muted" }, ACTIVE.has(job.state) ? "Not started yet." : "No attempt was made.");
}

function neighbours(list, none) {
  if (!list.length) return h("p", { class: "muted" }, none);
  return h("ul", {}, list.map((j) => h("li", {}, jobLink(j.id, j.node || j.id), " ", j.task, " ",
                                      badge(j.state))));
}

function actions(job, notice, again) {
  const who = identity();
  // The API lets a token write its own tenant's jobs only: an admin reading another
  // tenant's job cannot cancel or retry it.
  const mine = who && who.canWrite && who.tenant === job.tenant;
  if (!mine) {
    return h("p", { class: "muted" }, who && who.canWrite
      ? "Another tenant's job: only its tenant's tokens may cancel or retry it."
      : "Cancel and retry need a token with tasks:write.");
  }
  const run = async (verb, title, text) => {
    if (!(await confirmDialog(title, text, verb, verb === "Cancel job"))) return;
    try {
      const path = verb === "Retry" ? "retry" : "cancel";
      const out = await call(`/tasks/${job.id}/${path}`, { method: "POST" });
      clear(notice, message("ok", `${verb === "Retry" ? "Retried" : "Cancelled"}: the job is now ${out.state}.`));
      again();
    } catch (err) {
      clear(notice, failure(err instanceof ApiError ? err : new ApiError(0, String(err))));
    }
  };
  return h("div", { class: "actions" },
    ACTIVE.has(job.state) ? h("button", { type: "button", class: "danger", "data-action": "cancel",
      onclick: () => run("Cancel job", "Cancel this job?",
        job.state === "running" ? "Its worker stops it; it ends cancelled." :
          "It will not run; jobs that wait for it are cancelled too.") }, "Cancel…") : null,
    ["failed", "cancelled"].includes(job.state) ? h("button", { type: "button", class: "primary",
      "data-action": "retry", onclick: () => run("Retry", "Run this job again?",
        "It goes back to its queue with at least one more attempt.") }, "Retry…") : null);
}

