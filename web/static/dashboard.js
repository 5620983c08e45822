// archfarm dashboard: keeps the server-rendered pages live over Server-Sent Events.
// Plain JS, no build step. The DOM is built with createElement and textContent only: log lines,
// errors and build arguments come from builds and must never become markup.
// Events and their JSON: protocol/src/events.rs. Formatting mirrors coordinator/src/web/format.rs.
"use strict";

(function () {
  const MAX_LOG_LINES = 5000;
  const MAX_JOB_ROWS = 100;
  const TERMINAL = ["succeeded", "failed", "cancelled"];

  // ---- formatting ----

  function duration(ms) {
    ms = Math.max(0, ms);
    if (ms < 10000) return (ms / 1000).toFixed(1) + "s";
    const s = Math.floor(ms / 1000);
    const pad = (n) => String(n).padStart(2, "0");
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + pad(s % 60) + "s";
    return Math.floor(s / 3600) + "h " + pad(Math.floor((s % 3600) / 60)) + "m";
  }

  function age(now, then) {
    const s = Math.trunc((now - then) / 1000);
    if (s < 5) return "just now";
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return Math.floor(s / 86400) + " d ago";
  }

  function utc(ms) {
    return new Date(ms).toISOString().slice(0, 19).replace("T", " ") + " UTC";
  }

  function time(iso) {
    if (!iso) return null;
    const t = Date.parse(iso);
    return isNaN(t) ? null : t;
  }

  // Bytes of a string in UTF-8, as the coordinator counts log offsets.
  function utf8len(s) {
    let n = 0;
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) { n += 4; i++; }
      else n += 3;
    }
    return n;
  }

  // ---- DOM helpers ----

  function setText(el, value) {
    const v = value == null ? "" : String(value);
    if (el && el.textContent !== v) el.textContent = v;
  }

  // el("li", {"data-state": "x"}, "text", childNode)
  function el(tag, attrs) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v != null) node.setAttribute(k, v);
    }
    for (let i = 2; i < arguments.length; i++) {
      const c = arguments[i];
      if (c == null) continue;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }

  function field(scope, name) {
    return scope.querySelector('[data-field="' + name + '"]');
  }

  // Sets a field's text; an element marked data-wrap around it is hidden while it is empty.
  function setField(scope, name, value) {
    const f = field(scope, name);
    if (!f) return;
    setText(f, value);
    if (f.hasAttribute("data-state")) f.setAttribute("data-state", value || "");
    if (f.hasAttribute("data-mode")) f.setAttribute("data-mode", value || "");
    const wrap = f.closest("[data-wrap]");
    if (wrap) wrap.hidden = !value;
  }

  function byData(parent, attr, value) {
    for (const c of parent.querySelectorAll("[" + attr + "]")) {
      if (c.getAttribute(attr) === value) return c;
    }
    return null;
  }

  function refreshAges() {
    const now = Date.now();
    for (const t of document.querySelectorAll("time[data-age]")) {
      const then = time(t.getAttribute("datetime"));
      if (then != null) setText(t, age(now, then));
    }
  }

  // ---- the event stream ----

  // Opens an EventSource with the handlers; keeps body[data-live] and the indicator current.
  // EventSource retries network errors itself; after an HTTP error it gives up, so this retries.
  function connect(url, handlers) {
    const status = document.getElementById("live-status");
    let source = null;
    let retry = 2000;
    let stopped = false;
    const live = (state, label) => {
      document.body.dataset.live = state;
      setText(status, label);
    };
    function open() {
      live("connecting", "connecting…");
      source = new EventSource(url);
      source.onopen = () => {
        retry = 2000;
        live("connected", "live");
      };
      source.onerror = () => {
        if (stopped) return;
        live("reconnecting", "reconnecting…");
        if (source.readyState === EventSource.CLOSED) {
          setTimeout(() => { if (!stopped) open(); }, retry);
          retry = Math.min(retry * 2, 60000);
        }
      };
      for (const name of Object.keys(handlers)) {
        source.addEventListener(name, (ev) => {
          let data;
          try { data = JSON.parse(ev.data); } catch (e) { return; }
          handlers[name](data);
        });
      }
    }
    open();
    return {
      stop(label) {
        stopped = true;
        if (source) source.close();
        document.body.dataset.stream = "ended";
        setText(status, label);
      },
    };
  }

  // ---- the job page ----

  function jobPage() {
    const root = document.getElementById("job");
    if (!root) return;
    const builds = new Map(); // platform -> {card, pre, row, next}
    for (const card of root.querySelectorAll("[data-platform]")) {
      const platform = card.getAttribute("data-platform");
      const pre = card.querySelector("pre[data-log]");
      builds.set(platform, {
        card: card,
        pre: pre,
        row: byData(root, "data-timeline", platform),
        next: Number(pre.getAttribute("data-offset")) || 0,
      });
      pre.scrollTop = pre.scrollHeight;
    }
    let job = null;

    function renderTimes() {
      if (!job) return;
      const now = Date.now();
      const created = time(job.created_at);
      let end = time(job.finished_at);
      if (end == null) end = now;
      for (const b of job.builds) {
        const f = time(b.finished_at);
        if (f != null) end = Math.max(end, f);
      }
      end = Math.max(end, created + 1);
      const at = (t) => Math.min(100, Math.max(0, ((t - created) / (end - created)) * 100));
      setText(document.getElementById("timeline-total"), duration(end - created));
      for (const b of job.builds) {
        const entry = builds.get(b.platform);
        if (!entry) continue;
        const c = time(b.created_at), s = time(b.started_at), f = time(b.finished_at);
        const openEnd = Math.min(f != null ? f : now, end);
        setField(entry.card, "elapsed", s != null ? duration((f != null ? f : now) - s) : "");
        if (!entry.row) continue;
        entry.row.setAttribute("data-state", b.state);
        const seg = (rect, from, to, title) => {
          const x = at(from);
          rect.setAttribute("x", x.toFixed(2));
          rect.setAttribute("width", Math.max(0, at(to) - x).toFixed(2));
          setText(rect.querySelector("title"), title);
        };
        const qEnd = s != null ? s : openEnd;
        seg(entry.row.querySelector(".seg-queued"), c, qEnd, b.platform + ": queued " + duration(qEnd - c));
        const building = entry.row.querySelector(".seg-building");
        building.setAttribute("data-mode", b.mode || "");
        if (s != null) {
          const on = b.agent && b.mode ? ", " + b.mode + " on " + b.agent : "";
          seg(building, s, openEnd, b.platform + ": building " + duration((f != null ? f : now) - s) + on);
        } else {
          building.setAttribute("width", "0");
        }
        const marker = entry.row.querySelector(".seg-marker");
        if (f != null) {
          const x = at(f).toFixed(2);
          marker.setAttribute("x1", x);
          marker.setAttribute("x2", x);
          marker.setAttribute("visibility", "visible");
        } else {
          marker.setAttribute("visibility", "hidden");
        }
      }
    }

    function render() {
      const state = document.getElementById("job-state");
      setText(state, job.state);
      state.setAttribute("data-state", job.state);
      setText(document.getElementById("index-digest"), job.index_digest || "");
      const error = document.getElementById("job-error");
      setText(error, job.error || "");
      error.hidden = !job.error;
      const finished = document.getElementById("job-finished");
      const f = time(job.finished_at);
      setText(finished, f != null ? ", ended " + utc(f) : "");
      finished.hidden = f == null;
      const warnings = document.getElementById("job-warnings");
      if (warnings.childElementCount !== job.warnings.length) {
        warnings.replaceChildren(...job.warnings.map((w) => el("li", {}, w)));
      }
      for (const b of job.builds) {
        const entry = builds.get(b.platform);
        if (!entry) continue;
        setField(entry.card, "state", b.state);
        setField(entry.card, "agent", b.agent || "");
        setField(entry.card, "mode", b.mode || "");
        setField(entry.card, "digest", b.digest || "");
        setField(entry.card, "attempts", String(b.attempts));
        setField(entry.card, "decision", b.decision || "");
        setField(entry.card, "waiting", b.waiting || "");
        setField(entry.card, "error", b.error || "");
      }
      renderTimes();
    }

    // Appends the lines of a LogChunk not shown yet: the page was rendered up to data-offset,
    // and a reconnect starts the stream again from where the page was first rendered.
    function appendLog(chunk) {
      const entry = builds.get(chunk.platform);
      if (!entry) return;
      const pre = entry.pre;
      const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
      const lines = document.createDocumentFragment();
      let pos = chunk.offset;
      for (const line of chunk.lines) {
        if (pos >= entry.next) lines.appendChild(el("span", {}, line + "\n"));
        pos += utf8len(line) + 1;
      }
      entry.next = Math.max(entry.next, pos);
      if (!lines.childNodes.length) return;
      pre.appendChild(lines);
      while (pre.childNodes.length > MAX_LOG_LINES) pre.removeChild(pre.firstChild);
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }

    const id = root.getAttribute("data-job-id");
    // The page already holds each log up to data-offset: the stream starts there instead of
    // sending whole logs again (after a reconnect it starts there too; appendLog skips repeats).
    const from = [];
    for (const card of root.querySelectorAll("[data-build-id]")) {
      const entry = builds.get(card.getAttribute("data-platform"));
      if (entry) from.push(card.getAttribute("data-build-id") + ":" + entry.next);
    }
    const query = from.length ? "?from=" + encodeURIComponent(from.join(",")) : "";
    const stream = connect("/api/v1/jobs/" + encodeURIComponent(id) + "/events" + query, {
      job: (j) => { job = j; render(); },
      log: appendLog,
      end: () => stream.stop("job ended"),
    });
    setInterval(() => {
      if (job && !TERMINAL.includes(job.state)) renderTimes();
    }, 1000);
  }

  // ---- the jobs list ----

  function badges(job) {
    const now = Date.now();
    return job.builds.map((b) => {
      const s = time(b.started_at), f = time(b.finished_at);
      const elapsed = s != null ? duration((f != null ? f : now) - s) : "";
      return el("li", { class: "badge", "data-badge": b.platform, "data-state": b.state, title: b.platform + ": " + b.state },
        el("span", { class: "name" }, b.platform), " ",
        el("span", { class: "sr" }, b.state), " ",
        el("span", { class: "mode", "data-mode": b.mode || "" }, b.mode || ""), " ",
        el("span", { class: "elapsed" }, elapsed));
    });
  }

  function jobRow(job) {
    const created = time(job.created_at);
    return el("tr", { "data-job": job.id },
      el("td", { "data-label": "State" },
        el("span", { class: "state", "data-field": "state", "data-state": job.state }, job.state)),
      el("td", { "data-label": "Job" },
        el("a", { class: "job-link", href: "/jobs/" + encodeURIComponent(job.id) }, el("code", {}, job.id.slice(0, 8))),
        el("ul", { class: "tags", "data-field": "tags" }, ...job.tags.map((t) => el("li", {}, t)))),
      el("td", { "data-label": "Platforms" }, el("ul", { class: "badges", "data-field": "platforms" })),
      el("td", { "data-label": "Submitted" },
        el("time", { datetime: job.created_at, title: utc(created), "data-age": "" }, age(Date.now(), created)),
        job.submitter ? el("span", { class: "submitter", "data-field": "submitter" }, " by " + job.submitter) : null));
  }

  function jobsPage() {
    const table = document.getElementById("jobs");
    if (!table) return;
    const tbody = table.tBodies[0];
    const active = new Map(); // id -> latest job JSON, for ticking durations
    const update = (tr, job) => {
      setField(tr, "state", job.state);
      field(tr, "platforms").replaceChildren(...badges(job));
      if (TERMINAL.includes(job.state)) active.delete(job.id);
      else active.set(job.id, job);
    };
    connect("/api/v1/events", {
      job: (job) => {
        let tr = byData(tbody, "data-job", job.id);
        if (!tr) {
          tr = jobRow(job);
          tbody.insertBefore(tr, tbody.firstChild);
          while (tbody.rows.length > MAX_JOB_ROWS) tbody.deleteRow(-1);
          const none = document.getElementById("no-jobs");
          if (none) none.hidden = true;
        }
        update(tr, job);
      },
    });
    setInterval(() => {
      for (const job of active.values()) {
        const tr = byData(tbody, "data-job", job.id);
        if (tr) field(tr, "platforms").replaceChildren(...badges(job));
      }
    }, 1000);
  }

  // ---- the agents page ----

  function agentRow(name) {
    return el("tr", { "data-agent": name },
      el("td", { "data-label": "Agent" }, el("b", { "data-field": "name" }, name)),
      el("td", { "data-label": "State" }, el("span", { class: "state", "data-field": "state", "data-state": "" }),
        " ", el("small", { "data-field": "reason" })),
      el("td", { "data-label": "Native" }, el("span", { "data-field": "native" })),
      el("td", { "data-label": "Emulated" }, el("span", { "data-field": "emulated" })),
      el("td", { "data-label": "Running" },
        el("span", { "data-field": "running" }), " of ", el("span", { "data-field": "capacity" })),
      el("td", { "data-label": "Building now" }, el("ul", { class: "current", "data-field": "current" })),
      el("td", { "data-label": "Storage" }, el("span", { "data-field": "storage" })),
      el("td", { "data-label": "Last seen" }, el("time", { "data-field": "last-seen", "data-age": "" })));
  }

  // Same text as the server renders (web::format::storage).
  function storageText(a) {
    const parts = [];
    if (a.storage_driver) parts.push(a.storage_driver);
    if (a.storage) parts.push(bytes(a.storage.used_bytes) + " of " + bytes(a.storage.limit_bytes));
    return parts.join(", ");
  }

  function bytes(n) {
    const units = ["KiB", "MiB", "GiB", "TiB"];
    if (n < 1024) return n + " B";
    let v = n / 1024, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return v.toFixed(1) + " " + units[u];
  }

  function agentsPage() {
    const table = document.getElementById("agents");
    if (!table) return;
    const tbody = table.tBodies[0];
    connect("/api/v1/events", {
      agents: (data) => {
        const now = Date.now();
        const keep = new Set();
        for (const a of data.agents) {
          const tr = byData(tbody, "data-agent", a.name) || agentRow(a.name);
          tbody.appendChild(tr); // the event lists agents by name: appending keeps that order
          keep.add(tr);
          setField(tr, "state", a.state);
          setField(tr, "native", a.native_platforms.join(", "));
          setField(tr, "emulated", a.emulated_platforms.join(", "));
          setField(tr, "running", String(a.running));
          setField(tr, "capacity", String(a.capacity));
          setField(tr, "reason", a.drain_reason || "");
          setField(tr, "storage", storageText(a));
          const seen = field(tr, "last-seen");
          const t = time(a.last_seen);
          seen.setAttribute("datetime", a.last_seen);
          seen.setAttribute("title", t != null ? utc(t) : "");
          setText(seen, t != null ? age(now, t) : "");
        }
        for (const tr of Array.from(tbody.rows)) if (!keep.has(tr)) tr.remove();
        const none = document.getElementById("no-agents");
        if (none) none.hidden = data.agents.length > 0;
      },
      // Which agent builds what: a job's builds move between agents' "building now" lists.
      job: (job) => {
        for (const b of job.builds) {
          for (const li of tbody.querySelectorAll("li[data-build]")) {
            if (li.getAttribute("data-build") === b.id) li.remove();
          }
          if (b.state !== "building" || !b.agent) continue;
          const tr = byData(tbody, "data-agent", b.agent);
          if (!tr) continue;
          field(tr, "current").appendChild(el("li", { "data-build": b.id },
            el("a", { href: "/jobs/" + encodeURIComponent(job.id) }, b.platform), " ",
            el("span", { class: "mode", "data-mode": b.mode || "" }, b.mode || ""), " ",
            el("code", {}, job.id.slice(0, 8))));
        }
      },
    });
  }

  const page = document.body.getAttribute("data-page");
  if (page === "job") jobPage();
  else if (page === "jobs") jobsPage();
  else if (page === "agents") agentsPage();
  setInterval(refreshAges, 15000);
})();
