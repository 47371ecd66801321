// Overview: each queue's figures and recent throughput, and the workers alive; live.
import uPlot from "/ui/vendor/uPlot.esm.js";
import { call, identity, query } from "../api.js";
import { clear, empty, failure, h, seconds, table } from "../dom.js";
import { filterForm, tenantField } from "../filters.js";
import { repeat, stamp } from "../live.js";

const FIGURES = ["ready", "scheduled", "running", "blocked", "failed_last_hour"];

export async function overview(main, { params, signal }) {
  const who = identity();
  const tenant = params.get("tenant") || "";
  const live = h("span", { class: "live", "aria-live": "off" }, "Loading…");
  const errors = h("div", { "aria-live": "polite" });
  const queues = h("section", { "aria-labelledby": "queues-h" });
  const workers = h("section", { "aria-labelledby": "workers-h" });
  clear(main, h("h1", {}, "Overview ", live),
    tenantField(who).length ? filterForm("/overview", tenantField(who), params) : null,
    errors, queues, workers);
  const charts = new Map();
  signal.addEventListener("abort", () => charts.forEach((c) => c.destroy()));
  let drawn = "";  // the queues drawn: another set (a queue appeared) draws again
  await repeat(signal, async () => {
    let body;
    try {
      body = await call(`/queues${query({ minutes: 15, tenant })}`, { signal });
    } catch (err) {
      if (err.name !== "AbortError") clear(errors, failure(err));
      return;
    }
    clear(errors);
    const names = body.queues.map((q) => q.name).join("\n");
    if (names !== drawn) {
      charts.forEach((c) => c.destroy());
      charts.clear();
      drawQueues(queues, body, charts);
      drawn = names;
    }
    updateQueues(queues, body, charts);
    drawWorkers(workers, body.workers);
    stamp(live);
  });
}

function drawQueues(section, body, charts) {
  const rows = body.queues.map((q) => h("tr", { "data-queue": q.name },
    h("th", { scope: "row" }, h("a", { href: `#/jobs?queue=${encodeURIComponent(q.name)}` }, q.name)),
    FIGURES.map((f) => h("td", { class: "num", "data-figure": f }, "")),
    h("td", { class: "num", "data-figure": "oldest_ready_age" }, ""),
    h("td", {}, h("div", { class: "spark", "data-chart": q.name, "aria-hidden": "true" }),
      h("div", { class: "live", "data-figure": "ended" }, ""))));
  clear(section, h("h2", { id: "queues-h" }, "Queues"),
    table(["Queue", "Ready#", "Scheduled#", "Running#", "Blocked#", "Failed (1 h)#",
           "Oldest ready#", "Ended per minute (15 min)"], rows),
    h("p", { class: "muted", "data-figure": "partial" }, ""),
    h("p", { class: "muted" }, "Submit jobs with POST /tasks; a queue's name opens its jobs."));
  for (const q of body.queues) {
    const el = section.querySelector(`[data-chart="${CSS.escape(q.name)}"]`);
    charts.set(q.name, new uPlot({
      width: 180, height: 44, legend: { show: false }, cursor: { show: false },
      padding: [4, 2, 4, 2],  // room for a flat line at 0
      axes: [{ show: false }, { show: false }],
      // From 0, and at least 0..1: an idle queue is a flat line at the bottom.
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max)] } },
      series: [{}, { stroke: "#1a7f37", fill: "rgba(26,127,55,.12)", width: 1.5,
                     label: "succeeded", points: { show: false } },
               { stroke: "#c62828", width: 1.5, label: "failed", points: { show: false } }],
    }, series(q), el));
  }
}

function series(q) {
  return [q.throughput.map((m) => Date.parse(m.minute) / 1000),
          q.throughput.map((m) => m.succeeded), q.throughput.map((m) => m.failed)];
}

function updateQueues(section, body, charts) {
  section.querySelector('[data-figure="partial"]').textContent = [
    body.complete ? "" : "More waiting jobs than one count reads: the backlog figures are lower bounds.",
    body.hour_complete ? "" : "The last hour's ended jobs are still being read: their figures are lower bounds.",
  ].filter(Boolean).join(" ");
  for (const q of body.queues) {
    const row = section.querySelector(`tr[data-queue="${CSS.escape(q.name)}"]`);
    for (const f of FIGURES) row.querySelector(`[data-figure="${f}"]`).textContent = q[f];
    row.querySelector('[data-figure="oldest_ready_age"]').textContent =
      q.oldest_ready_age === null ? "—" : seconds(q.oldest_ready_age);
    const sum = (key) => q.throughput.reduce((n, m) => n + m[key], 0);
    row.querySelector('[data-figure="ended"]').textContent =
      `${sum("succeeded")} succeeded · ${sum("failed")} failed · ${sum("cancelled")} cancelled`;
    charts.get(q.name)?.setData(series(q));
  }
}

function drawWorkers(section, workers) {
  clear(section, h("h2", { id: "workers-h" }, `Workers alive (${workers.length})`),
    workers.length
      ? table(["Worker", "Queues", "Running#"], workers.map((w) => h("tr", { "data-worker": w.name },
          h("td", { class: "mono" }, w.name), h("td", {}, w.queues.join(", ")),
          h("td", { class: "num" }, w.running))))
      : empty("No worker is alive. Start one with ", h("code", {}, "taskflow work"),
              " (or ", h("code", {}, "taskflow dev"), "): jobs wait in their queues until then."));
}
