"use strict";
// The task page: header, actions, live log (ANSI colours, follow toggle), event timeline,
// result diff side by side, and the terminal.
(function () {
  const hal = (window.hal = window.hal || {});
  const el = (...args) => hal.el(...args);
  const ACTIVE = ["queued", "provisioning", "preparing", "running", "collecting"];
  const RESTING = ["stopped", "failed", "succeeded", "cancelled", "timed_out", "interrupted"];
  const ENDED = ["succeeded", "failed", "cancelled", "timed_out"];
  // An agent writes as much as it likes: the page keeps the newest part of the log and of the
  // timeline, so a flood of output never freezes the browser (`hal task logs` has it all).
  const LOG_CHARS = 1 << 20;
  const TIMELINE_ITEMS = 2000;

  hal.pages.task = async function (main, taskId) {
    let record = null;
    let lastSeq = 0;
    let catching = Promise.resolve();
    const ansi = new hal.AnsiRenderer();

    const status = el("span", { id: "task-status" });
    const facts = el("dl", { class: "facts" });
    const prompt = el("pre", { class: "prompt", id: "task-prompt" });
    const log = el("pre", { class: "log", id: "log", "aria-live": "polite" });
    const logCut = el("p", { class: "muted small", id: "log-cut", text: "Earlier output is not shown here: `hal task logs` has all of it." });
    logCut.hidden = true;
    let logChars = 0;
    let scrolling = 0;
    const follow = el("input", { type: "checkbox", id: "follow", checked: true });
    const timeline = el("ol", { class: "timeline", id: "timeline" });
    const diffBudget = { left: hal.TIMELINE_DIFF_ROWS }; // rows the inline diffs may still build
    const diffBox = el("div", { id: "result-diff" }, el("p", { class: "muted", text: "The diff appears when the task ends." }));
    const termBox = el("div", { id: "terminal", class: "term-box" });
    const resumePrompt = el("textarea", { id: "resume-prompt", rows: 2, placeholder: "Follow-up prompt (optional)" });
    const act = (label, id, fn) => el("button", { type: "button", id, text: label, onclick: async (ev) => {
      ev.target.disabled = true;
      try { await fn(); } catch (err) { hal.flash(err.message); } finally { ev.target.disabled = false; }
    } });
    const stopButton = act("Stop", "stop", () => hal.api("POST", "/tasks/" + record.id + "/stop"));
    const cancelButton = act("Cancel", "cancel", () => hal.api("POST", "/tasks/" + record.id + "/cancel"));
    const resumeButton = act("Resume", "resume", async () => {
      const body = resumePrompt.value.trim() ? { prompt: resumePrompt.value } : {};
      await hal.api("POST", "/tasks/" + record.id + "/resume", body);
      resumePrompt.value = "";
    });
    const termButton = act("Terminal", "open-terminal", async () => hal.openTerminal(termBox, record.id, false));
    const typeButton = act("Let me type", "terminal-write", async () => hal.openTerminal(termBox, record.id, true));

    hal.clear(main).append(
      el("section", { class: "card" },
        el("h1", {}, "Task ", el("code", { id: "task-id", text: taskId }), " ", status),
        facts, el("h3", { text: "Prompt" }), prompt,
        el("div", { class: "actions" }, stopButton, cancelButton, termButton, typeButton),
        el("div", { class: "actions" }, resumePrompt, resumeButton)),
      termBox,
      el("section", { class: "card" },
        el("h2", {}, "Log ", el("label", { class: "small" }, follow, " follow")), logCut, log),
      el("section", { class: "card" }, el("h2", { text: "Timeline" }), timeline),
      el("section", { class: "card" }, el("h2", { text: "Result" }), diffBox));

    // As the CLI's summary: the name only once the branch was made (an older daemon's
    // record, without branch_made, shows the name).
    function branchShown(r) {
      if (r.branch_made !== false) return r.branch;
      if (ENDED.includes(r.status)) return "none: no branch was made (the task ended before its work was brought back)";
      return "none yet (" + r.branch + " is made when the task's work is brought back)";
    }

    function showRecord() {
      hal.clear(status).append(hal.badge(record.status));
      document.title = (hal.waiting ? "(" + hal.waiting + ") " : "") + "Task " + record.id + " · hal";
      hal.clear(facts);
      const fact = (k, v) => facts.append(el("dt", { text: k }), el("dd", { text: v }));
      fact("agent", record.agent); fact("provider", record.provider);
      fact("repo", record.repo + (record.ref ? " @ " + record.ref : "")); fact("branch", branchShown(record));
      fact("created", hal.fmtTime(record.created_at));
      fact("tokens", record.input_tokens + " in / " + record.output_tokens + " out");
      fact("cost", hal.fmtCost(record.cost_usd));
      if (record.error_message) fact("error", record.error_message);
      prompt.textContent = hal.visible(record.prompt);
      const active = ACTIVE.includes(record.status);
      stopButton.hidden = cancelButton.hidden = !active;
      termButton.hidden = typeButton.hidden = record.status !== "running" || record.process_manager !== "tmux";
      resumeButton.hidden = resumePrompt.hidden = !RESTING.includes(record.status);
    }

    async function loadDiff() {
      try {
        const response = await fetch("/files/tasks/" + record.id + "/patch", { credentials: "omit", headers: await hal.sessionHeaders() });
        if (!response.ok) {
          const data = await response.json().catch(() => ({}));
          hal.clear(diffBox).append(el("p", { class: "muted", text: (data.error && data.error.message) || "no patch" }));
          return;
        }
        hal.clear(diffBox).append(hal.renderDiff(await response.text()));
      } catch (err) { hal.clear(diffBox).append(el("p", { class: "error", text: String(err) })); }
    }

    function apply(event) {
      lastSeq = event.seq;
      if (event.type === "output") {
        const text = String(event.text || "");
        const shown = ansi.render(text.length > LOG_CHARS ? text.slice(-LOG_CHARS) : text);
        logChars += shown.textContent.length;
        log.append(shown);
        while (logChars > LOG_CHARS && log.firstChild) { // the page keeps the end, bounded
          logChars -= log.firstChild.textContent.length;
          log.removeChild(log.firstChild);
          logCut.hidden = false;
        }
        if (follow.checked && !scrolling) // once a frame: a layout of the log per event is slow
          scrolling = requestAnimationFrame(() => { scrolling = 0; if (follow.checked) log.scrollTop = log.scrollHeight; });
        return;
      }
      const item = hal.renderEvent(event, diffBudget);
      if (item) timeline.append(item);
      while (timeline.childElementCount > TIMELINE_ITEMS) { // its diff's rows are free again
        diffBudget.left += timeline.firstElementChild.diffRows || 0;
        timeline.firstElementChild.remove();
      }
      if (event.type === "phase" || event.type === "task_end") {
        record.status = event.type === "phase" ? event.phase : event.status;
        showRecord();
      }
      if (event.type === "task_end") {
        hal.notify("Task " + record.id + " " + event.status, record.prompt, "/tasks/" + record.id);
        hal.api("GET", "/tasks/" + record.id).then((r) => { record = r; showRecord(); }).catch(() => {});
        loadDiff();
      }
    }

    /** Reads the task's events above lastSeq from the API (the snapshot, or a gap). */
    function catchUp() {
      catching = catching.then(async () => {
        for (;;) {
          const page = await hal.api("GET", "/tasks/" + record.id + "/events?after_seq=" + lastSeq);
          for (const event of page.events) if (event.seq > lastSeq) apply(event);
          if (!page.events.length || page.done) break;
        }
      }).catch((err) => hal.flash(err.message));
      return catching;
    }

    function onEvent(event) {
      if (!record || event.task_id !== record.id || !event.seq) return;
      if (event.seq <= lastSeq) return; // already shown (from the snapshot or a replay)
      if (event.seq === lastSeq + 1) apply(event);
      else catchUp(); // a gap: read it from the API, which has the order
    }

    const live = new hal.Live(onEvent, { onResync: () => catchUp() });
    hal.live = live;
    await live.start(); // subscribed first ...
    record = await hal.api("GET", "/tasks/" + encodeURIComponent(taskId));
    showRecord();
    await catchUp(); // ... then the snapshot ...
    live.release(); // ... then what arrived meanwhile, minus what we have
    if (!ACTIVE.includes(record.status)) loadDiff();
  };
})();
