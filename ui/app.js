// Tessera's console: a client of the public API, nothing more. It holds the root key it is
// given in this closure's memory only (never in storage, a cookie or a URL), sends it with
// each call, and builds every page from elements and text nodes: the page's policy refuses
// markup written from strings, so nothing the API returns can become script.
"use strict";

(() => {
  // ---- The session: the credential lives here and nowhere else. -------------------------

  /** @type {{key: string|null, me: any}|null} */
  let session = null;

  const ALL_PERMISSIONS = [
    "apis:read", "apis:write", "keys:create", "keys:read", "keys:update", "keys:rotate",
    "keys:revoke", "keys:verify", "certs:issue", "certs:read", "certs:revoke", "certs:verify",
    "audit:read", "metrics:read", "tenants:admin", "feed:read",
  ];
  const REVOCATION_REASONS = [
    "unspecified", "key_compromise", "ca_compromise", "affiliation_changed", "superseded",
    "cessation_of_operation", "privilege_withdrawn", "aa_compromise",
  ];

  function isGlobalAdmin() {
    return session !== null && session.me.tenant === null &&
      session.me.permissions.includes("admin");
  }

  /** Whether the signed-in principal holds `permission` (the API decides; this only shapes the page). */
  function can(permission) {
    return isGlobalAdmin() || (session !== null && session.me.permissions.includes(permission));
  }

  // ---- Calls to the API. ------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, detail, requestId) {
      super(detail && detail.message ? detail.message : `HTTP ${status}`);
      this.status = status;
      this.detail = detail || {};
      this.requestId = (detail && detail.request_id) || requestId || null;
    }
  }

  /** Calls the API with the session's credential (or `asKey`, for signing in). */
  async function api(method, path, body, asKey) {
    const headers = { Accept: "application/json" };
    const key = asKey !== undefined ? asKey : session && session.key;
    if (key) {
      headers.Authorization = "Bearer " + key;
    }
    const init = { method, headers, cache: "no-store", credentials: "same-origin", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) {
      throw new ApiFailure(0, { code: "network", message: "Tessera could not be reached." }, null);
    }
    const text = await res.text();
    let data = null;
    if (text !== "") {
      try {
        data = JSON.parse(text);
      } catch (e) {
        data = null;
      }
    }
    if (!res.ok) {
      throw new ApiFailure(res.status, data && data.error, res.headers.get("x-request-id"));
    }
    return data;
  }

  /** Every page of a listing (bounded: a console shows what a person can read). */
  async function listAll(path, max = 1000) {
    const items = [];
    let cursor = null;
    do {
      const sep = path.includes("?") ? "&" : "?";
      const page = await api("GET", `${path}${sep}limit=100${cursor ? "&cursor=" + encodeURIComponent(cursor) : ""}`);
      items.push(...page.items);
      cursor = page.next_cursor || null;
    } while (cursor && items.length < max);
    // Said under the table: the list goes on past what the console reads.
    items.truncated = cursor !== null;
    return items;
  }

  /** Says under a list that it goes on past what the console read (an empty node if not:
   * it goes straight into the DOM's `append`). */
  function capNote(items) {
    return items.truncated
      ? h("p", { class: "hint" }, `The first ${items.length} are shown; there are more (the API lists them all, page by page).`)
      : document.createTextNode("");
  }

  // ---- Building the page from elements. ---------------------------------------------------

  /** The element properties `h` may set: none of them can carry markup or script (`href`
   * takes only the console's own `#/…` routes and blob: downloads, see `safeHref`). */
  const PROPERTIES = new Set([
    "id", "type", "name", "value", "href", "download", "checked", "selected", "disabled",
    "required", "placeholder", "autocomplete", "spellcheck", "maxLength", "min", "max",
    "pattern", "rows", "colSpan", "scope",
  ]);

  function safeHref(v) {
    if (typeof v === "string" && (v.startsWith("#/") || v.startsWith("blob:"))) return v;
    throw new Error(`refused link ${String(v).slice(0, 40)}`);
  }

  /** An element: `attrs` are allowed properties, `on*` listeners, `class`, `for`, or
   * `aria-*`/`data-*`/`role` attributes; children are nodes or strings (as text, never markup). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (k === "for") el.htmlFor = v;
      else if (k.startsWith("aria-") || k.startsWith("data-") || k === "role") el.setAttribute(k, v);
      else if (k === "href") el.href = safeHref(v);
      else if (PROPERTIES.has(k)) el[k] = v;
      else throw new Error(`h: property ${k} is not allowed`);
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const svgNs = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(svgNs, tag);
    for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
    append(el, children);
    return el;
  }

  let fieldIds = 0;
  /** A labelled form field. */
  function field(label, input, hint) {
    const id = `f${++fieldIds}`;
    input.id = id;
    const hintEl = hint ? h("span", { class: "hint", id: id + "-hint" }, hint) : null;
    if (hintEl) input.setAttribute("aria-describedby", hintEl.id);
    return h("div", { class: "field" }, h("label", { for: id }, label), input, hintEl);
  }

  function input(name, attrs) {
    return h("input", Object.assign({ name, type: "text", autocomplete: "off" }, attrs || {}));
  }

  function select(name, options, value) {
    return h("select", { name },
      options.map(o => h("option", { value: o, selected: o === value }, o)));
  }

  function button(label, onclick, attrs) {
    return h("button", Object.assign({ type: "button", onclick }, attrs || {}), label);
  }

  /** A button the principal may not use: disabled, and saying why. */
  function gated(permission, label, onclick, attrs) {
    if (can(permission)) return button(label, onclick, attrs);
    return h("span", { class: "gated" },
      h("button", Object.assign({ type: "button", disabled: true }, attrs || {}, { onclick: undefined }), label),
      h("span", { class: "hint" }, ` needs ${permission}`));
  }

  function fmtTime(t) {
    if (!t) return "—";
    return t.replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function daysUntil(t) {
    return (Date.parse(t) - Date.now()) / 86400000;
  }

  function table(headers, rows, caption) {
    return h("table", {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map(x => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colSpan: headers.length, class: "empty" }, "None."))));
  }

  function badge(text, kind) {
    return h("span", { class: `badge ${kind || text}` }, text);
  }

  // ---- Messages and errors: as the API says them, with the request id. -------------------

  function errorBox(err) {
    if (!(err instanceof ApiFailure)) {
      return h("div", { class: "error", role: "alert" }, String(err && err.message || err));
    }
    const d = err.detail;
    const parts = [];
    if (err.status === 404) parts.push(h("strong", {}, "Not found."));
    else if (err.status === 403) parts.push(h("strong", {}, "403 Forbidden: "), d.message || "");
    else if (err.status === 401) parts.push(h("strong", {}, "401 Unauthenticated: "), d.message || "");
    else parts.push(h("strong", {}, err.status ? `${err.status} ${d.code || ""}: ` : ""), d.message || "");
    if (d.field) parts.push(" Field: ", h("code", { class: "field-name" }, d.field), ".");
    if (d.permission) parts.push(" Needs permission ", h("code", {}, d.permission), ".");
    if (err.requestId) parts.push(h("span", { class: "rid" }, " Request id ", h("code", {}, err.requestId)));
    return h("div", { class: "error", role: "alert", "data-status": String(err.status) }, parts);
  }

  function say(text) {
    const st = document.getElementById("status");
    st.textContent = text;
  }

  /** Runs `fn`, showing its failure in `where` (replacing what was there). */
  async function attempt(where, fn) {
    where.replaceChildren();
    try {
      await fn();
    } catch (e) {
      where.replaceChildren(errorBox(e));
      if (e instanceof ApiFailure && e.status === 401 && session !== null) {
        // The credential stopped working (revoked, expired).
        say("The credential was refused: sign out and in again.");
      }
    }
  }

  // ---- The one-time reveal of a secret. ---------------------------------------------------

  /** Shows `secret` once, with a copy button; "Done" (or leaving the page) takes it out of
   * the page and drops the reference. */
  function reveal(title, secret, note) {
    // One secret on the page at a time.
    forgetReveals();
    let held = secret;
    const code = h("code", { class: "secret", id: "secret-value" }, held);
    const box = h("section", { class: "reveal", "aria-label": title },
      h("h3", {}, title),
      h("p", {}, note),
      code,
      h("div", { class: "actions" },
        button("Copy", async () => {
          if (held === null) return;
          try {
            await navigator.clipboard.writeText(held);
            say("Copied. The clipboard keeps it until you copy something else: paste it where it belongs, then copy something harmless.");
          } catch (e) {
            say("The browser refused the clipboard: select the text and copy it.");
          }
        }, { id: "copy-secret" }),
        button("Done: I have stored it", () => forget(), { id: "forget-secret" })));
    function forget() {
      held = null;
      code.textContent = "";
      box.remove();
    }
    reveals.push(forget);
    return box;
  }
  /** Forgets every secret still shown (called on every navigation and at sign-out). */
  let reveals = [];
  function forgetReveals() {
    const fs = reveals;
    reveals = [];
    fs.forEach(f => f());
  }

  /** Offers `text` as a file download once, without putting it into the page. */
  function download(filename, text, mime) {
    const url = URL.createObjectURL(new Blob([text], { type: mime }));
    const a = h("a", { href: url, download: filename });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  // ---- Sign-in and sign-out. --------------------------------------------------------------

  function signInPage() {
    const main = document.getElementById("main");
    const out = h("div", {});
    // A masked text field, not a password field: a browser offers to save what was typed into
    // a password field, and a root key must not land in its password store.
    const key = input("root_key", { autocomplete: "off", spellcheck: false, required: true, "data-1p-ignore": "true", "data-lpignore": "true", class: "masked" });
    const form = h("form", {
      class: "card", "aria-label": "Sign in",
      onsubmit: async e => {
        e.preventDefault();
        const value = key.value.trim();
        key.value = "";
        await signIn(value === "" ? null : value, out);
      },
    },
    h("h1", {}, "Sign in"),
    h("p", {}, "A root key is kept in this tab's memory only: closing the tab or signing out forgets it."),
    field("Root key", key, "tsr_…"),
    h("div", { class: "actions" },
      h("button", { type: "submit", id: "sign-in" }, "Sign in with the root key"),
      button("Use this browser's client certificate", () => signIn(null, out), { id: "sign-in-cert", class: "secondary" })),
    out);
    main.replaceChildren(form);
    key.focus();
  }

  async function signIn(key, out) {
    let me;
    try {
      me = await api("GET", "/v1/whoami", undefined, key);
    } catch (e) {
      out.replaceChildren(errorBox(e));
      return;
    }
    session = { key, me };
    drawChrome();
    if (location.hash === "" || location.hash === "#/") location.hash = "#/apis";
    else route();
  }

  function signOut() {
    forgetReveals();
    session = null;
    // Reloading drops this page's whole memory; nothing was ever stored elsewhere.
    location.replace("/ui/");
  }

  function drawChrome() {
    const nav = document.getElementById("nav");
    const links = [["#/apis", "APIs"], ["#/certs", "Certificates"], ["#/audit", "Audit"]];
    if (can("tenants:admin")) links.push(["#/access", isGlobalAdmin() ? "Tenants & access" : "Access"]);
    nav.replaceChildren(h("ul", {}, links.map(([href, label]) => h("li", {}, h("a", { href }, label)))));
    const me = session.me;
    document.getElementById("who").replaceChildren(
      h("span", { id: "whoami" }, `${me.kind === "root_key" ? "Root key" : "Certificate"} ${me.identity}`,
        me.tenant ? ` · tenant ${me.tenant}` : " · global admin"),
      button("Sign out", signOut, { id: "sign-out", class: "secondary" }));
  }

  // ---- Routing: `#/section/id...` ---------------------------------------------------------

  /** What the page shown now must stop when it is left (timers). */
  let leaving = [];
  /** Counts navigations: a page still loading when the next one starts is dropped. */
  let navigations = 0;

  async function route() {
    forgetReveals();
    const previous = leaving;
    // This navigation's own list: a page registers its timers here, never on a newer page's.
    const mine = [];
    leaving = mine;
    previous.forEach(f => f());
    const onLeave = fn => mine.push(fn);
    const navigation = ++navigations;
    if (session === null) {
      signInPage();
      return;
    }
    say("");
    window.scrollTo(0, 0);
    let parts;
    try {
      parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    } catch (e) {
      parts = [];
    }
    const main = document.getElementById("main");
    main.replaceChildren(h("p", { class: "loading" }, "Loading…"));
    document.querySelectorAll("#nav a").forEach(a => {
      if (location.hash.startsWith(a.getAttribute("href"))) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    });
    const page = h("div", { class: "page" });
    try {
      const [section, id, sub] = parts;
      if (section === "apis" && !id) await apisPage(page);
      else if (section === "apis" && sub === "issue") await issueKeyPage(page, id);
      else if (section === "apis") await apiPage(page, id);
      else if (section === "keys" && id) await keyPage(page, id, onLeave);
      else if (section === "certs" && !id) await certsPage(page);
      else if (section === "certs") await certPage(page, id);
      else if (section === "audit") await auditPage(page);
      else if (section === "access" && !id) await accessPage(page);
      else if (section === "access") await tenantPage(page, id);
      else page.append(h("h1", {}, "Not found."));
    } catch (e) {
      page.replaceChildren(h("h1", {}, e instanceof ApiFailure && e.status === 404 ? "Not found" : "Error"), errorBox(e));
    }
    if (navigation !== navigations) {
      // Another navigation started while this page loaded: it is never shown.
      mine.forEach(f => f());
      return;
    }
    main.replaceChildren(page);
    const h1 = page.querySelector("h1");
    if (h1) document.title = `${h1.textContent} · Tessera console`;
    main.focus({ preventScroll: true });
  }

  // ---- APIs. ------------------------------------------------------------------------------

  const RISKS = ["low", "medium", "high"];

  function apiForm(existing, onDone) {
    const out = h("div", {});
    const f = {
      name: input("name", { required: true, maxLength: 100, value: existing ? existing.name : "" }),
      purpose: h("textarea", { name: "purpose", required: true, maxLength: 1000, rows: 2, value: existing ? existing.purpose : "" }),
      owner: input("owner", { required: true, maxLength: 200, value: existing ? existing.owner : "" }),
      risk: select("risk", RISKS, existing ? existing.risk : "medium"),
      live_date: input("live_date", { type: "date", value: existing && existing.live_date ? existing.live_date : "" }),
      review_by: input("review_by", { type: "date", value: existing ? existing.review_by : "" }),
    };
    const prefix = existing ? null : input("key_prefix", { pattern: "[a-z][a-z0-9]{0,15}", maxLength: 16 });
    // Only the global admin names the tenant of a new API; without one the API means `default`.
    const tenant = !existing && isGlobalAdmin() ? input("tenant", { required: true, pattern: "[a-z0-9\\-]{1,63}" }) : null;
    return h("form", {
      class: "card", "aria-label": existing ? "Edit the API" : "Register an API",
      onsubmit: e => {
        e.preventDefault();
        const body = {
          name: f.name.value, purpose: f.purpose.value, owner: f.owner.value, risk: f.risk.value,
        };
        if (f.live_date.value) body.live_date = f.live_date.value;
        else if (existing && existing.live_date) body.live_date = null;
        if (f.review_by.value) body.review_by = f.review_by.value;
        if (prefix && prefix.value) body.key_prefix = prefix.value;
        if (tenant) body.tenant = tenant.value;
        attempt(out, async () => {
          const api_ = existing
            ? await api("PATCH", `/v1/apis/${encodeURIComponent(existing.id)}`, body)
            : await api("POST", "/v1/apis", body);
          onDone(api_);
        });
      },
    },
    h("h2", {}, existing ? "Edit" : "Register an API"),
    h("div", { class: "grid" },
      field("Name", f.name), field("Owner", f.owner), field("Risk", f.risk),
      field("Live date", f.live_date), field("Review by", f.review_by, existing ? null : "default: a year from now"),
      prefix ? field("Key prefix", prefix, "optional, e.g. acme") : null,
      tenant ? field("Tenant", tenant) : null),
    field("Purpose", f.purpose),
    h("div", { class: "actions" }, h("button", { type: "submit", id: existing ? "save-api" : "create-api" }, existing ? "Save" : "Register")),
    out);
  }

  async function apisPage(page) {
    page.append(h("h1", {}, "APIs"));
    if (!can("apis:read")) {
      page.append(h("p", {}, "Listing APIs needs apis:read."));
    } else {
      const apis = await listAll("/v1/apis");
      page.append(table(["Name", "Purpose", "Owner", "Risk", "Live", "Review by", "Tenant"],
        apis.map(a => {
          const overdue = daysUntil(a.review_by + "T23:59:59Z") < 0;
          return h("tr", { class: overdue ? "overdue" : "" },
            h("td", {}, h("a", { href: `#/apis/${encodeURIComponent(a.id)}` }, a.name)),
            h("td", {}, a.purpose), h("td", {}, a.owner), h("td", {}, badge(a.risk)),
            h("td", {}, a.live_date || "—"),
            h("td", {}, a.review_by, overdue ? [" ", badge("overdue")] : null),
            h("td", {}, a.tenant));
        }), "The API registry (a review date in the past is overdue)"), capNote(apis));
    }
    if (can("apis:write")) {
      page.append(apiForm(null, a => { location.hash = `#/apis/${encodeURIComponent(a.id)}`; }));
    } else {
      page.append(h("p", { class: "hint" }, "Registering an API needs apis:write."));
    }
  }

  async function apiPage(page, id) {
    const a = await api("GET", `/v1/apis/${encodeURIComponent(id)}`);
    page.append(h("h1", {}, a.name),
      h("dl", { class: "facts" },
        h("dt", {}, "Id"), h("dd", {}, h("code", {}, a.id)),
        h("dt", {}, "Purpose"), h("dd", {}, a.purpose),
        h("dt", {}, "Owner"), h("dd", {}, a.owner),
        h("dt", {}, "Risk"), h("dd", {}, badge(a.risk)),
        h("dt", {}, "Key prefix"), h("dd", {}, h("code", {}, a.key_prefix)),
        h("dt", {}, "Live date"), h("dd", {}, a.live_date || "—"),
        h("dt", {}, "Review by"), h("dd", {}, a.review_by, daysUntil(a.review_by + "T23:59:59Z") < 0 ? [" ", badge("overdue")] : null)));
    const actions = h("div", { class: "actions" });
    if (can("keys:create")) {
      actions.append(h("a", { class: "button", href: `#/apis/${encodeURIComponent(a.id)}/issue`, id: "issue-key" }, "Issue a key"));
    } else {
      actions.append(h("span", { class: "gated" }, h("button", { type: "button", disabled: true, id: "issue-key" }, "Issue a key"),
        h("span", { class: "hint" }, " needs keys:create")));
    }
    page.append(actions);
    page.append(h("h2", {}, "Keys"));
    if (can("keys:read")) {
      const keys = await listAll(`/v1/apis/${encodeURIComponent(a.id)}/keys`);
      page.append(table(["Key", "Name", "State", "Scopes", "Expires", "Last used", "Rotation"],
        keys.map(k => h("tr", { "data-key": k.id },
          h("td", {}, h("a", { href: `#/keys/${encodeURIComponent(k.id)}` }, h("code", {}, k.start + "…"))),
          h("td", {}, k.name || "—"),
          h("td", {}, badge(k.state)),
          h("td", {}, k.scopes.join(" ") || "—"),
          h("td", {}, fmtTime(k.expires_at)),
          h("td", {}, fmtTime(k.last_used_at)),
          h("td", {}, rotationText(k))))), capNote(keys));
    } else {
      page.append(h("p", {}, "Listing keys needs keys:read."));
    }
    if (can("apis:write")) {
      page.append(apiForm(a, () => route()));
    }
  }

  function rotationText(k) {
    if (!k.rotation) return "—";
    const r = k.rotation;
    const parts = [];
    if (r.superseded_by) parts.push(`superseded by ${r.superseded_by}`, r.stops_at ? `, works until ${fmtTime(r.stops_at)}` : "");
    if (r.replaces) parts.push(parts.length ? "; " : "", `replaces ${r.replaces}`);
    return parts.join("");
  }

  // ---- Keys. ------------------------------------------------------------------------------

  async function issueKeyPage(page, apiId) {
    const a = await api("GET", `/v1/apis/${encodeURIComponent(apiId)}`);
    page.append(h("h1", {}, `Issue a key for ${a.name}`));
    if (!can("keys:create")) {
      page.append(h("p", { class: "hint" }, "Your credential lacks keys:create: Tessera will refuse this."));
    }
    const out = h("div", {});
    const name = input("name", { maxLength: 200 });
    const scopes = input("scopes", { placeholder: a.key_defaults.scopes.join(" ") });
    const ttl = input("ttl_seconds", { type: "number", min: 1 });
    const remaining = input("remaining", { type: "number", min: 0 });
    page.append(h("form", {
      class: "card", "aria-label": "Issue a key",
      onsubmit: e => {
        e.preventDefault();
        const body = {};
        if (name.value) body.name = name.value;
        if (scopes.value.trim()) body.scopes = scopes.value.trim().split(/\s+/);
        if (ttl.value) body.ttl_seconds = Number(ttl.value);
        if (remaining.value) body.remaining = Number(remaining.value);
        attempt(out, async () => {
          const k = await api("POST", `/v1/apis/${encodeURIComponent(a.id)}/keys`, body);
          out.append(reveal("The new key", k.key,
            "Shown this once: Tessera keeps only a keyed hash of it. Store it now."),
          h("p", {}, h("a", { href: `#/keys/${encodeURIComponent(k.id)}`, id: "new-key-link" }, `Key ${k.id}`)));
        });
      },
    },
    h("div", { class: "grid" },
      field("Name", name), field("Scopes", scopes, "space-separated; empty: the API's defaults"),
      field("Lifetime (seconds)", ttl, "empty: the API's default"),
      field("Uses (quota)", remaining, "empty: unlimited")),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "issue" }, "Issue")),
    out));
  }

  async function keyPage(page, id, onLeave) {
    const k = await api("GET", `/v1/keys/${encodeURIComponent(id)}`);
    const out = h("div", {});
    const rotationDd = h("dd", { id: "key-rotation" }, rotationStages(k));
    page.append(h("h1", {}, `Key ${k.start}…`),
      h("dl", { class: "facts" },
        h("dt", {}, "Id"), h("dd", {}, h("code", {}, k.id)),
        h("dt", {}, "API"), h("dd", {}, h("a", { href: `#/apis/${encodeURIComponent(k.api_id)}` }, k.api_id)),
        h("dt", {}, "Name"), h("dd", {}, k.name || "—"),
        h("dt", {}, "State"), h("dd", { id: "key-state" }, badge(k.state), k.revocation_reason ? ` (${k.revocation_reason})` : ""),
        h("dt", {}, "Scopes"), h("dd", {}, k.scopes.join(" ") || "—"),
        h("dt", {}, "Created"), h("dd", {}, fmtTime(k.created_at)),
        h("dt", {}, "Expires"), h("dd", {}, fmtTime(k.expires_at)),
        h("dt", {}, "Last used"), h("dd", {}, fmtTime(k.last_used_at)),
        h("dt", {}, "Uses left"), h("dd", {}, k.remaining === null || k.remaining === undefined ? "unlimited" : String(k.remaining)),
        h("dt", {}, "Rotation"), rotationDd));
    const live = k.state !== "revoked";
    const actions = h("div", { class: "actions" });
    if (live) {
      actions.append(gated("keys:update", k.enabled ? "Disable" : "Enable", () => attempt(out, async () => {
        await api("PATCH", `/v1/keys/${encodeURIComponent(k.id)}`, { enabled: !k.enabled });
        await route();
      }), { id: k.enabled ? "disable-key" : "enable-key", class: "secondary" }));
    }
    page.append(actions);
    if (live && !(k.rotation && k.rotation.superseded_by)) {
      const grace = input("grace_seconds", { type: "number", min: 0, max: 2592000, value: "3600" });
      const rotateForm = h("form", {
        class: "card", "aria-label": "Rotate",
        onsubmit: e => {
          e.preventDefault();
          attempt(out, async () => {
            const n = await api("POST", `/v1/keys/${encodeURIComponent(k.id)}/rotate`, { grace_seconds: Number(grace.value || 0) });
            // This key's new stage (superseded, in grace until ...); it rotates no further.
            const now = await api("GET", `/v1/keys/${encodeURIComponent(k.id)}`);
            rotationDd.replaceChildren(rotationStages(now));
            rotateForm.remove();
            out.append(reveal("The replacement key", n.key,
              `Shown this once. The old key keeps working for ${Number(grace.value || 0)} s more.`),
            h("p", {}, h("a", { href: `#/keys/${encodeURIComponent(n.id)}`, id: "rotated-key-link" }, `New key ${n.id}`)));
          });
        },
      }, h("h2", {}, "Rotate"), field("Grace (seconds the old key keeps working)", grace),
      h("div", { class: "actions" }, can("keys:rotate")
        ? h("button", { type: "submit", id: "rotate-key" }, "Rotate")
        : gated("keys:rotate", "Rotate", null)));
      page.append(rotateForm);
    }
    if (live) {
      const confirmBox = h("div", {});
      page.append(h("section", { class: "card danger", "aria-label": "Revoke" }, h("h2", {}, "Revoke"),
        h("p", {}, "A revoked key is refused at once, everywhere, and cannot be brought back."),
        gated("keys:revoke", "Revoke…", () => {
          confirmBox.replaceChildren(h("p", { role: "alert" }, "Revoke this key for good?"),
            h("div", { class: "actions" },
              button("Yes, revoke it", () => attempt(out, async () => {
                await api("POST", `/v1/keys/${encodeURIComponent(k.id)}/revoke`, {});
                await route();
              }), { id: "confirm-revoke", class: "danger" }),
              button("Cancel", () => confirmBox.replaceChildren(), { class: "secondary" })));
        }, { id: "revoke-key", class: "danger" }), confirmBox));
    }
    page.append(out);
    page.append(usageChart(k, onLeave));
  }

  function rotationStages(k) {
    if (!k.rotation) return "not rotated";
    const r = k.rotation;
    const items = [];
    if (r.replaces) items.push(h("li", {}, "Replaces ", h("a", { href: `#/keys/${encodeURIComponent(r.replaces)}` }, r.replaces)));
    if (r.superseded_by) {
      const ends = r.stops_at ? Date.parse(r.stops_at) : null;
      items.push(h("li", {}, "Superseded by ", h("a", { href: `#/keys/${encodeURIComponent(r.superseded_by)}` }, r.superseded_by),
        ends === null ? "" : ends > Date.now() ? ` · in grace until ${fmtTime(r.stops_at)}` : ` · stopped at ${fmtTime(r.stops_at)}`));
    }
    return h("ul", { class: "plain" }, items);
  }

  const CODE_CLASSES = ["VALID", "RATE_LIMITED", "USAGE_EXCEEDED", "REVOKED", "EXPIRED", "DISABLED", "INSUFFICIENT_PERMISSIONS", "FORBIDDEN"];

  /** Verify counts by code: the totals, and while the page is open, the answers per 5 s
   * interval (a chart of the counts' growth, read from the same API every 5 s). */
  function usageChart(k, onLeave) {
    const section = h("section", { class: "card", "aria-label": "Usage" }, h("h2", {}, "Usage"));
    const totals = h("div", { class: "totals" });
    const chartBox = h("div", { class: "chart" });
    const legend = h("p", { class: "hint" });
    section.append(totals, chartBox, legend);
    let last = Object.assign({}, k.verify_counts);
    const series = []; // [{t, deltas: {code: n}}]
    function drawTotals(counts) {
      const codes = Object.keys(counts);
      totals.replaceChildren(codes.length === 0 ? h("p", {}, "No verifications yet.") :
        table(["Answer", "Verifications"], codes.map(c => h("tr", {}, h("td", {}, badge(c, "code " + codeClass(c))), h("td", { class: "num", "data-code": c }, String(counts[c])))),
          "Verify answers about this key so far (persisted about a second behind)"));
    }
    function drawSeries() {
      const width = 480, height = 120, n = 24;
      const shown = series.slice(-n);
      const codes = [...new Set(shown.flatMap(p => Object.keys(p.deltas)))];
      const max = Math.max(1, ...shown.map(p => Object.values(p.deltas).reduce((a, b) => a + b, 0)));
      const bw = width / n;
      const svg = s("svg", { viewBox: `0 0 ${width} ${height + 14}`, width, height: height + 14, role: "img",
        "aria-label": "Verifications per 5 seconds since this page opened, by answer" });
      shown.forEach((p, i) => {
        let y = height;
        codes.forEach(c => {
          const v = p.deltas[c] || 0;
          if (!v) return;
          const bh = (v / max) * (height - 4);
          y -= bh;
          svg.append(s("rect", { x: (i * bw + 1).toFixed(1), y: y.toFixed(1), width: (bw - 2).toFixed(1), height: bh.toFixed(1), class: "bar " + codeClass(c) },
            s("title", {}, `${c}: ${v}`)));
        });
      });
      svg.append(s("line", { x1: 0, y1: height, x2: width, y2: height, class: "axis" }),
        s("text", { x: 0, y: height + 12, class: "tick" }, `${Math.min(series.length, n) * 5} s ago`),
        s("text", { x: width, y: height + 12, class: "tick end" }, "now"),
        s("text", { x: 2, y: 10, class: "tick" }, `max ${max}`));
      chartBox.replaceChildren(svg);
      legend.replaceChildren(codes.length ? "Per 5 s: " : "No verifications since this page opened.",
        ...codes.flatMap(c => [badge(c, "code " + codeClass(c)), " "]));
    }
    drawTotals(k.verify_counts);
    drawSeries();
    const timer = setInterval(async () => {
      try {
        const now = await api("GET", `/v1/keys/${encodeURIComponent(k.id)}`);
        const deltas = {};
        for (const [c, v] of Object.entries(now.verify_counts)) {
          const d = v - (last[c] || 0);
          if (d > 0) deltas[c] = d;
        }
        last = Object.assign({}, now.verify_counts);
        series.push({ t: Date.now(), deltas });
        drawTotals(now.verify_counts);
        drawSeries();
      } catch (e) {
        clearInterval(timer);
      }
    }, 5000);
    onLeave(() => clearInterval(timer));
    return section;
  }

  function codeClass(c) {
    return CODE_CLASSES.includes(c) ? "c-" + c.toLowerCase() : "c-other";
  }

  // ---- Certificates. ----------------------------------------------------------------------

  async function certsPage(page) {
    page.append(h("h1", {}, "Certificates"));
    const listBox = h("div", {});
    async function drawList() {
      const certs = await listAll("/v1/certs");
      listBox.replaceChildren(table(["Serial", "Identity", "Profile", "State", "Expires", "Tenant"],
        certs.map(c => {
          const soon = c.state === "valid" && daysUntil(c.not_after) < 7;
          return h("tr", { class: soon ? "expiring" : "", "data-serial": c.serial },
            h("td", {}, h("a", { href: `#/certs/${encodeURIComponent(c.serial)}` }, h("code", {}, c.serial))),
            h("td", {}, c.identity), h("td", {}, c.profile), h("td", {}, badge(c.state)),
            h("td", {}, fmtTime(c.not_after), soon ? [" ", badge("expiring")] : null),
            h("td", {}, c.tenant || "—"));
        }), "Client and server certificates (expiring within 7 days are flagged)"), capNote(certs));
    }
    if (can("certs:read")) {
      await drawList();
    } else {
      listBox.append(h("p", {}, "Listing certificates needs certs:read."));
    }
    page.append(listBox, issueCertForm(can("certs:read") ? drawList : async () => {}), enrolmentForm());
  }

  function issueCertForm(issued) {
    const out = h("div", {});
    const identity = input("identity", { required: true, pattern: "[a-z0-9][a-z0-9._\\-]{0,62}", maxLength: 63 });
    const tenant = isGlobalAdmin() ? input("tenant", { required: true, pattern: "[a-z0-9\\-]{1,63}" }) : null;
    const ttl = input("ttl_seconds", { type: "number", min: 1 });
    const csr = h("textarea", { name: "csr", rows: 4, spellcheck: false, placeholder: "-----BEGIN CERTIFICATE REQUEST-----" });
    const form = h("form", {
      class: "card", "aria-label": "Issue a certificate",
      onsubmit: e => {
        e.preventDefault();
        const body = { identity: identity.value };
        if (tenant && tenant.value) body.tenant = tenant.value;
        if (ttl.value) body.ttl_seconds = Number(ttl.value);
        if (csr.value.trim()) body.csr = csr.value.trim();
        else body.generate = true;
        attempt(out, async () => {
          const c = await api("POST", "/v1/certs", body);
          csr.value = "";
          await issued();
          const pem = [c.certificate, ...c.chain].join("");
          let key = c.private_key || null;
          // The private key stays in this page's memory (never in its markup) until "Done" or
          // a navigation, so a cancelled save can be repeated.
          const keyActions = key === null ? null : h("span", { class: "actions" },
            button("Download the private key", () => {
              if (key !== null) download(`${body.identity}.key`, key, "application/x-pem-file");
            }, { id: "download-key" }),
            button("Done: I have saved it", () => forgetKey(), { id: "forget-key", class: "secondary" }));
          function forgetKey() {
            key = null;
            if (keyActions) keyActions.replaceChildren(h("span", { class: "hint", id: "key-forgotten" }, "The private key is no longer held by this page."));
          }
          if (key !== null) reveals.push(forgetKey);
          out.append(h("div", { class: "card ok" },
            h("p", {}, "Issued ", h("a", { href: `#/certs/${encodeURIComponent(c.serial)}`, id: "new-cert-link" }, h("code", {}, c.serial)), ` for ${c.identity}, until ${fmtTime(c.not_after)}.`),
            key === null ? null : h("p", {}, "The private key was generated for this certificate and is offered only now: Tessera keeps no copy."),
            h("div", { class: "actions" },
              button("Download the certificate chain", () => download(`${body.identity}.pem`, pem, "application/x-pem-file"), { id: "download-cert" }),
              keyActions)));
        });
      },
    },
    h("h2", {}, "Issue a certificate"),
    can("certs:issue") ? null : h("p", { class: "hint" }, "Needs certs:issue."),
    h("div", { class: "grid" }, field("Service name", identity), tenant ? field("Tenant", tenant) : null,
      field("Lifetime (seconds)", ttl, "empty: the profile's default")),
    field("CSR (PEM)", csr, "empty: Tessera generates the key pair and offers the private key once"),
    h("div", { class: "actions" }, can("certs:issue") ? h("button", { type: "submit", id: "issue-cert" }, "Issue") : gated("certs:issue", "Issue", null)),
    out);
    return form;
  }

  function enrolmentForm() {
    const out = h("div", {});
    const identity = input("identity", { required: true, maxLength: 63 });
    const ttl = input("ttl_seconds", { type: "number", min: 1, max: 86400, value: "600" });
    // Only the global admin names the tenant; without one the API means `default`.
    const tenant = isGlobalAdmin() ? input("tenant", { required: true, pattern: "[a-z0-9\\-]{1,63}" }) : null;
    return h("form", {
      class: "card", "aria-label": "Enrolment token",
      onsubmit: e => {
        e.preventDefault();
        const body = { identity: identity.value, ttl_seconds: Number(ttl.value || 600) };
        if (tenant) body.tenant = tenant.value;
        attempt(out, async () => {
          const t = await api("POST", "/v1/enrolment-tokens", body);
          out.append(reveal("The enrolment token", t.token,
            `Single use, for ${t.identity} in ${t.tenant}, until ${fmtTime(t.expires_at)}: POST /v1/enrol with a CSR.`));
        });
      },
    },
    h("h2", {}, "Enrolment token"),
    h("div", { class: "grid" }, field("Service name", identity), tenant ? field("Tenant", tenant) : null,
      field("Valid for (seconds)", ttl)),
    h("div", { class: "actions" }, can("certs:issue") ? h("button", { type: "submit", id: "make-token" }, "Make a token") : gated("certs:issue", "Make a token", null)),
    out);
  }

  async function certPage(page, serial) {
    const c = await api("GET", `/v1/certs/${encodeURIComponent(serial)}`);
    const out = h("div", {});
    page.append(h("h1", {}, `Certificate ${c.serial}`),
      h("dl", { class: "facts" },
        h("dt", {}, "Identity"), h("dd", {}, c.identity),
        h("dt", {}, "Profile"), h("dd", {}, c.profile),
        h("dt", {}, "State"), h("dd", { id: "cert-state" }, badge(c.state), c.revocation_reason ? ` (${c.revocation_reason})` : ""),
        h("dt", {}, "Issuer"), h("dd", {}, h("code", {}, c.issuer)),
        h("dt", {}, "Valid"), h("dd", {}, `${fmtTime(c.not_before)} – ${fmtTime(c.not_after)}`),
        h("dt", {}, "Fingerprint"), h("dd", {}, h("code", {}, c.fingerprint)),
        h("dt", {}, "Renewed from"), h("dd", {}, c.renewed_from || "—")));
    if (c.state !== "revoked") {
      const reason = select("reason", REVOCATION_REASONS, "unspecified");
      const confirmBox = h("div", {});
      page.append(h("form", {
        class: "card danger", "aria-label": "Revoke",
        onsubmit: e => {
          e.preventDefault();
          confirmBox.replaceChildren(h("p", { role: "alert" }, `Revoke for ${reason.value}?`),
            h("div", { class: "actions" },
              button("Yes, revoke it", () => attempt(out, async () => {
                await api("POST", `/v1/certs/${encodeURIComponent(c.serial)}/revoke`, { reason: reason.value });
                await route();
              }), { id: "confirm-revoke", class: "danger" }),
              button("Cancel", () => confirmBox.replaceChildren(), { class: "secondary" })));
        },
      }, h("h2", {}, "Revoke"), field("Reason", reason),
      h("div", { class: "actions" }, can("certs:revoke") ? h("button", { type: "submit", id: "revoke-cert", class: "danger" }, "Revoke…") : gated("certs:revoke", "Revoke…", null)),
      confirmBox));
    }
    page.append(out);
  }

  // ---- Audit. -----------------------------------------------------------------------------

  async function auditPage(page) {
    page.append(h("h1", {}, "Audit"));
    const chain = h("section", { class: "card", "aria-label": "Chain" }, h("h2", {}, "Chain"));
    page.append(chain);
    let headSeq = null;
    if (isGlobalAdmin()) {
      const [report, cp] = await Promise.all([api("GET", "/v1/audit/verify"), api("GET", "/v1/audit/checkpoint")]);
      headSeq = report.head_seq;
      chain.append(h("p", { id: "chain-status" },
        report.valid ? badge("valid", "active") : badge("broken", "revoked"),
        ` ${report.checked} entries checked, head ${report.head_seq}`,
        report.valid ? "" : `; first bad entry ${report.first_bad_seq}: ${report.problem}`),
      h("p", {}, `Last checkpoint: entry ${cp.seq} at ${fmtTime(cp.time)}, signed ${cp.algorithm}, hash `, h("code", {}, cp.hash)));
    } else {
      chain.append(h("p", { id: "chain-status" }, "The chain and its checkpoints describe the whole log, every tenant's: the global admin checks them (GET /v1/audit/verify)."));
    }
    if (!can("audit:read")) {
      page.append(h("p", {}, "Reading the log needs audit:read."));
      return;
    }
    let entries = [];
    const filters = {
      action: input("action", { placeholder: "e.g. key.create" }),
      outcome: select("outcome", ["any", "success", "denied", "invalid", "not_found", "conflict", "unauthenticated", "rate_limited", "unavailable", "error"], "any"),
      principal: input("principal"),
      object: input("object"),
    };
    const body = h("div", {});
    function draw() {
      const f = {
        action: filters.action.value.trim(), outcome: filters.outcome.value,
        principal: filters.principal.value.trim(), object: filters.object.value.trim(),
      };
      const shown = entries.filter(e =>
        (!f.action || e.action.includes(f.action)) &&
        (f.outcome === "any" || e.outcome === f.outcome) &&
        (!f.principal || e.principal.includes(f.principal)) &&
        (!f.object || (e.object || "").includes(f.object)));
      body.replaceChildren(table(["Time", "Action", "Outcome", "Principal", "Object", "Detail", "Request id"],
        shown.map(e => h("tr", { "data-action": e.action },
          h("td", {}, fmtTime(e.time)), h("td", {}, e.action), h("td", {}, badge(e.outcome)),
          h("td", {}, e.principal), h("td", {}, e.object || "—"), h("td", {}, e.detail || ""),
          h("td", {}, h("code", {}, e.request_id)))),
        `${shown.length} of the ${entries.length} newest entries (newest first)`));
    }
    const reach = h("p", { class: "hint", id: "audit-reach" });
    async function load() {
      // The API lists oldest first. The global admin pages by sequence number, so the console
      // starts AUDIT_MAX entries before the head and reads to the end. A tenant's listing
      // pages with an opaque cursor from its start: the console reads at most
      // TENANT_AUDIT_READ entries and says so when the log goes on.
      let all;
      if (headSeq !== null) {
        all = [];
        let after = Math.max(0, headSeq - AUDIT_MAX);
        for (;;) {
          const p = await api("GET", `/v1/audit?limit=100&after_seq=${after}`);
          all.push(...p.items);
          if (!p.next_cursor) break;
          after = Number(p.next_cursor);
        }
        reach.replaceChildren();
      } else {
        all = await listAll("/v1/audit", TENANT_AUDIT_READ);
        reach.replaceChildren(all.truncated
          ? `This tenant's log is longer than the ${all.length} entries the console reads from its start: newer entries exist and are not shown here (page through GET /v1/audit to reach them).`
          : "");
      }
      entries = all.slice(-AUDIT_MAX).reverse();
      draw();
    }
    Object.values(filters).forEach(el => el.addEventListener("input", draw));
    page.append(h("form", { class: "card filters", "aria-label": "Filters", onsubmit: e => e.preventDefault() },
      h("div", { class: "grid" }, field("Action contains", filters.action), field("Outcome", filters.outcome),
        field("Principal contains", filters.principal), field("Object contains", filters.object)),
      h("div", { class: "actions" }, button("Reload", () => attempt(body, load), { class: "secondary", id: "audit-reload" }))),
    reach, body);
    await load();
  }

  const AUDIT_MAX = 5000;
  const TENANT_AUDIT_READ = 20000;

  // ---- Tenants, roles, bindings, root keys. -----------------------------------------------

  async function accessPage(page) {
    if (!isGlobalAdmin()) {
      await tenantPage(page, session.me.tenant);
      return;
    }
    page.append(h("h1", {}, "Tenants"));
    const tenants = await listAll("/v1/tenants");
    page.append(table(["Name", "Id", "Created"], tenants.map(t => h("tr", {},
      h("td", {}, h("a", { href: `#/access/${encodeURIComponent(t.name)}` }, t.name)),
      h("td", {}, h("code", {}, t.id)), h("td", {}, fmtTime(t.created_at))))), capNote(tenants));
    const out = h("div", {});
    const name = input("name", { required: true, pattern: "[a-z0-9\\-]{1,63}" });
    page.append(h("form", {
      class: "card", "aria-label": "New tenant",
      onsubmit: e => {
        e.preventDefault();
        attempt(out, async () => {
          const t = await api("POST", "/v1/tenants", { name: name.value });
          location.hash = `#/access/${encodeURIComponent(t.name)}`;
        });
      },
    }, h("h2", {}, "New tenant"), field("Name", name), h("div", { class: "actions" }, h("button", { type: "submit" }, "Create")), out));
  }

  function permissionBoxes(name, held) {
    const grantable = ALL_PERMISSIONS.filter(p => isGlobalAdmin() || session.me.permissions.includes(p));
    return h("fieldset", { class: "perms" }, h("legend", {}, name),
      grantable.map(p => h("label", { class: "check" }, h("input", { type: "checkbox", name: "perm", value: p, checked: held.includes(p) }), ` ${p}`)),
      grantable.length < ALL_PERMISSIONS.length ? h("p", { class: "hint" }, "Only permissions you hold can be granted.") : null);
  }

  function checked(fieldset) {
    return [...fieldset.querySelectorAll("input[type=checkbox]:checked")].map(i => i.value);
  }

  async function tenantPage(page, t) {
    const tenant = await api("GET", `/v1/tenants/${encodeURIComponent(t)}`);
    const base = `/v1/tenants/${encodeURIComponent(tenant.name)}`;
    page.append(h("h1", {}, `Tenant ${tenant.name}`));
    const out = h("div", {});
    const [roles, bindings, rootKeys] = await Promise.all([
      listAll(`${base}/roles`), listAll(`${base}/bindings`), listAll("/v1/root-keys").then(ks => {
        const mine = ks.filter(k => k.tenant === tenant.name);
        mine.truncated = ks.truncated;
        return mine;
      }),
    ]);
    page.append(h("h2", {}, "Roles"), capNote(roles),
      table(["Role", "Permissions", ""], roles.map(r => h("tr", {},
        h("td", {}, r.name, r.builtin ? [" ", badge("built-in", "muted")] : null),
        h("td", {}, r.permissions.join(" ")),
        h("td", {}, r.builtin ? "" : button("Delete", () => attempt(out, async () => {
          await api("DELETE", `${base}/roles/${encodeURIComponent(r.name)}`);
          await route();
        }), { class: "secondary", "aria-label": `Delete role ${r.name}` }))))));
    const roleName = input("name", { required: true, pattern: "[a-z0-9\\-]{1,63}" });
    const rolePerms = permissionBoxes("Permissions", []);
    page.append(h("form", {
      class: "card", "aria-label": "New role",
      onsubmit: e => {
        e.preventDefault();
        attempt(out, async () => {
          await api("POST", `${base}/roles`, { name: roleName.value, permissions: checked(rolePerms) });
          await route();
        });
      },
    }, h("h3", {}, "New role"), field("Name", roleName), rolePerms, h("div", { class: "actions" }, h("button", { type: "submit", id: "create-role" }, "Create role"))));

    page.append(h("h2", {}, "Bindings"), capNote(bindings),
      table(["Service", "Roles", "Permissions now", ""], bindings.map(b => h("tr", {},
        h("td", {}, b.identity), h("td", {}, b.roles.join(" ")), h("td", {}, b.permissions.join(" ")),
        h("td", {}, button("Unbind", () => attempt(out, async () => {
          await api("DELETE", `${base}/bindings/${encodeURIComponent(b.identity)}`);
          await route();
        }), { class: "secondary", "aria-label": `Unbind ${b.identity}` }))))));
    const bindService = input("identity", { required: true });
    const bindRoles = input("roles", { required: true, placeholder: "verifier" });
    page.append(h("form", {
      class: "card", "aria-label": "Bind",
      onsubmit: e => {
        e.preventDefault();
        attempt(out, async () => {
          await api("PUT", `${base}/bindings/${encodeURIComponent(bindService.value)}`, { roles: bindRoles.value.trim().split(/\s+/) });
          await route();
        });
      },
    }, h("h3", {}, "Bind a service to roles"), h("div", { class: "grid" }, field("Service name", bindService), field("Roles", bindRoles, "space-separated")),
    h("div", { class: "actions" }, h("button", { type: "submit", id: "bind" }, "Bind"))));

    page.append(h("h2", {}, "Root keys"), capNote(rootKeys),
      table(["Key", "Name", "State", "Permissions", "Expires", "Last used", ""], rootKeys.map(k => h("tr", { "data-root-key": k.id },
        h("td", {}, h("code", {}, k.start + "…")), h("td", {}, k.name || "—"), h("td", {}, badge(k.state)),
        h("td", {}, k.permissions.join(" ")), h("td", {}, fmtTime(k.expires_at)), h("td", {}, fmtTime(k.last_used_at)),
        h("td", {}, k.state === "revoked" ? "" : [
          button("Rotate…", () => {
            // A rotation ends the old secret after its grace: confirm, and choose the grace.
            const grace = input("grace_seconds", { type: "number", min: 0, max: 2592000, value: "3600" });
            out.replaceChildren(h("div", { class: "card", role: "group", "aria-label": `Rotate root key ${k.start}` },
              h("p", {}, `Rotate root key ${k.start}…: a new secret now; the old one keeps working for the grace period, then stops.`),
              field("Grace (seconds the old key keeps working)", grace),
              h("div", { class: "actions" },
                button("Rotate now", () => attempt(out, async () => {
                  const n = await api("POST", `/v1/root-keys/${encodeURIComponent(k.id)}/rotate`, { grace_seconds: Number(grace.value || 0) });
                  out.append(reveal("The replacement root key", n.key, "Shown this once."));
                }), { class: "danger", id: "confirm-rotate-root-key" }),
                button("Cancel", () => out.replaceChildren(), { class: "secondary" }))));
          }, { class: "secondary", "aria-label": `Rotate root key ${k.start}` }), " ",
          button("Revoke", () => attempt(out, async () => {
            if (!window.confirm(`Revoke root key ${k.start}…?`)) return;
            await api("POST", `/v1/root-keys/${encodeURIComponent(k.id)}/revoke`, {});
            await route();
          }), { class: "danger", "aria-label": `Revoke root key ${k.start}` })])))));
    const rkName = input("name", { maxLength: 200 });
    const rkPerms = permissionBoxes("Permissions", []);
    page.append(h("form", {
      class: "card", "aria-label": "New root key",
      onsubmit: e => {
        e.preventDefault();
        attempt(out, async () => {
          const body = { permissions: checked(rkPerms) };
          if (rkName.value) body.name = rkName.value;
          if (isGlobalAdmin()) body.tenant = tenant.name;
          const k = await api("POST", "/v1/root-keys", body);
          out.append(reveal("The new root key", k.key, "Shown this once: Tessera keeps only a keyed hash of it."));
        });
      },
    }, h("h3", {}, "New root key"), field("Name", rkName), rkPerms, h("div", { class: "actions" }, h("button", { type: "submit", id: "create-root-key" }, "Create root key"))));
    page.append(out);
  }

  // ---- Start. -----------------------------------------------------------------------------

  window.addEventListener("hashchange", route);
  // The skip link moves the focus; the address's fragment is the console's route.
  document.querySelector(".skip").addEventListener("click", e => {
    e.preventDefault();
    document.getElementById("main").focus();
  });
  // Leaving the page forgets what it showed (the browser drops the memory with the page).
  window.addEventListener("pagehide", () => { forgetReveals(); session = null; });
  // A page restored from the back-forward cache comes back signed out.
  window.addEventListener("pageshow", e => { if (e.persisted) route(); });
  // The script is deferred: the document is parsed when it runs.
  route();
})();
