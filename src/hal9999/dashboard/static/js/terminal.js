"use strict";
// The browser terminal: xterm.js over a websocket to the task's tmux session. Read-only
// unless the user asked to type (then keys go over the socket as {"data": ...}).
(function () {
  const hal = (window.hal = window.hal || {});
  let current = null;

  hal.openTerminal = async function (box, taskId, write) {
    const credential = (await hal.sessionHeaders())["x-hal-session"]; // this hal, proven
    if (current) { current.socket.close(); current.term.dispose(); current = null; }
    hal.clear(box);
    box.classList.add("open");
    // A hyperlink the agent prints (OSC 8) is inert, as in the log: xterm.js would open any
    // URL in a new window after a confirm, a phishing link planted in the pane.
    const linkHandler = { activate: () => {}, allowNonHttpProtocols: false };
    const term = new window.Terminal({ convertEol: false, disableStdin: !write, cursorBlink: write, fontSize: 13, scrollback: 5000, linkHandler });
    const fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    const bar = hal.el("div", { class: "term-bar" },
      hal.el("span", { id: "terminal-mode", text: write ? "typing goes to the agent" : "read-only" }),
      hal.el("button", { type: "button", class: "small", text: "Close", onclick: () => { socket.close(); term.dispose(); box.classList.remove("open"); hal.clear(box); current = null; } }));
    const screen = hal.el("div", { class: "term-screen" });
    box.append(bar, screen);
    term.open(screen);
    fit.fit();
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    let url = scheme + location.host + "/terminal/" + encodeURIComponent(taskId);
    if (write) url += "?write=1";
    // A WebSocket cannot send headers: the credential goes as a subprotocol, checked in the
    // handshake (the server answers "hal").
    const socket = new WebSocket(url, ["hal", "hal-session." + credential]);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => socket.send(JSON.stringify({ resize: [term.cols, term.rows] }));
    socket.onmessage = (msg) => {
      if (typeof msg.data === "string") {
        try { const info = JSON.parse(msg.data); if (info.error) term.write("\r\n[" + info.error + "]\r\n"); } catch (e) { /* ignore */ }
        return;
      }
      term.write(new Uint8Array(msg.data));
    };
    socket.onclose = () => term.write("\r\n[detached]\r\n");
    if (write) term.onData((data) => socket.readyState === 1 && socket.send(JSON.stringify({ data })));
    window.addEventListener("resize", () => { fit.fit(); if (socket.readyState === 1) socket.send(JSON.stringify({ resize: [term.cols, term.rows] })); });
    current = { socket, term };
    box.dataset.state = "open";
    return current;
  };
})();
