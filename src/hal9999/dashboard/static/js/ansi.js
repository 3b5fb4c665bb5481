"use strict";
// ANSI colours made safe: SGR codes become CSS classes on spans whose text is set with
// textContent; every other escape sequence (cursor moves, titles, OSC 8 links) is dropped.
(function () {
  const hal = (window.hal = window.hal || {});
  // CSI ... final byte, OSC ... BEL/ST, other two-byte escapes, and stray C0 controls.
  const ESCAPES = /\x1b\[([0-9;?]*)([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|[\x00-\x08\x0b-\x1f\x7f]/g;

  function applySgr(state, params) {
    const codes = params === "" ? [0] : params.split(";").map((n) => parseInt(n, 10) || 0);
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) { state.fg = null; state.bg = null; state.bold = false; state.dim = false; state.underline = false; }
      else if (c === 1) state.bold = true;
      else if (c === 2) state.dim = true;
      else if (c === 4) state.underline = true;
      else if (c === 22) { state.bold = false; state.dim = false; }
      else if (c === 24) state.underline = false;
      else if (c >= 30 && c <= 37) state.fg = c - 30;
      else if (c >= 90 && c <= 97) state.fg = c - 90 + 8;
      else if (c === 39) state.fg = null;
      else if (c >= 40 && c <= 47) state.bg = c - 40;
      else if (c >= 100 && c <= 107) state.bg = c - 100 + 8;
      else if (c === 49) state.bg = null;
      else if ((c === 38 || c === 48) && codes[i + 1] === 5) {
        const n = codes[i + 2];
        if (n >= 0 && n < 16) { if (c === 38) state.fg = n; else state.bg = n; }
        i += 2;
      } else if ((c === 38 || c === 48) && codes[i + 1] === 2) {
        i += 4; // 24-bit colours: kept plain (a class per colour would be unbounded)
      }
    }
  }

  function classes(state) {
    const out = [];
    // A foreground only on the log's own background: the agent's text in its background's
    // colour (30;47 is grey on grey here, like black on black) was there but never seen.
    if (state.fg !== null && state.bg === null) out.push("ansi-fg" + state.fg);
    if (state.bg !== null) out.push("ansi-bg" + state.bg);
    if (state.bold) out.push("ansi-bold");
    if (state.dim) out.push("ansi-dim");
    if (state.underline) out.push("ansi-underline");
    return out.join(" ");
  }

  /** A renderer that keeps colour state across chunks; render(text) returns a fragment. */
  hal.AnsiRenderer = class {
    constructor() { this.state = { fg: null, bg: null, bold: false, dim: false, underline: false }; }
    render(text) {
      const fragment = document.createDocumentFragment();
      let last = 0;
      const push = (piece) => {
        if (!piece) return;
        const span = document.createElement("span");
        const cls = classes(this.state);
        if (cls) span.className = cls;
        span.textContent = hal.visible(piece); // core.js: bidi controls spelled out
        fragment.append(span);
      };
      ESCAPES.lastIndex = 0;
      let m;
      while ((m = ESCAPES.exec(text)) !== null) {
        push(text.slice(last, m.index));
        if (m[2] === "m") applySgr(this.state, m[1]);
        last = m.index + m[0].length;
      }
      push(text.slice(last));
      return fragment;
    }
  };
  /** Text without any escape sequence. */
  hal.stripAnsi = (text) => String(text).replace(ESCAPES, "");
})();
