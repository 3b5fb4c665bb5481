"use strict";
// The hive: what waits for the operator (title count, notifications, on every page) and the
// hive page (approvals with their diff, questions with the time left, agents with state
// badges and turn statistics, reminders, the operator's mailbox and a compose box). Hive events
// arrive on the page's one event stream (/v1/events/stream, ordered by gseq with the task
// events): nothing is polled. The listener is added before the snapshot is read, so an event
// landing in between is in the snapshot or delivered after it (a redraw reads the lists again).
(function () {
  const hal = (window.hal = window.hal || {});
  const el = (...args) => hal.el(...args);
  const THREAD_EVENTS = ["approval_added", "approval_resolved", "question_asked", "question_answered", "question_expired"];

  /** The page's event stream (the page's own, or one opened here for pages without one). */
  hal.stream = function () {
    if (!hal.live) { hal.live = new hal.Live(() => {}); hal.live.start(); hal.live.ownedByHive = true; }
    return hal.live;
  };

  /** Every page: the count of open threads in the title, notifications as they arrive. */
  hal.watchWaiting = async function () {
    const live = hal.stream();
    const count = (t) => t.approvals.length + t.questions.filter((q) => q.target === "operator").length;
    // One read at a time (an older answer never lands last), one more for what came meanwhile.
    const recount = hal.coalesce(async () => hal.setWaiting(count(await hal.api("GET", "/hive/threads"))));
    live.listen((event) => {
      if (event.task_id) return; // a task's event: the hive's are the ones without a task
      if (event.type === "approval_added") hal.notify("Approval waiting", event.agent + " proposes a " + event.kind, "/hive");
      if (event.type === "question_asked" && event.target === "operator") hal.notify("Question from " + event.asker, "", "/hive");
      if (event.type === "agent_crashed") hal.notify("Agent " + event.agent + " crashed", event.detail, "/hive");
      if (THREAD_EVENTS.includes(event.type)) recount();
      if (hal.onHiveEvent) hal.onHiveEvent(event);
    }, () => { recount(); if (hal.onHiveResync) hal.onHiveResync(); });
    await live.connected; // subscribed: the snapshot read next misses nothing
    await recount();
    if (live.ownedByHive) live.release();
    hal.hiveReady = true; // from here on, every newer hive event is delivered
  };

  const left = (expires) => {
    if (!expires) return "no time limit";
    const s = Math.round(expires - Date.now() / 1000);
    if (s <= 0) return "expired";
    return (s >= 3600 ? Math.floor(s / 3600) + "h " : "") + Math.floor((s % 3600) / 60) + "m " + (s % 60) + "s left";
  };

  /** A span of time as people say it: "6 d 23 h", "5 h 3 min", "4 min", "12 s". */
  hal.fmtSpan = (seconds) => {
    const s = Math.max(0, Math.round(seconds)), d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + " d" + (h ? " " + h + " h" : "");
    if (h) return h + " h" + (m ? " " + m + " min" : "");
    if (m) return m + " min";
    return s + " s";
  };
  /** When a proposal expires: "expires in 6 d 23 h (<its local date and time>)". */
  const expiry = (expires) => {
    if (!expires) return "never expires";
    const s = expires - Date.now() / 1000;
    return (s <= 0 ? "expired" : "expires in " + hal.fmtSpan(s)) + " (" + hal.fmtTime(expires) + ")";
  };

  const FIELDS = { name: "Name", agent: "Agent", provider: "Provider", repo: "Repository", role: "Role" };
  /** A spawn, destroy or tool proposal's details as labelled fields (not JSON): the known
   * ones first, in a fixed order, then the rest; long or multi-line text as a block. */
  function proposalFields(payload) {
    const list = el("dl", { class: "facts proposal-fields payload" });
    const keys = [...Object.keys(FIELDS).filter((k) => k in payload), ...Object.keys(payload).filter((k) => !(k in FIELDS)).sort()];
    for (const key of keys) {
      const value = payload[key];
      if (value === null || value === undefined || value === "") continue;
      const text = typeof value === "string" ? value : JSON.stringify(value);
      const label = FIELDS[key] || key.replace(/_/g, " ");
      list.append(el("dt", { text: label }), el("dd", { "data-field": key },
        text.includes("\n") || text.length > 120 ? el("pre", { class: "field-text", text }) : text));
    }
    if (!list.childElementCount) list.append(el("dt", { text: "details" }), el("dd", { text: "none" }));
    return list;
  }

  /** An apply's context from ``hal approvals show``: the agent's summary and what approving
   * now would do (or why it would be refused). */
  function applyContext(approval, view) {
    const box = [];
    const summary = (view.approval && view.approval.payload || approval.payload || {}).summary;
    if (summary) box.push(el("div", { class: "summary" }, el("strong", { text: "Summary from " + approval.proposer + ":" }), el("pre", { class: "summary-text", text: summary })));
    const preview = view.preview || {};
    if (preview.refused) box.push(el("p", { class: "warning refused", text: "Approving now would be refused: " + preview.refused }));
    else if (preview.how) box.push(el("p", { class: "muted preview", text: "Approving now: " + preview.how + " of " + preview.target }));
    return box;
  }

  function approvalCard(approval) {
    const reason = el("input", { class: "reason", placeholder: "Reason (sent to " + approval.proposer + ")" });
    const diff = el("div", { class: "approval-diff" });
    const decide = (verb) => async (ev) => {
      ev.target.disabled = true;
      try {
        await hal.api("POST", "/hive/approvals/" + encodeURIComponent(approval.id) + "/" + verb, { reason: reason.value });
        card.dataset.state = verb === "approve" ? "approved" : "denied";
        card.replaceChildren(el("p", { text: (verb === "approve" ? "Approved: " : "Denied: ") + approval.title }));
      } catch (err) { hal.flash(err.message); ev.target.disabled = false; }
    };
    const card = el("article", { class: "card approval", "data-approval": approval.id },
      el("h3", {}, hal.badge(approval.kind), " ", el("span", { class: "title", text: approval.title })),
      el("p", { class: "muted", text: "from " + approval.proposer + " · " + hal.fmtAgo(approval.created) }),
      el("p", { class: "expiry", "data-expires": approval.expires || "", text: expiry(approval.expires) }),
      diff,
      el("div", { class: "actions" }, reason,
        el("button", { type: "button", class: "approve", text: "Approve", onclick: decide("approve") }),
        el("button", { type: "button", class: "deny", text: "Deny", onclick: decide("deny") })));
    if (approval.kind === "apply") {
      hal.api("GET", "/hive/approvals/" + encodeURIComponent(approval.id)).then((view) => {
        diff.append(...applyContext(approval, view));
        diff.append(el("pre", { class: "commits", text: view.commits || "" }), hal.renderDiff(view.review || ""));
        if (view.diff_truncated) diff.append(el("p", { class: "muted", text: "(diff cut: see `hal approvals show`)" }));
      }).catch((err) => diff.append(el("p", { class: "error", text: err.message })));
    } else {
      diff.append(proposalFields(approval.payload || {}));
    }
    return card;
  }

  function questionCard(question) {
    const text = el("textarea", { class: "answer-text", rows: 2, placeholder: "Your answer" });
    const card = el("article", { class: "card question", "data-question": question.id },
      el("p", {}, el("strong", { text: question.asker }), " asks:"),
      el("pre", { class: "question-text", text: question.question }),
      el("p", { class: "time-left", "data-expires": question.expires || "", text: left(question.expires) }),
      el("div", { class: "actions" }, text, el("button", { type: "button", class: "answer", text: "Answer", onclick: async (ev) => {
        ev.target.disabled = true;
        try {
          await hal.api("POST", "/hive/questions/" + encodeURIComponent(question.id) + "/answer", { text: text.value });
          card.dataset.state = "answered";
          card.replaceChildren(el("p", { text: "Answered: " + text.value }));
        } catch (err) { hal.flash(err.message); ev.target.disabled = false; }
      } })));
    return card;
  }

  function statsChart(box, summary) {
    const results = Object.entries(summary.results || {});
    box.append(el("p", { class: "muted", text: summary.turns + " turns · p50 " + Math.round(summary.p50_ms || 0) + " ms · p95 " + Math.round(summary.p95_ms || 0) + " ms · " + summary.tool_calls + " tool calls · " + hal.fmtCost(summary.cost_usd) }));
    if (!results.length || !window.uPlot) return;
    const xs = results.map((_, i) => i), ys = results.map(([, n]) => n);
    const chart = el("div", { class: "chart" });
    box.append(chart, el("p", { class: "muted small", text: results.map(([k, n]) => k + " " + n).join(" · ") }));
    // One bar per result, labelled; the x range leaves half a bar each side (or the outer
    // bars are cut in half) and the y range starts at 0 (or a bar of 1 next to 2 looks empty).
    new window.uPlot({ width: Math.min(320, box.clientWidth || 320), height: 110, legend: { show: false },
      cursor: { show: false },
      scales: { x: { time: false, range: () => [-0.5, xs.length - 0.5] }, y: { range: (u, lo, hi) => [0, Math.max(1, hi)] } },
      axes: [{ size: 24, splits: () => xs, values: () => results.map(([k]) => k), stroke: "#8a93a3", grid: { show: false } },
        { size: 30, stroke: "#8a93a3", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], grid: { stroke: "#2a2f3a" } }],
      series: [{}, { stroke: "#58a6ff", fill: "rgba(88,166,255,.3)", points: { show: false },
        paths: window.uPlot.paths.bars({ size: [0.6] }) }] }, [xs, ys], chart);
  }

  hal.pages.hive = async function (main) {
    const live = new hal.Live(() => {}, { onResync: () => redraw() });
    hal.live = live;
    const connected = live.start(); // subscribed first, then the snapshot
    const approvals = el("div", { id: "approvals" });
    const questions = el("div", { id: "questions" });
    const agents = el("div", { id: "agents", class: "agents" });
    const messages = el("ol", { id: "messages", class: "messages" });
    const reminders = el("ol", { id: "reminders", class: "reminders" });
    const compose = el("textarea", { id: "compose", rows: 2, placeholder: "@agent-name your message" });
    const send = el("button", { type: "button", id: "send", text: "Send", onclick: async () => {
      const m = /^@([a-z][a-z0-9-]{0,31})\s+([\s\S]+)$/.exec(compose.value.trim());
      if (!m) { hal.flash("Start with @name: the agent the message is for."); return; }
      try { await hal.api("POST", "/hive/messages", { to: m[1], body: m[2] }); compose.value = ""; await drawMessages(); }
      catch (err) { hal.flash(err.message); }
    } });
    // Loading this page only reads the inbox: a page on another port of this host could open
    // it in a popup, so marking read waits for the operator's click (a POST with the session).
    let unread = [];
    const markRead = el("button", { type: "button", id: "mark-read", text: "Mark read", disabled: true, onclick: async () => {
      try { await hal.api("POST", "/hive/inbox/read", { ids: unread }); await drawMessages(); }
      catch (err) { hal.flash(err.message); }
    } });
    hal.clear(main).append(
      el("section", { class: "card" }, el("h1", { text: "Waiting for you" }),
        el("h2", { text: "Approvals" }), approvals, el("h2", { text: "Questions" }), questions),
      el("section", { class: "card" }, el("h2", { text: "Agents" }), agents),
      el("section", { class: "card" }, el("h2", { text: "Messages" }), messages,
        el("div", { class: "actions" }, compose, send, markRead)),
      el("section", { class: "card" }, el("h2", { text: "Reminders" }), reminders));

    /** Brings a list of cards in line with ``items`` without touching the cards that stay
     * (a reason or an answer being typed survives an update). */
    function sync(box, items, key, make, empty) {
      const wanted = new Set(items.map((item) => item.id));
      for (const node of [...box.children]) if (!wanted.has(node.dataset[key])) node.remove();
      const have = new Set([...box.children].map((node) => node.dataset[key]));
      for (const item of items) if (!have.has(item.id)) box.append(make(item));
      if (!items.length) box.append(el("p", { class: "muted", text: empty }));
    }
    async function drawThreads() {
      const [pending, open] = await Promise.all([hal.api("GET", "/hive/approvals"), hal.api("GET", "/hive/questions")]);
      sync(approvals, pending, "approval", approvalCard, "No proposal waits.");
      sync(questions, open.filter((q) => q.target === "operator"), "question", questionCard, "No question waits.");
    }
    async function drawAgents() {
      const list = await hal.api("GET", "/hive/agents");
      hal.clear(agents);
      if (!list.length) agents.append(el("p", { class: "muted", text: "No agents yet (`hal hive init`)." }));
      for (const agent of list) {
        const stats = el("div", { class: "stats" });
        const mailbox = el("div", { class: "agent-mailbox" });
        agents.append(el("article", { class: "card agent", "data-agent": agent.name, "data-state": agent.state },
          el("h3", {}, el("span", { text: agent.name }), " ", hal.badge(agent.state), agent.kind === "manager" ? " manager" : ""),
          el("p", { class: "muted", text: agent.agent + " on " + agent.provider + (agent.detail ? " · " + agent.detail : "") }),
          agentControls(agent),
          agent.task_id ? el("a", { href: "/tasks/" + agent.task_id, text: "its task" }) : null, mailbox, stats));
        const name = encodeURIComponent(agent.name);
        hal.api("GET", "/hive/agents/" + name + "/stats").then((s) => statsChart(stats, s)).catch(() => {});
        hal.api("GET", "/hive/inbox?name=" + name).then((mail) => drawMailbox(mailbox, agent, mail)).catch(() => {});
      }
    }
    /** Start (a stopped or crashed agent) and Stop: the hive API the CLI's `hal agent
     * start/stop` call. */
    function agentControls(agent) {
      const path = "/hive/agents/" + encodeURIComponent(agent.name) + "/";
      const control = (label, verb) => el("button", { type: "button", class: "small agent-" + verb, text: label, onclick: async (ev) => {
        ev.target.disabled = true;
        try { await hal.api("POST", path + verb); agentsLater(); }
        catch (err) { hal.flash(err.message); ev.target.disabled = false; }
      } });
      return el("div", { class: "actions agent-controls" },
        ["stopped", "crashed"].includes(agent.state) ? control("Start", "start") : null,
        agent.state !== "stopped" ? control("Stop", "stop") : null);
    }
    /** An agent's unread mail, each with Drop (`hal msg drop`): a bad message no turn of it
     * should get, the one a stop and start would run again included. */
    function drawMailbox(box, agent, mail) {
      hal.clear(box);
      if (!mail.length) return;
      const path = "/hive/agents/" + encodeURIComponent(agent.name) + "/messages/";
      box.append(el("h4", { text: "Mailbox: " + mail.length + " unread" }), el("ol", { class: "messages" }, ...mail.map((m) => {
        const item = el("li", { class: "msg", "data-message": m.id, "data-state": m.state },
          el("span", { class: "who", text: m.sender + " → " + m.recipient }), " ",
          el("span", { class: "muted", text: m.kind + " · " + m.state + " · " + hal.fmtAgo(m.created) }), " ",
          el("button", { type: "button", class: "small drop", text: "Drop", onclick: async (ev) => {
            ev.target.disabled = true;
            try { await hal.api("DELETE", path + encodeURIComponent(m.id)); item.remove(); agentsLater(); }
            catch (err) { hal.flash(err.message); ev.target.disabled = false; }
          } }),
          el("pre", { class: "body", text: m.body }));
        return item;
      })));
    }
    async function drawMessages() {
      const list = await hal.api("GET", "/hive/inbox?all=1");
      unread = list.filter((m) => m.recipient === "operator" && m.state !== "read").map((m) => m.id);
      markRead.disabled = !unread.length;
      hal.clear(messages).append(...list.map((m) => el("li", { class: "msg", "data-message": m.id, "data-state": m.state },
        el("span", { class: "who", text: m.sender + " → " + m.recipient }), " ",
        el("span", { class: "muted", text: m.kind + " · " + hal.fmtAgo(m.created) }),
        el("pre", { class: "body", text: m.body }))));
      if (!list.length) messages.append(el("li", { class: "muted", text: "No messages." }));
    }
    async function drawReminders() {
      const list = await hal.api("GET", "/hive/reminders");
      hal.clear(reminders).append(...list.map((r) => el("li", { class: "reminder", "data-reminder": r.id, "data-state": r.state },
        el("span", { class: "who", text: r.agent }), " ", hal.badge(r.state), " ",
        r.state === "pending"
          ? el("span", { class: "time-left", "data-expires": r.due, text: left(r.due) })
          : el("span", { class: "muted", text: "delivered " + hal.fmtAgo(r.delivered) }),
        r.file ? el("span", { class: "muted", text: " · file " + r.file }) : null,
        el("pre", { class: "body", text: r.body }),
        r.note ? el("p", { class: "muted small", text: r.note }) : null)));
      if (!list.length) reminders.append(el("li", { class: "muted", text: "No reminders." }));
    }
    const redraw = () => Promise.all([drawThreads(), drawAgents(), drawMessages(), drawReminders()]).catch(() => {});
    setInterval(() => { // the countdowns move locally; nothing is fetched
      for (const node of document.querySelectorAll(".time-left[data-expires]"))
        if (node.dataset.expires) node.textContent = left(Number(node.dataset.expires));
      for (const node of document.querySelectorAll(".expiry[data-expires]"))
        if (node.dataset.expires) node.textContent = expiry(Number(node.dataset.expires));
    }, 1000);
    // An event makes its list be read again: one read in flight per list (hal.coalesce).
    const [threadsLater, agentsLater, messagesLater, remindersLater] =
      [drawThreads, drawAgents, drawMessages, drawReminders].map(hal.coalesce);
    hal.onHiveEvent = (event) => {
      if (THREAD_EVENTS.includes(event.type)) threadsLater();
      if (["agent_state", "agent_crashed", "turn_finished"].includes(event.type) || event.type.startsWith("message_")) agentsLater();
      if (event.type.startsWith("message_") || event.type === "question_answered") messagesLater();
      if (event.type.startsWith("reminder_")) remindersLater();
    };
    hal.onHiveResync = redraw;
    await connected;
    await Promise.all([drawThreads(), drawAgents(), drawMessages(), drawReminders()]);
    live.release(); // what arrived meanwhile: each makes its list read again
  };

  document.addEventListener("DOMContentLoaded", () => { hal.watchWaiting().catch(() => {}); });
})();
