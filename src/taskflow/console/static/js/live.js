// Live views refresh on a short interval until they leave the screen (their signal
// aborts). The next refresh is scheduled after the previous one ends, so a slow API is
// never asked twice at once.

export const REFRESH_MS = 2000;

export function repeat(signal, fn, ms = REFRESH_MS) {
  let timer = null;
  const step = async () => {
    if (signal.aborted) return;
    try {
      await fn();
    } finally {
      if (!signal.aborted) timer = setTimeout(step, ms);
    }
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  return step();
}

export function stamp(el) {
  el.textContent = `Live · updated ${new Date().toLocaleTimeString()}`;
}
