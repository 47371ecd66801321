// The console's entry point: sign-in from the URL fragment, the header, the routes.
import { identity, setToken, signOut, token } from "./api.js";
import { clear, h } from "./dom.js";
import { render, route, where } from "./router.js";
import { deadLetters } from "./views/deadletters.js";
import { job } from "./views/job.js";
import { jobs } from "./views/jobs.js";
import { overview } from "./views/overview.js";
import { signin } from "./views/signin.js";
import { workflow } from "./views/workflow.js";
import { workflows } from "./views/workflows.js";

const ID = "([0-9a-fA-F-]{36})";
route(/^\/signin$/, signin);
route(/^\/overview$/, overview);
route(/^\/jobs$/, jobs);
route(new RegExp(`^/jobs/${ID}$`), job);
route(/^\/workflows$/, workflows);
route(new RegExp(`^/workflows/${ID}$`), workflow);
route(/^\/dead-letters$/, deadLetters);

// `taskflow dev` prints /ui/#token=...: the fragment never reaches the server (so no log
// has it); keep the token in session storage and take it out of the address bar.
// Also on hashchange: the link opened in a tab that shows the console already.
function takeTokenFromFragment() {
  const match = location.hash.match(/^#token=([^&]+)$/);
  if (!match) return false;
  setToken(decodeURIComponent(match[1]));
  history.replaceState(null, "", `${location.pathname}#/overview`);
  header();
  return true;
}

function header() {
  const who = identity();
  const el = document.getElementById("who");
  if (!who) {
    clear(el);
    return;
  }
  const scopes = [...who.scopes].join(" ");
  clear(el, h("span", { "data-tenant": who.tenant }, `tenant ${who.tenant}`),
    h("span", { class: "scopes", title: "scopes" }, scopes),
    h("button", { type: "button", onclick: () => { signOut(); header(); location.hash = "#/signin"; } },
      "Sign out"));
}

function markNav() {
  const page = where().path.split("/")[1];
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

async function show() {
  const main = document.getElementById("main");
  if (!token() && where().path !== "/signin") {
    location.hash = "#/signin";
    return;
  }
  markNav();
  const found = await render(main);
  if (!found) {
    clear(main, h("h1", {}, "Not found"), h("p", {}, "No such page. ",
      h("a", { href: "#/overview" }, "Go to the overview"), "."));
  }
}

takeTokenFromFragment();
header();
window.addEventListener("hashchange", () => {
  takeTokenFromFragment();
  show();
  document.getElementById("main").focus({ preventScroll: true });
});
window.addEventListener("taskflow:signed-in", header);
show();
