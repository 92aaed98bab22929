// What every dashboard page shares: the notice line for messages and API errors, polling, and small cells.
import { ApiError } from "./api.js";
import { h, shortId } from "./dom.js";

export const main = document.getElementById("main");
const notice = document.getElementById("notice");
const POLL_MS = 2000;
export const ENDED = new Set(["succeeded", "failed", "cancelled", "pruned"]);

export function say(message, kind = "error") {
  notice.replaceChildren(message);
  notice.className = kind;
  notice.hidden = !message;
}

/** Shows what went wrong; a 401 says how to get a key rather than just "unauthorized". */
export function showError(error) {
  if (error instanceof ApiError && error.status === 401) {
    say(h("span", {}, "This server needs an API key. Paste one into the ", h("b", {}, "API key"),
          " field above and press Save. A fresh ", h("code", {}, "textclf serve"), " writes an admin key to ",
          h("code", {}, "<data dir>/admin.key"), ". (", error.message, ")"));
  } else if (error instanceof ApiError) {
    say(`${error.message} (HTTP ${error.status}, ${error.code})`);
  } else {
    say(`Cannot reach the server: ${error.message}`);
  }
}

/**
 * Runs `step` now and every POLL_MS until it returns false; errors are shown and polling goes on.
 * Only an error that polling showed is cleared when polling recovers: a button's error (a refused cancel or
 * promote) stays up until the user acts again.
 */
export async function poll(step) {
  let failing = false;
  for (;;) {
    let again = true;
    try {
      again = (await step()) !== false;
      if (failing) say("");
      failing = false;
    } catch (error) {
      showError(error);
      failing = true;
    }
    if (!again) return;
    await new Promise((resolve) => setTimeout(resolve, document.hidden ? POLL_MS * 5 : POLL_MS));
  }
}

export const badge = (status) => h("span", { class: `badge ${status}` }, status);
export const jobLink = (id) => h("a", { href: `/jobs/${id}`, class: "mono" }, shortId(id));
export const tryLink = (id, text) =>
  (id ? h("a", { href: `/try?model=${id}`, class: "mono" }, text || shortId(id)) : "–");
export const table = (headers, rows, attrs = {}) =>
  h("table", attrs, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, rows));
// The pattern the API accepts for an alias name: the browser refuses anything else before a request is made.
export const ALIAS_PATTERN = "[A-Za-z0-9_.\\-]{1,64}";
