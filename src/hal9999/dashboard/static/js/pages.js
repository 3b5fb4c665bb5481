"use strict";
// Overview, new-task form, sandboxes and pool.
(function () {
  const hal = (window.hal = window.hal || {});
  const el = (...args) => hal.el(...args);
  const ORDER = ["running", "queued", "provisioning", "preparing", "collecting", "stopped", "interrupted", "failed", "timed_out", "cancelled", "succeeded"];
  const short = (text, n) => (text.length > n ? text.slice(0, n) + "…" : text);

  function taskRow(task) {
    return el("tr", { "data-task": task.id },
      el("td", {}, el("a", { href: "/tasks/" + task.id, text: task.id })),
      el("td", {}, hal.badge(task.status)),
      el("td", { class: "prompt-cell", text: short(hal.stripAnsi(task.prompt).replace(/\s+/g, " "), 90) }),
      el("td", { class: "wide", text: task.agent }),
      el("td", { class: "wide", text: task.provider }),
      el("td", { class: "wide", text: hal.fmtCost(task.cost_usd) }),
      el("td", { class: "wide", text: hal.fmtAgo(task.created_at) }));
  }

  hal.pages.overview = async function (main) {
    const tasks = new Map();
    const counts = el("div", { class: "chips", id: "counts" });
    const cost = el("span", { id: "cost-today" });
    const body = el("tbody", { id: "tasks" });
    const pool = el("div", { id: "pool" });
    const hive = el("div", { id: "hive-agents", class: "chips" });
    hal.clear(main).append(
      el("section", { class: "card" }, el("h1", { text: "Overview" }), counts,
        el("p", {}, "Today's cost: ", cost)),
      el("section", { class: "card" }, el("h2", { text: "Tasks" }),
        el("div", { class: "scroll" }, el("table", { class: "tasks" },
          el("thead", {}, el("tr", {}, ["task", "state", "prompt"].map((h) => el("th", { text: h })),
            ["agent", "provider", "cost", "created"].map((h) => el("th", { class: "wide", text: h })))), body))),
      el("section", { class: "card" }, el("h2", { text: "Pool and sandboxes" }), pool),
      el("section", { class: "card" }, el("h2", {}, el("a", { href: "/hive", text: "Hive agents" })), hive));

    async function drawHive() {
      let agents;
      try { agents = await hal.api("GET", "/hive/agents"); } catch (err) { hive.closest("section").hidden = true; return; }
      hal.clear(hive).append(...agents.map((a) => el("span", { class: "chip", "data-agent": a.name }, a.name + " ", hal.badge(a.state))));
      if (!agents.length) hive.append(el("span", { class: "muted", text: "No agents." }));
    }
    hal.onHiveEvent = (event) => { if (["agent_state", "agent_crashed"].includes(event.type)) drawHive(); };

    function redraw() {
      const sorted = [...tasks.values()].sort((a, b) => b.created_at - a.created_at);
      hal.clear(body).append(...sorted.map(taskRow));
      if (!sorted.length) body.append(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No tasks yet: start one from New task or `hal run`." })));
      const byState = {};
      for (const t of sorted) byState[t.status] = (byState[t.status] || 0) + 1;
      hal.clear(counts).append(...ORDER.filter((s) => byState[s]).map((s) => el("span", { class: "chip" }, hal.badge(s), " " + byState[s])));
      const midnight = new Date(); midnight.setHours(0, 0, 0, 0);
      const today = sorted.filter((t) => t.created_at * 1000 >= midnight.getTime()).reduce((sum, t) => sum + (t.cost_usd || 0), 0);
      cost.textContent = hal.fmtCost(today);
    }

    async function drawPool() {
      const [status, boxes] = await Promise.all([hal.api("GET", "/status"), hal.api("GET", "/sandboxes")]);
      hal.clear(pool);
      const providers = (status.pool && status.pool.providers) || {};
      const names = new Set([...Object.keys(providers), ...boxes.map((b) => b.provider)]);
      pool.append(el("p", { text: status.running.length + " running, " + status.queued + " queued (at most " + status.max_concurrent + " at once)" + (status.pool && status.pool.paused ? " · pool paused" : "") }));
      if (!names.size) pool.append(el("p", { class: "muted", text: "No sandboxes." }));
      for (const name of names) {
        const row = providers[name] || { states: {} };
        const states = Object.entries(row.states || {}).map(([s, n]) => s + " " + n).join(", ");
        pool.append(el("p", {}, el("strong", { text: name }), " " + (states || "none") + (row.max_size !== undefined ? " · max " + row.max_size + ", warm " + row.min_warm : "")));
      }
    }

    let refreshing = null;
    function refreshPool() { // at most one read in flight, after events that change the pool
      if (refreshing) return;
      refreshing = setTimeout(() => { refreshing = null; drawPool().catch(() => {}); }, 300);
    }

    // Tasks an event said changed, read in rounds (hal.coalesce): one round in flight, the
    // tasks marked meanwhile read in the next. One read per event, all at once, let an agent
    // printing usage a line make every open overview send the daemon a request per line.
    const stale = new Set();
    const readStale = hal.coalesce(async () => {
      const ids = [...stale];
      stale.clear();
      await Promise.all(ids.map(async (id) => {
        try { tasks.set(id, await hal.api("GET", "/tasks/" + id)); } catch (err) { tasks.delete(id); }
      }));
      redraw();
    });
    const refetch = (taskId) => { stale.add(taskId); readStale(); };

    const live = new hal.Live((event) => {
      if (!event.task_id) return;
      if (["phase", "task_end", "task_created", "usage", "sandbox_acquired"].includes(event.type) || !tasks.has(event.task_id)) {
        refetch(event.task_id); // the record is the truth; the event says it changed
        if (event.type !== "usage") refreshPool();
      }
      if (event.type === "task_end") hal.notify("Task " + event.task_id + " " + event.status, event.error || "", "/tasks/" + event.task_id);
    }, { onResync: () => load() });
    hal.live = live;

    async function load() {
      const list = await hal.api("GET", "/tasks?limit=500");
      tasks.clear();
      for (const t of list) tasks.set(t.id, t);
      redraw();
      await Promise.all([drawPool(), drawHive()]);
    }
    await live.start();
    await load();
    live.release();
  };

  hal.pages.new = async function (main) {
    const field = (label, input) => el("label", { class: "field" }, el("span", { text: label }), input);
    const prompt = el("textarea", { id: "prompt", name: "prompt", rows: 6, required: true, placeholder: "What should the agent do?" });
    const repo = el("input", { id: "repo", name: "repo", placeholder: "/path/to/repo or URL", required: true });
    const ref = el("input", { id: "ref", name: "ref", placeholder: "branch, tag or commit (optional)" });
    const agent = el("input", { id: "agent", name: "agent", placeholder: "default agent" });
    const provider = el("input", { id: "provider", name: "provider", placeholder: "default provider" });
    const timeout = el("input", { id: "timeout", name: "timeout", type: "number", min: 1, placeholder: "seconds" });
    const priority = el("input", { id: "priority", name: "priority", type: "number", value: "0" });
    repo.value = localStorage.getItem("hal-last-repo") || "";
    const form = el("form", { id: "new-task", class: "card form" },
      el("h1", { text: "New task" }), field("Prompt", prompt), field("Repository", repo), field("Ref", ref),
      field("Agent", agent), field("Provider", provider), field("Timeout", timeout), field("Priority", priority),
      el("button", { type: "submit", id: "start", text: "Start" }));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = { prompt: prompt.value, repo: repo.value.trim(), cwd: "/" };
      if (ref.value.trim()) body.ref = ref.value.trim();
      if (agent.value.trim()) body.agent = agent.value.trim();
      if (provider.value.trim()) body.provider = provider.value.trim();
      if (timeout.value) body.timeout_s = Number(timeout.value);
      if (priority.value) body.priority = Number(priority.value);
      try {
        const task = await hal.api("POST", "/tasks", body);
        localStorage.setItem("hal-last-repo", body.repo);
        location.href = hal.safeHref("/tasks/" + task.id);
      } catch (err) { hal.flash(err.message); }
    });
    hal.clear(main).append(form);
  };

  hal.pages.sandboxes = async function (main) {
    const body = el("tbody", { id: "sandboxes" });
    const summary = el("div", { id: "pool-summary" });
    hal.clear(main).append(
      el("section", { class: "card" }, el("h1", { text: "Pool" }), summary,
        el("div", { class: "actions" },
          el("button", { type: "button", id: "warm", text: "Warm one", onclick: () => hal.api("POST", "/pool/warm", { count: 1 }).then(draw, (e) => hal.flash(e.message)) }),
          el("button", { type: "button", id: "drain", text: "Drain idle", onclick: () => hal.api("POST", "/pool/drain").then(draw, (e) => hal.flash(e.message)) }))),
      el("section", { class: "card" }, el("h2", { text: "Sandboxes" }), el("div", { class: "scroll" }, el("table", {},
        el("thead", {}, el("tr", {}, ["sandbox", "provider", "state", "task", "created", "last used", ""].map((h) => el("th", { text: h })))), body))));
    async function draw() {
      const [pool, boxes] = await Promise.all([hal.api("GET", "/pool"), hal.api("GET", "/sandboxes")]);
      hal.clear(summary);
      for (const [name, row] of Object.entries(pool.providers || {}))
        summary.append(el("p", {}, el("strong", { text: name }), " " + Object.entries(row.states).map(([s, n]) => s + " " + n).join(", ") + " · max " + row.max_size + ", warm " + row.min_warm + ", " + row.policy));
      for (const [name, own] of Object.entries(pool.own_warm || {}))
        summary.append(el("p", {}, el("strong", { text: name }), own.error ? " warm sandboxes unknown: " + own.error : " " + own.free + " free warm, kept by the provider"));
      if (!Object.keys(pool.providers || {}).length && !Object.keys(pool.own_warm || {}).length) summary.append(el("p", { class: "muted", text: "The pool is empty." }));
      hal.clear(body).append(...boxes.map((b) => el("tr", {},
        el("td", {}, el("code", { text: b.id })), el("td", { text: b.provider }), el("td", {}, hal.badge(b.state)),
        el("td", {}, b.task_id ? el("a", { href: "/tasks/" + b.task_id, text: b.task_id }) : ""),
        el("td", { text: hal.fmtAgo(b.created_at) }), el("td", { text: hal.fmtAgo(b.last_used_at) }),
        el("td", {}, b.state === "idle" ? el("button", { type: "button", class: "small", text: "Destroy", onclick: () =>
          hal.api("DELETE", "/sandboxes/" + encodeURIComponent(b.provider) + "/" + encodeURIComponent(b.id)).then(draw, (e) => hal.flash(e.message)) }) : ""))));
    }
    const live = new hal.Live((event) => {
      if (["sandbox_acquired", "task_end", "phase"].includes(event.type)) draw().catch(() => {});
    });
    hal.live = live;
    await live.start();
    await draw();
    live.release();
  };
})();
