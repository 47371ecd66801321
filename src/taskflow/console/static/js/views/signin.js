// Sign-in: paste a token. It is kept in this tab's session storage only.
import { call, identity, setToken, signOut } from "../api.js";
import { clear, failure, h } from "../dom.js";
import { go } from "../router.js";

export async function signin(main) {
  const errors = h("div", { "aria-live": "polite" });
  const field = h("textarea", { id: "token", name: "token", class: "token", required: true,
                                spellcheck: "false", autocomplete: "off" });
  const form = h("form", { class: "signin" },
    h("label", { for: "token" }, "API token (a JWT)", field),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Sign in")));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setToken(field.value);
    try {
      await call("/queues?minutes=1");  // any read: proves the API takes the token
    } catch (err) {
      signOut();
      clear(errors, failure(err));
      return;
    }
    window.dispatchEvent(new CustomEvent("taskflow:signed-in"));
    go("/overview");
  });
  clear(main, h("h1", {}, "Sign in"),
    h("p", {}, "Paste a token. It stays in this browser tab (session storage) and is sent only ",
      "to this API as a bearer header. ", h("code", {}, "taskflow token --tenant T"),
      " mints one; ", h("code", {}, "taskflow dev"), " prints a link that signs you in."),
    errors, form);
  if (identity()) main.append(h("p", { class: "muted" }, "You are signed in already; a new token replaces it."));
  field.focus();
}
