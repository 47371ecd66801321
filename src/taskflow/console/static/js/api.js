// The API as the console calls it: the token lives in sessionStorage only (gone when the
// tab closes) and goes out only as a bearer header on same-origin requests.

const KEY = "taskflow.token";

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(value) {
  sessionStorage.setItem(KEY, value.trim());
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

// What the token says about its holder, read without verifying it: the API verifies it
// on every request; the console only uses this to hide buttons the API would refuse.
export function identity() {
  const value = token();
  if (!value) return null;
  try {
    const part = value.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    const raw = claims.scope ?? claims.scp ?? claims.scopes ?? [];
    const scopes = new Set(Array.isArray(raw) ? raw : String(raw).split(/\s+/).filter(Boolean));
    return {
      tenant: claims.tenant ?? claims.tid ?? "?",
      subject: claims.sub ?? null,
      expires: claims.exp ? new Date(claims.exp * 1000) : null,
      scopes,
      admin: scopes.has("admin"),
      canWrite: scopes.has("tasks:write"),
    };
  } catch {
    return { tenant: "?", subject: null, expires: null, scopes: new Set(), admin: false,
             canWrite: false };
  }
}

/** An error answer of the API (an RFC 9457 problem), or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, detail, field = null) {
    super(detail);
    this.status = status;
    this.field = field;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${token()}`, ...extra };
}

async function problem(resp) {
  let detail = `${resp.status} ${resp.statusText}`;
  let field = null;
  try {
    const body = await resp.json();
    detail = body.detail || body.title || detail;
    field = body.field ?? null;
  } catch { /* not JSON: keep the status line */ }
  return new ApiError(resp.status, detail, field);
}

/** GET or POST a same-origin API path; the parsed JSON body, or an ApiError. */
export async function call(path, { method = "GET", body, signal } = {}) {
  let resp;
  try {
    resp = await fetch(path, {
      method, signal, credentials: "omit", cache: "no-store",
      headers: headers(body === undefined ? { Accept: "application/json" }
                                          : { Accept: "application/json",
                                              "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `The API did not answer (${err.message}).`);
  }
  if (!resp.ok) throw await problem(resp);
  return resp.status === 204 ? null : resp.json();
}

/** A query string from an object (arrays repeat the key; empty values are left out). */
export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const v of Array.isArray(value) ? value : [value]) {
      if (v !== undefined && v !== null && v !== "") q.append(key, v);
    }
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}

/**
 * Server-Sent Events read with fetch(), because EventSource cannot send a bearer header.
 * Yields {event, id, data} until the server ends the stream; throws an ApiError when the
 * request fails.
 */
export async function* events(path, signal, lastId = null) {
  const resp = await fetch(path, {
    signal, credentials: "omit", cache: "no-store",
    headers: headers(lastId ? { Accept: "text/event-stream", "Last-Event-ID": lastId }
                            : { Accept: "text/event-stream" }),
  });
  if (!resp.ok) throw await problem(resp);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const message = { event: "message", id: null, data: [] };
      for (const line of block.split(/\r?\n/)) {
        if (!line || line.startsWith(":")) continue;  // comments are heartbeats
        const colon = line.indexOf(":");
        const name = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (name === "data") message.data.push(text);
        else if (name === "event") message.event = text;
        else if (name === "id") message.id = text;
      }
      if (message.data.length) yield { ...message, data: message.data.join("\n") };
    }
  }
}

/**
 * ``call`` for a view: the answer, or null once ``onError`` has been given the error (an
 * abort, when the view left the screen, is nobody's error).
 */
export async function load(path, signal, onError) {
  try {
    return await call(path, { signal });
  } catch (err) {
    if (err.name !== "AbortError") onError(err);
    return null;
  }
}
