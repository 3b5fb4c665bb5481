"use strict";
// Shared helpers. Rule: agent data (output, prompts, file names, messages) only ever reaches
// the page through textContent or attribute values we pick; never innerHTML.
(function () {
  const hal = (window.hal = window.hal || {});
  hal.meta = (name) => {
    const node = document.querySelector('meta[name="' + name + '"]');
    return node ? node.getAttribute("content") : "";
  };

  // The session's credential. Not a cookie: cookies reach every port of this host, and a page
  // on any of them can overwrite one (logging the operator out). localStorage is this
  // origin's alone (scheme, host and port). A login answer carries the credential in a
  // <meta>: keep it, drop the tag, and show "/" instead of the one-time link. Every tab of
  // this origin reads it here, at each request (a new login in one tab serves them all).
  const SESSION = "hal-session", VERIFIER = "hal-verifier";
  const handed = document.querySelector('meta[name="' + SESSION + '"]');
  if (handed) {
    const verifier = document.querySelector('meta[name="' + VERIFIER + '"]');
    localStorage.setItem(SESSION, handed.getAttribute("content"));
    localStorage.setItem(VERIFIER, verifier ? verifier.getAttribute("content") : "");
    handed.remove();
    if (verifier) verifier.remove();
    history.replaceState(null, "", "/");
  }
  localStorage.removeItem("hal-proof"); // what hal kept before: it proves nothing now
  hal.credential = () => localStorage.getItem(SESSION) || "";

  // The credential goes only to a server that proved it holds the dashboard's key (see
  // dashboard/auth.py): while hal is stopped, any local user may listen on its port, and an
  // open page would hand them its credential at its next request. The proof is asked for at
  // the first request and again after every lost connection (hal.doubt).
  const hex = (buffer) => [...new Uint8Array(buffer)].map((b) => b.toString(16).padStart(2, "0")).join("");
  const utf8 = (text) => new TextEncoder().encode(text);
  /** Why no credential was sent: "down" (nothing answers), "impostor" (something that is not
   * this hal answers on its address) or "login" (this page holds no valid session). */
  hal.Unproven = class extends Error { constructor(kind, message) { super(message); this.kind = kind; } };
  const LOGGED_OUT = "Logged out: run `hal dashboard` and open the link it prints.";
  const IMPOSTOR = "The server at this address is not this dashboard's hal (another program took its port while hal was stopped?): nothing was sent to it. Waiting for hal to be back.";
  async function prove() {
    const [sid, verifier] = (localStorage.getItem(VERIFIER) || "").split(".");
    if (!sid || !verifier || !hal.credential()) throw new hal.Unproven("login", LOGGED_OUT);
    const challenge = hex(crypto.getRandomValues(new Uint8Array(16)));
    let response;
    try {
      response = await fetch("/hello?sid=" + encodeURIComponent(sid) + "&c=" + challenge, { credentials: "omit", cache: "no-store" });
    } catch (err) { throw new hal.Unproven("down", "hal serve is not reachable (is it running? `hal status`)"); }
    if (response.status === 401) throw new hal.Unproven("login", LOGGED_OUT);
    const data = await response.json().catch(() => ({}));
    const key = await crypto.subtle.importKey("raw", utf8(verifier), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    const expected = hex(await crypto.subtle.sign("HMAC", key, utf8(challenge)));
    if (!data || data.proof !== expected) throw new hal.Unproven("impostor", IMPOSTOR);
  }
  let proven = null;
  /** Resolves once this server proved it is the dashboard's hal (throws hal.Unproven). */
  hal.proven = () => {
    if (!proven) proven = prove().catch((err) => { proven = null; throw err; });
    return proven;
  };
  /** A connection was lost: whoever answers next proves itself again. */
  hal.doubt = () => { proven = null; };
  /** The headers that prove a request comes from a page of this dashboard's session, once
   * the server has proved itself. */
  hal.sessionHeaders = async () => {
    try { await hal.proven(); } catch (err) {
      if (err.kind === "login") hal.loggedOut();
      if (err.kind === "impostor") hal.flash(err.message);
      throw err;
    }
    return { "x-hal-session": hal.credential() };
  };

  /** Only links inside this dashboard: a "javascript:" or foreign URL becomes inert. A URL
   * parser drops tabs and line breaks and reads "\\" as "/": "/\t/evil.example" is "//evil...". */
  hal.safeHref = (href) => {
    const value = String(href);
    return value.startsWith("/") && !value.startsWith("//") && !/[\\\x00-\x20\x7f]/.test(value) ? value : "#";
  };

  // Bidirectional controls (embeddings, overrides, isolates, marks) reorder the text around
  // them: a line of agent code can read as a comment while it is code ("Trojan Source").
  // Invisible characters (zero width space, word joiner, BOM, soft hyphen, fillers, tags)
  // make two names read the same, or carry text the operator never sees (tags spell ASCII).
  // Agent text is shown with each of them spelled out, so what is seen is what is there
  // (the same list as the CLI's, cli/task_table.py; the joiners and variation selectors,
  // which scripts and emoji need, are kept).
  const SPELLED = /[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b\u2060-\u2064\u206a-\u206f\u3164\ufeff\uffa0\ufff9-\ufffb\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}]/gu;
  /** ``text`` with every bidirectional control and invisible character made visible as ⟨U+XXXX⟩. */
  hal.visible = (text) => String(text).replace(SPELLED, (c) => "\u27e8U+" + c.codePointAt(0).toString(16).toUpperCase().padStart(4, "0") + "\u27e9");

  /** el("div", {class: "x", text: "y", onclick: f}, child, "text") */
  hal.el = function (tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = hal.visible(value);
      else if (key === "title" || key === "placeholder") node.setAttribute(key, hal.visible(value));
      else if (key === "href") node.setAttribute("href", hal.safeHref(value));
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (/^(data-[a-z-]+|id|type|name|value|placeholder|title|for|rows|min|max|step|disabled|required|checked|selected|role|aria-[a-z]+|autocomplete|open|colspan)$/.test(key))
        node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(hal.visible(child)));
    }
    return node;
  };

  hal.clear = (node) => { while (node.firstChild) node.removeChild(node.firstChild); return node; };

  /** ``read`` (an async function) called for events: one call in flight, and one more after
   * it when events came meanwhile. A read per event, all at once, let an agent's flood of
   * events make every open page send the daemon a request per event. */
  hal.coalesce = function (read) {
    let running = null, again = false;
    const run = async () => {
      do { again = false; try { await read(); } catch (err) { /* the next event reads again */ } } while (again);
      running = null;
    };
    return () => { if (running) again = true; else running = run(); return running; };
  };

  /** Calls the daemon's JSON API (as /api/...); throws an Error with its one-line message. */
  hal.api = async function (method, path, body) {
    const init = { method, credentials: "omit", headers: await hal.sessionHeaders() };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try { response = await fetch("/api" + path, init); }
    catch (err) { hal.doubt(); throw new Error("hal serve is not reachable (is it running? `hal status`)"); }
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!response.ok) {
      const err = data && data.error ? data.error : {};
      if (response.status === 401) hal.loggedOut();
      throw new Error((err.message || ("HTTP " + response.status)) + (err.hint ? " (" + err.hint + ")" : ""));
    }
    return data;
  };

  hal.loggedOut = () => {
    const main = document.getElementById("main");
    if (main) hal.clear(main).append(hal.el("p", { class: "error", text: LOGGED_OUT }));
  };

  hal.fmtTime = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "");
  hal.fmtAgo = (ts) => {
    if (!ts) return "";
    const s = Math.max(0, Date.now() / 1000 - ts);
    if (s < 60) return Math.round(s) + "s ago";
    if (s < 3600) return Math.round(s / 60) + "m ago";
    if (s < 86400) return Math.round(s / 3600) + "h ago";
    return Math.round(s / 86400) + "d ago";
  };
  hal.fmtCost = (usd) => (usd === null || usd === undefined ? "–" : "$" + Number(usd).toFixed(usd > 0 && usd < 1 ? 4 : 2));
  hal.badge = (state) => hal.el("span", { class: "badge badge-" + String(state).replace(/[^a-z_-]/g, ""), text: state });

  /** A message line at the top of the page (errors of actions). */
  hal.flash = (text, kind) => {
    let box = document.getElementById("flash");
    if (!box) {
      box = hal.el("div", { id: "flash", role: "status" });
      document.getElementById("main").prepend(box);
    }
    hal.clear(box).append(hal.el("p", { class: kind || "error", text }));
  };

  // -- what waits for the operator: the count goes in the title ---------------------------
  const baseTitle = () => document.title.replace(/^\(\d+\) /, "");
  hal.setWaiting = (count) => {
    hal.waiting = count;
    document.title = (count > 0 ? "(" + count + ") " : "") + baseTitle();
  };

  // -- browser notifications (opt-in) -------------------------------------------------------
  hal.notifyEnabled = () => window.Notification && Notification.permission === "granted" && localStorage.getItem("hal-notify") === "1";
  hal.notify = (title, body, href) => {
    if (!hal.notifyEnabled()) return;
    const note = new Notification(hal.visible(title), { body: hal.visible(body || "").slice(0, 200), tag: href || title });
    note.onclick = () => { window.focus(); if (href) location.href = hal.safeHref(href); };
  };
  function setupNotifyButton() {
    const button = document.getElementById("notify");
    if (!button) return;
    const label = () => { button.textContent = hal.notifyEnabled() ? "Notifications on" : "Notify me"; };
    label();
    if (!window.Notification) { button.hidden = true; return; }
    button.addEventListener("click", async () => {
      if (hal.notifyEnabled()) { localStorage.setItem("hal-notify", "0"); label(); return; }
      const permission = await Notification.requestPermission();
      localStorage.setItem("hal-notify", permission === "granted" ? "1" : "0");
      label();
    });
  }

  hal.pages = hal.pages || {};
  document.addEventListener("DOMContentLoaded", () => {
    setupNotifyButton();
    const main = document.getElementById("main");
    const page = hal.pages[main.dataset.page];
    if (page) page(main, hal.meta("hal-arg")).catch((err) => hal.flash(String(err.message || err)));
  });
})();
