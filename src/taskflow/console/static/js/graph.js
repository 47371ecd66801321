// A workflow's DAG as SVG: dagre's layered layout (upstream left, downstream right), pan
// by dragging, zoom with the wheel or the buttons (or + - 0 with the graph focused), each
// node a link to its job. Layout runs once: the edges of a workflow never change; live
// updates only recolour the nodes.
import dagre from "/ui/vendor/dagre.esm.js";
import { STATES, badge, h } from "./dom.js";

const NODE_H = 30;
const CHAR_W = 7.2;

export function drawGraph(holder, jobs, edges) {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 14, ranksep: 56, marginx: 20, marginy: 20 });
  g.setDefaultEdgeLabel(() => ({}));
  for (const j of jobs) {
    // As wide as the label with the longest state name, so that no state overflows it.
    const widest = label({ name: j.name, state: "scheduled" }).length;
    g.setNode(j.id, { width: Math.max(60, 24 + CHAR_W * widest), height: NODE_H });
  }
  for (const e of edges) g.setEdge(e.upstream, e.job);
  dagre.layout(g);
  const { width, height } = g.graph();

  const scene = h("g", {});
  const svg = h("svg", { role: "group", tabindex: "0", "aria-label":
    "Workflow graph: drag to pan, wheel or + and - to zoom, 0 to fit; Tab moves between jobs" },
    h("defs", {}, h("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5",
      markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
      h("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow" }))),
    scene);
  for (const e of g.edges()) {
    const pts = g.edge(e).points;
    const d = pts.map((p, i) => `${i ? "L" : "M"} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(" ");
    scene.append(h("path", { d, class: "edge", "marker-end": "url(#arrow)" }));
  }
  const nodes = new Map();
  for (const j of jobs) {
    const n = g.node(j.id);
    const el = h("a", { svg: true, href: `#/jobs/${j.id}`, class: ["node", `state-${j.state}`],
                        "data-node": j.name, "data-state": j.state },
      h("title", {}, `${j.name}: ${j.state}`),
      h("rect", { x: n.x - n.width / 2, y: n.y - n.height / 2, width: n.width, height: n.height }),
      h("text", { x: n.x - n.width / 2 + 10, y: n.y + 4 }, label(j)));
    nodes.set(j.id, el);
    scene.append(el);
  }

  const view = { x: 0, y: 0, k: 1 };
  const start = g.sources()[0];
  const apply = () => scene.setAttribute("transform", `translate(${view.x} ${view.y}) scale(${view.k})`);
  const fit = () => {
    const box = svg.getBoundingClientRect();
    // Fit the whole graph, but never below a scale where labels stop being readable
    // (12px text at 0.75 is 9px): a larger graph opens at its top left, where its first
    // jobs are, and panning or zooming out shows the rest.
    view.k = Math.min(1.5, Math.max(0.75, Math.min(box.width / width, box.height / height)));
    view.x = Math.max(0, (box.width - width * view.k) / 2);
    view.y = Math.max(0, (box.height - height * view.k) / 2);
    if (height * view.k > box.height && start) {  // too tall: centre on the first root
      view.y = box.height / 2 - g.node(start).y * view.k;
    }
    apply();
  };
  const zoom = (factor, cx, cy) => {
    const k = Math.min(4, Math.max(0.1, view.k * factor));
    view.x = cx - (cx - view.x) * (k / view.k);
    view.y = cy - (cy - view.y) * (k / view.k);
    view.k = k;
    apply();
  };
  const center = () => { const b = svg.getBoundingClientRect(); return [b.width / 2, b.height / 2]; };
  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    const b = svg.getBoundingClientRect();
    zoom(ev.deltaY < 0 ? 1.15 : 1 / 1.15, ev.clientX - b.left, ev.clientY - b.top);
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (ev) => {
    if (ev.target.closest("a")) return;  // a click on a node opens its job
    drag = { x: ev.clientX - view.x, y: ev.clientY - view.y };
    svg.setPointerCapture(ev.pointerId);
  });
  svg.addEventListener("pointermove", (ev) => {
    if (!drag) return;
    view.x = ev.clientX - drag.x;
    view.y = ev.clientY - drag.y;
    apply();
  });
  svg.addEventListener("pointerup", () => { drag = null; });
  svg.addEventListener("keydown", (ev) => {
    if (ev.key === "+" || ev.key === "=") zoom(1.2, ...center());
    else if (ev.key === "-") zoom(1 / 1.2, ...center());
    else if (ev.key === "0") fit();
    else return;
    ev.preventDefault();
  });

  holder.replaceChildren(
    h("div", { class: "legend", "aria-label": "States" }, STATES.map(badge)),
    h("div", { class: "graph" }, svg, h("div", { class: "tools" },
      h("button", { type: "button", "aria-label": "Zoom in", onclick: () => zoom(1.25, ...center()) }, "+"),
      h("button", { type: "button", "aria-label": "Zoom out", onclick: () => zoom(0.8, ...center()) }, "−"),
      h("button", { type: "button", onclick: fit }, "Fit"))));
  requestAnimationFrame(fit);

  return {
    update(latest) {
      for (const j of latest) {
        const el = nodes.get(j.id);
        if (!el || el.getAttribute("data-state") === j.state) continue;
        el.setAttribute("class", `node state-${j.state}`);
        el.setAttribute("data-state", j.state);
        el.querySelector("title").textContent = `${j.name}: ${j.state}`;
        el.querySelector("text").textContent = label(j);
      }
    },
  };
}

function label(j) {
  return `${j.name} · ${j.state}`;
}
