// Hash routes: #/<page>[/<id>][?<filters>]. The filters live in the URL, so a view can be
// shared, bookmarked, and gone back to.

const routes = [];
let current = null;  // the cleanup of the view on screen

export function route(pattern, view) {
  routes.push({ pattern, view });
}

export function where() {
  const hash = location.hash.replace(/^#/, "") || "/overview";
  const [path, search = ""] = hash.split("?");
  return { path, params: new URLSearchParams(search) };
}

/** Go to ``path`` with ``params`` (an object or URLSearchParams; empty values dropped). */
export function go(path, params = {}) {
  const q = new URLSearchParams();
  const entries = params instanceof URLSearchParams ? params.entries() : Object.entries(params);
  for (const [k, v] of entries) {
    for (const one of Array.isArray(v) ? v : [v]) if (one) q.append(k, one);
  }
  const text = q.toString();
  location.hash = `#${path}${text ? `?${text}` : ""}`;
}

export async function render(main) {
  if (current) current();
  current = null;
  const { path, params } = where();
  for (const { pattern, view } of routes) {
    const match = path.match(pattern);
    if (match) {
      const controller = new AbortController();
      current = () => controller.abort();
      await view(main, { params, match, signal: controller.signal });
      return match;
    }
  }
  return null;
}
