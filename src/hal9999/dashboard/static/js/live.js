"use strict";
// The live event stream: server-sent events read with fetch (so the page controls
// reconnection and sends Last-Event-ID itself). The page subscribes FIRST, then reads its
// snapshot, then releases the events held meanwhile; handlers drop what they already have
// (by gseq, or per task by seq). A dropped connection resumes from the last gseq seen.
// One stream per page carries task and hive events alike (hive events have no task_id): the
// page's handler gets every event, and listen() adds more handlers (the hive's, on every page).
(function () {
  const hal = (window.hal = window.hal || {});

  hal.Live = class {
    constructor(handler, options) {
      this.handler = handler;
      this.options = options || {};
      this.lastGseq = 0;
      this.held = [];
      this.holding = true;
      this.controller = null;
      this.stopped = false;
      this.connected = null; // resolves once the first response started (we are subscribed)
      this.stats = { connects: 0, events: 0, duplicates: 0, resyncs: 0 };
      this.listeners = [];
    }

    /** Adds a handler for every event delivered from now on (and one for resyncs). */
    listen(handler, onResync) { this.listeners.push({ handler, onResync }); }

    /** Opens the stream; resolves once the server answered (the subscription exists). */
    start() {
      this.connected = new Promise((resolve) => { this._ready = resolve; });
      this._loop();
      return this.connected;
    }

    /** Hands the events held since start() to the handler, then delivers directly. */
    release() {
      this.holding = false;
      const held = this.held;
      this.held = [];
      for (const event of held) this._deliver(event);
    }

    /** Closes the current connection as a network failure would (it reconnects). */
    drop() { if (this.controller) this.controller.abort(); }

    stop() { this.stopped = true; this.drop(); }

    _state(text) {
      const node = document.getElementById("live-state");
      if (node) { node.textContent = text; node.dataset.state = text; }
    }

    async _loop() {
      let delay = 250;
      while (!this.stopped) {
        this.controller = new AbortController();
        try {
          const headers = { ...(await hal.sessionHeaders()), accept: "text/event-stream" };
          if (this.lastGseq > 0) headers["last-event-id"] = String(this.lastGseq);
          const response = await fetch("/api/events/stream", { headers, credentials: "omit", signal: this.controller.signal, cache: "no-store" });
          if (response.status === 401) { hal.loggedOut(); this._ready(); return; }
          if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
          this.stats.connects++;
          this._state("live");
          this._ready();
          delay = 250;
          // Back after a lost connection (a restarted daemon, a network gap): the page reads
          // its snapshot again, subscribed first, so what changed meanwhile shows.
          if (this.stats.connects > 1) this._resync({ type: "resync", reason: "reconnected" });
          await this._read(response.body.getReader());
        } catch (err) {
          if (err && err.kind === "login") { this._state("logged out"); this._ready(); return; }
          if (this.stopped) break;
        }
        hal.doubt(); // whoever answers next must prove it is this hal again
        this._state("reconnecting");
        this._ready(); // a page never waits forever on a daemon that is down
        await new Promise((r) => setTimeout(r, delay));
        delay = Math.min(delay * 2, 5000);
      }
    }

    async _read(reader) {
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        // Look for block ends only in what is new (and the character before it), and cut the
        // buffer once a read: a large event arriving in many pieces, or many events in one
        // piece, is not scanned or copied again for each of them.
        let from = Math.max(0, buffer.length - 1), start = 0, cut;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        while ((cut = buffer.indexOf("\n\n", from)) >= 0) {
          this._block(buffer.slice(start, cut));
          start = from = cut + 2;
        }
        if (start) buffer = buffer.slice(start);
      }
    }

    _block(block) {
      let id = null, name = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // keep-alive comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "id") id = value;
        else if (field === "event") name = value;
        else if (field === "data") data.push(value);
      }
      if (!data.length) return;
      let event;
      try { event = JSON.parse(data.join("\n")); } catch (e) { return; }
      if (!event || typeof event !== "object") return;
      if (name && !event.type) event.type = name;
      if (name === "resync" || event.type === "resync") {
        // Too far behind: the page reads its snapshot again.
        if (id && /^\d+$/.test(id)) this.lastGseq = parseInt(id, 10);
        this._resync(event);
        return;
      }
      const gseq = id && /^\d+$/.test(id) ? parseInt(id, 10) : (event.gseq || 0);
      if (gseq && gseq <= this.lastGseq) { this.stats.duplicates++; return; }
      if (gseq) { this.lastGseq = gseq; if (!event.gseq) event.gseq = gseq; }
      this.stats.events++;
      if (this.holding) this.held.push(event);
      else this._deliver(event);
    }

    _resync(event) {
      this.stats.resyncs++;
      if (this.options.onResync) this.options.onResync(event);
      for (const l of this.listeners) if (l.onResync) l.onResync(event);
    }

    _deliver(event) {
      for (const handler of [this.handler, ...this.listeners.map((l) => l.handler)]) {
        try { handler(event); } catch (err) { console.error("hal: event handler failed", err); }
      }
    }
  };
})();
