"use strict";
// Rendering of events and diffs, all through hal.el (textContent): a file name or a line of
// agent output is text on the page, whatever characters it holds.
(function () {
  const hal = (window.hal = window.hal || {});
  const el = (...args) => hal.el(...args);

  /** Unified diff text -> [{name, hunks: [{header, rows: [[kind, oldNo, oldText, newNo, newText]]}]}]
   * A hunk holds as many lines as its "@@ -a,b +c,d @@" counts: inside it, a changed line
   * that reads as a header ("--- x" removed, "+++ b/x" added: an agent's "++ b/x") is a
   * changed line, never a file name. A hunk without counts (an apply_patch's "@@") runs on
   * while its lines start with "+", "-" or " ". */
  hal.parseDiff = function (text) {
    const files = [];
    let file = null, hunk = null, oldNo = 0, newNo = 0, dels = [], adds = [];
    let oldLeft = 0, newLeft = 0, counted = false;
    const flush = () => {
      if (!hunk) return;
      const n = Math.max(dels.length, adds.length);
      for (let i = 0; i < n; i++) {
        const d = dels[i], a = adds[i];
        hunk.rows.push(["change", d ? d[0] : "", d ? d[1] : null, a ? a[0] : "", a ? a[1] : null]);
      }
      dels = []; adds = [];
    };
    const newFile = (name) => { flush(); hunk = null; file = { name, hunks: [] }; files.push(file); };
    const inHunk = (line) => hunk !== null && (counted ? oldLeft > 0 || newLeft > 0 : /^([-+ \\]|$)/.test(line));
    for (const line of String(text).split("\n")) {
      if (inHunk(line)) {
        if (line.startsWith("-")) { dels.push([oldNo++, line.slice(1)]); oldLeft--; continue; }
        if (line.startsWith("+")) { adds.push([newNo++, line.slice(1)]); newLeft--; continue; }
        if (line.startsWith(" ") || (counted && line === "")) { // a blank context line, as patch(1) reads it
          flush(); hunk.rows.push(["same", oldNo++, line.slice(1), newNo++, line.slice(1)]); oldLeft--; newLeft--; continue;
        }
        if (line.startsWith("\\") || line === "") continue; // "\ No newline at end of file"
        flush(); hunk = null; // fewer lines than its counts said (a cut diff): this one is read below
      }
      if (line.startsWith("diff --git ")) newFile(line.replace(/^diff --git a\/(.*) b\/.*$/, "$1"));
      else if (line.startsWith("--- ")) {
        if (!file || file.hunks.length) newFile(line.slice(4).replace(/^a\//, ""));
      } else if (line.startsWith("+++ ") && file && !file.hunks.length) {
        const name = line.slice(4).replace(/^b\//, "");
        if (name !== "/dev/null") file.name = name;
      } else if (line.startsWith("@@")) {
        flush();
        const m = /^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$/.exec(line);
        oldNo = m ? parseInt(m[1], 10) : 1; newNo = m ? parseInt(m[3], 10) : 1;
        counted = m !== null;
        oldLeft = m ? (m[2] === undefined ? 1 : parseInt(m[2], 10)) : 0;
        newLeft = m ? (m[4] === undefined ? 1 : parseInt(m[4], 10)) : 0;
        if (!file) { file = { name: "(file)", hunks: [] }; files.push(file); }
        hunk = { header: line, rows: [] };
        file.hunks.push(hunk);
      }
    }
    flush();
    return files;
  };

  /** Most rows one diff view builds: an agent can write a file of millions of lines, and a
   * table that size freezes the page for a minute (`hal task diff` shows all of it). */
  hal.DIFF_ROWS = 5000;

  /** Most rows the timeline's inline diffs hold at once, every tool call's together: one
   * cap a diff was no bound on a page of 2000 entries (nor on a MultiEdit's many edits). */
  hal.TIMELINE_DIFF_ROWS = 20000;

  /** A side-by-side table for a unified diff (at most ``limit`` rows of it, hal.DIFF_ROWS
   * by default); the box's ``rows`` says how many it built. */
  hal.renderDiff = function (text, limit) {
    const files = hal.parseDiff(text);
    const box = el("div", { class: "diff" });
    if (!files.length) box.append(el("p", { class: "muted", text: "no changes" }));
    const most = limit === undefined ? hal.DIFF_ROWS : Math.max(0, Math.min(limit, hal.DIFF_ROWS));
    let budget = most;
    const total = files.reduce((n, f) => n + f.hunks.reduce((m, h) => m + 1 + h.rows.length, 0), 0);
    for (const file of files) {
      if (budget <= 0) break;
      const table = el("table", { class: "diff-table" }, el("colgroup", {},
        el("col", { class: "ln" }), el("col", {}), el("col", { class: "ln" }), el("col", {})));
      for (const hunk of file.hunks) {
        if (budget-- <= 0) break;
        table.append(el("tr", { class: "diff-hunk" }, el("td", { colspan: 4, text: hunk.header })));
        for (const [kind, oldNo, oldText, newNo, newText] of hunk.rows) {
          if (budget-- <= 0) break;
          const left = kind === "same" ? "same" : oldText === null ? "empty" : "del";
          const right = kind === "same" ? "same" : newText === null ? "empty" : "add";
          table.append(el("tr", {},
            el("td", { class: "ln", text: oldNo }), el("td", { class: "code " + left, text: oldText === null ? "" : oldText }),
            el("td", { class: "ln", text: newNo }), el("td", { class: "code " + right, text: newText === null ? "" : newText })));
        }
      }
      box.append(el("details", { class: "diff-file", open: true }, el("summary", { class: "file-name", text: file.name }), table));
    }
    box.rows = most - Math.max(0, budget);
    if (total > most)
      box.append(el("p", { class: "muted diff-cut", text: "Only the first " + most + " of " + total + " lines are shown: `hal task diff` has all of them." }));
    return box;
  };
  /** old/new strings -> a tiny unified diff (line level), for an Edit tool call. */
  hal.editDiff = function (name, before, after) {
    const a = String(before || "").split("\n"), b = String(after || "").split("\n");
    let start = 0;
    while (start < a.length && start < b.length && a[start] === b[start]) start++;
    let endA = a.length - 1, endB = b.length - 1;
    while (endA >= start && endB >= start && a[endA] === b[endB]) { endA--; endB--; }
    const lines = ["diff --git a/" + name + " b/" + name, "--- a/" + name, "+++ b/" + name,
      "@@ -" + (start + 1) + "," + (endA - start + 1) + " +" + (start + 1) + "," + (endB - start + 1) + " @@"];
    for (let i = start; i <= endA; i++) lines.push("-" + a[i]);
    for (let i = start; i <= endB; i++) lines.push("+" + b[i]);
    return lines.join("\n");
  };

  const EDIT_TOOLS = /^(edit|multiedit|str_replace|write|create|write_file|apply_patch|patch)$/i;

  /** The unified diff of a tool call that edits or writes a file (a MultiEdit's edits in
   * one, under one cap), or null. */
  hal.toolDiffText = function (event) {
    const input = event.input || {};
    if (!EDIT_TOOLS.test(event.name || "")) return null;
    const name = String(input.file_path || input.path || input.filename || "(file)");
    if (typeof input.patch === "string" || typeof input.input === "string") return input.patch || input.input;
    if (typeof input.old_string === "string" || typeof input.new_string === "string")
      return hal.editDiff(name, input.old_string, input.new_string);
    if (Array.isArray(input.edits))
      return input.edits.map((e) => hal.editDiff(name, e && e.old_string, e && e.new_string)).join("\n");
    if (typeof input.content === "string" || typeof input.file_text === "string")
      return hal.editDiff(name, "", input.content || input.file_text);
    return null;
  };

  /** The inline diff of a tool call, or null: built while ``budget.left`` (the timeline's
   * rows, hal.TIMELINE_DIFF_ROWS) lasts, and taken from it; past it, a button builds it. */
  hal.toolDiff = function (event, budget) {
    if (!EDIT_TOOLS.test(event.name || "")) return null;
    if (!budget || budget.left > 0) {
      const text = hal.toolDiffText(event);
      if (text === null) return null;
      const view = hal.renderDiff(text, budget ? budget.left : undefined);
      if (budget) budget.left -= view.rows;
      return view;
    }
    if (hal.toolDiffText(event) === null) return null;
    const later = el("div", { class: "diff-later" });
    later.append(el("button", { type: "button", class: "small show-diff", text: "Show the diff",
      onclick: () => hal.clear(later).append(hal.renderDiff(hal.toolDiffText(event))) }));
    return later;
  };

  const short = (value, n) => { const s = typeof value === "string" ? value : JSON.stringify(value); return s.length > n ? s.slice(0, n) + "…" : s; };

  /** One timeline entry for a parsed event (null for events the log shows instead); an
   * inline diff takes its rows from ``budget`` (see hal.toolDiff), and the entry's
   * ``diffRows`` says how many. */
  hal.renderEvent = function (event, budget) {
    const when = el("time", { class: "when", text: event.ts ? new Date(event.ts * 1000).toLocaleTimeString() : "" });
    const row = (kind, ...body) => el("li", { class: "ev ev-" + kind, "data-seq": event.seq }, when, el("span", { class: "kind", text: kind }), ...body);
    switch (event.type) {
      case "agent_text": return row("agent", el("div", { class: "prose", text: short(event.text || "", 20000) }));
      case "tool_call": {
        const diff = hal.toolDiff(event, budget);
        const item = row("tool", el("code", { class: "tool-name", text: event.name }),
          diff || el("pre", { class: "tool-input", text: short(event.input || {}, 2000) }));
        item.diffRows = diff && diff.rows ? diff.rows : 0;
        return item;
      }
      case "tool_result": return row(event.is_error ? "tool-error" : "result", el("pre", { class: "tool-output", text: short(event.output || "", 2000) }));
      case "usage": return row("usage", el("span", { text: (event.input_tokens || 0) + " in / " + (event.output_tokens || 0) + " out" + (event.cost_usd != null ? " · " + hal.fmtCost(event.cost_usd) : "") + (event.model ? " · " + event.model : "") }));
      case "phase": return row("phase", hal.badge(event.phase), event.detail ? el("span", { class: "muted", text: " " + event.detail }) : null);
      case "message": return row(event.level || "info", el("span", { text: event.text }));
      case "sandbox_acquired": return row("sandbox", el("span", { text: event.provider + " " + event.sandbox_id + (event.warm ? " (warm)" : "") }));
      case "egress_denied": return row("egress", el("span", { text: "denied " + event.method + " " + event.host + (event.port ? ":" + event.port : "") }));
      case "task_end": return row("end", hal.badge(event.status), el("span", { text: " " + (event.files_changed || 0) + " files changed in " + Math.round(event.duration_s || 0) + "s" + (event.error ? " · " + event.error : "") }));
      case "task_created": return row("created", el("span", { text: event.agent + " on " + event.provider }));
      default: return null;
    }
  };
})();
