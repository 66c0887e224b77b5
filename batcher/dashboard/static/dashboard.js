// redis-batcher dashboard: fills the page shells from the JSON API and refreshes them.
// Everything read from Redis is set as text (never innerHTML). Charts are uPlot (vendored).
"use strict";
(() => {
  const body = document.body;
  const PAGE = body.dataset.page;
  const QUEUE = body.dataset.queue;
  const BATCH = body.dataset.batch;
  const REFRESH_MS = Number(body.dataset.refreshMs) || 2000;
  const MAX_POINTS = 300;
  const PRIORITIES = [["2", "urgent"], ["1", "high"], ["0", "normal"]];
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"];
  const main = document.getElementById("main");
  const q = encodeURIComponent(QUEUE || "");

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v;
      else if (k === "onclick") e.addEventListener("click", v);
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }
  const num = (v) => (v === null || v === undefined ? "-" : String(v));
  const fixed = (v, d) => (v === null || v === undefined ? "-" : Number(v).toFixed(d));
  const ms = (v) => (v === null || v === undefined ? "-" : `${Number(v).toFixed(1)} ms`);
  const pct = (v) => `${(100 * v).toFixed(1)} %`;
  const clock = (t) => {
    const d = new Date(Number(t));
    return Number.isNaN(d.getTime()) ? "-" : d.toISOString().slice(11, 19);
  };

  function showError(text) {
    const box = document.getElementById("error");
    box.textContent = text || "";
    box.hidden = !text;
  }

  async function getJSON(url) {
    const r = await fetch(url, { headers: { accept: "application/json" } });
    if (r.status === 404) return null;
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status} ${await r.text()}`);
    return r.json();
  }

  async function act(action, payload, question) {
    if (!window.confirm(question)) return;
    const r = await fetch(`/api/queues/${q}/actions/${action}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-batcher-action": action },
      body: JSON.stringify(payload || {}),
    });
    const text = await r.text();
    const toast = document.getElementById("toast");
    if (toast) toast.textContent = r.ok ? `${action}: ${text}` : `${action} refused: ${text}`;
    busy = false;
    await tick();
  }

  function session(write, configured) {
    const box = document.getElementById("session");
    box.replaceChildren();
    if (write) {
      box.append(el("span", { class: "badge ok" }, "write access"), " ",
        el("form", { method: "post", action: "/logout", class: "inline" },
          el("button", { type: "submit" }, "lock")));
    } else if (configured) {
      box.append(el("span", { class: "badge" }, "read-only"), " ",
        el("a", { href: "/login" }, "unlock"));
    } else {
      box.append(el("span", { class: "badge" }, "read-only"));
    }
  }

  function healthBadge(h) {
    return el("span", { class: `badge health ${h.status}`, "data-figure": "health" }, h.status);
  }

  function table(headers, rows, attrs) {
    return el("table", attrs || {},
      el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows));
  }

  function card(label, figure, value, raw) {
    return el("div", { class: "card" }, el("div", { class: "label" }, label),
      el("div", { class: "value", "data-figure": figure, "data-value": String(raw) }, value));
  }

  // -- charts ------------------------------------------------------------------------------

  function chart(container, title, labels, unit) {
    const div = el("div", { class: "chart", "data-chart": title, "data-points": "0" });
    container.append(div);
    const series = [{}, ...labels.map((label, i) => (
      { label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true }))];
    const data = [[], ...labels.map(() => [])];
    const u = new uPlot({
      title, width: Math.max(320, div.clientWidth || 480), height: 210, series,
      axes: [{}, { size: 64, values: (_, ticks) => ticks.map((t) => `${t}${unit}`) }],
      scales: { x: { time: true } },
    }, data, div);
    return { u, data, div };
  }

  function push(c, tSeconds, values) {
    const last = c.data[0][c.data[0].length - 1];
    if (last !== undefined && tSeconds <= last) return;
    c.data[0].push(tSeconds);
    values.forEach((v, i) => c.data[i + 1].push(v === undefined ? null : v));
    if (c.data[0].length > MAX_POINTS) c.data.forEach((a) => a.shift());
    c.u.setData(c.data);
    c.div.dataset.points = String(c.data[0].length);
  }

  // -- overview ----------------------------------------------------------------------------

  function renderOverview(data) {
    session(data.write, data.token_configured);
    const rows = data.queues.map((s) => {
      const b = s.buffer, p = s.performance, paused = b.paused_until_ms > s.now_ms;
      return el("tr", { "data-queue": s.queue },
        el("td", {}, el("a", { href: `/queues/${encodeURIComponent(s.queue)}` }, s.queue),
          paused ? el("span", { class: "badge paused" }, "paused") : null),
        el("td", {}, healthBadge(s.health),
          el("ul", { class: "reasons" }, ...s.health.reasons.map((r) => el("li", {}, r)))),
        el("td", { "data-figure": "pending" }, num(b.pending)),
        ...PRIORITIES.map(([k]) => el("td", { "data-figure": `pending-${k}` },
          num(b.by_priority[k]))),
        el("td", { "data-figure": "delayed" }, num(b.delayed)),
        el("td", { "data-figure": "in-flight-batches" }, num(b.in_flight_batches)),
        el("td", { "data-figure": "dead" }, num(b.dead)),
        el("td", { "data-figure": "size-threshold" }, num(s.sizing.size_threshold)),
        el("td", {}, fixed(p.throughput_eps_60s, 2)),
        el("td", {}, ms(p.p95_processing_ms)));
    });
    main.replaceChildren(el("h1", {}, "Queues"),
      data.queues.length ? table(["queue", "health", "pending", "urgent", "high", "normal",
        "delayed", "in flight", "dead", "size threshold", "acked/s (60 s)", "p95 batch"],
      rows, { id: "queues" }) : el("p", { class: "muted" }, "No queue on this Redis yet."));
  }

  // -- queue page --------------------------------------------------------------------------

  let charts = null;
  let lastFlushes = null;

  function buildQueuePage() {
    main.replaceChildren(
      el("div", { class: "title" }, el("h1", {}, `Queue ${QUEUE}`), el("span", { id: "health" }),
        el("span", { id: "paused" }), el("span", { class: "spacer" }), el("span", { id: "actions" })),
      el("ul", { id: "reasons", class: "reasons" }), el("p", { id: "toast", class: "muted" }),
      el("div", { id: "figures", class: "cards" }),
      el("div", { id: "charts", class: "charts" }),
      el("div", { class: "columns" },
        el("section", {}, el("h2", {}, "Flush reasons"), el("div", { id: "flushes" })),
        el("section", {}, el("h2", {}, "Workers"), el("div", { id: "workers" }))),
      el("section", {}, el("h2", {}, "In flight"), el("div", { id: "inflight" })),
      el("section", {}, el("div", { class: "title" }, el("h2", {}, "Dead letters"),
        el("span", { class: "spacer" }), el("span", { id: "dead-actions" })),
      el("div", { id: "dead" })),
      el("section", {}, el("h2", {}, "Recent events"), el("div", { id: "events" })));
    const box = document.getElementById("charts");
    charts = {
      throughput: chart(box, "Throughput (entries/s)", ["acked 10 s", "acked 60 s",
        "arrivals 60 s"], ""),
      latency: chart(box, "Processing time per batch (ms)", ["p50", "p95", "p99",
        "p95 last minute"], ""),
      size: chart(box, "Size threshold (entries)", ["threshold", "avg acked batch"], ""),
      flushes: chart(box, "Flushes per refresh, by reason", ["size", "deadline", "pressure",
        "emergency", "manual"], ""),
    };
  }

  function fillQueuePage(data) {
    const s = data.stats, b = s.buffer, p = s.performance, c = s.counters;
    session(data.write, data.token_configured);
    document.getElementById("health").replaceChildren(healthBadge(s.health));
    document.getElementById("reasons").replaceChildren(
      ...s.health.reasons.map((r) => el("li", {}, r)));
    const paused = data.paused_until_ms > s.now_ms;
    document.getElementById("paused").replaceChildren(paused ? el("span",
      { class: "badge paused", "data-figure": "paused" },
      (data.paused_until_ms >= data.paused_forever_ms ? "paused"
        : `paused until ${clock(data.paused_until_ms)} UTC`)
        + (b.paused_reason ? `: ${b.paused_reason}` : "")) : "");
    const actions = document.getElementById("actions");
    actions.replaceChildren();
    if (data.write) {
      actions.append(paused
        ? el("button", { "data-action": "resume", onclick: () => act("resume", {},
          `Resume flushing queue ${QUEUE}?`) }, "Resume")
        : el("button", { "data-action": "pause", onclick: () => act("pause", {},
          `Pause flushing queue ${QUEUE}? Producers keep enqueueing.`) }, "Pause"),
      el("button", { "data-action": "flush", onclick: () => act("flush", {},
        `Flush all ${b.pending} pending entries of ${QUEUE} now?`) }, "Flush now"));
    }
    document.getElementById("figures").replaceChildren(
      card("pending", "pending", num(b.pending), b.pending),
      ...PRIORITIES.map(([k, name]) => card(name, `pending-${k}`, num(b.by_priority[k]),
        b.by_priority[k])),
      card("delayed", "delayed", num(b.delayed), b.delayed),
      card("in flight", "in-flight-batches", `${b.in_flight_batches} batches`,
        b.in_flight_batches),
      card("in flight entries", "in-flight-entries", num(b.in_flight_entries),
        b.in_flight_entries),
      card("dead", "dead", num(b.dead), b.dead),
      card("utilisation", "utilization", pct(b.utilization), b.utilization),
      card("size threshold", "size-threshold",
        `${s.sizing.size_threshold} [${s.sizing.min}..${s.sizing.max}]`, s.sizing.size_threshold),
      card("acked/s (60 s)", "throughput-60s", fixed(p.throughput_eps_60s, 2),
        p.throughput_eps_60s),
      card("p95 batch", "p95", ms(p.p95_processing_ms), p.p95_processing_ms),
      card("accepted", "accepted", num(c.accepted), c.accepted),
      card("acked", "acked", num(c.acked), c.acked),
      card("batches failed", "batches-failed", num(p.batches_failed), p.batches_failed));
    const t = s.now_ms / 1000;
    push(charts.throughput, t, [p.throughput_eps, p.throughput_eps_60s, p.arrival_eps_60s]);
    push(charts.latency, t, [p.p50_processing_ms, p.p95_processing_ms, p.p99_processing_ms,
      p.recent_p95_processing_ms]);
    if (charts.size.data[0].length === 0) {
      for (const e of [...s.sizing.events].reverse()) {
        if (e.ms / 1000 < t) push(charts.size, e.ms / 1000, [e.after, null]);
      }
    }
    push(charts.size, t, [s.sizing.size_threshold, p.avg_batch_size]);
    const reasons = ["size", "deadline", "pressure", "emergency", "manual"];
    if (lastFlushes) {
      push(charts.flushes, t, reasons.map((r) => c.flushes[r] - lastFlushes[r]));
    }
    lastFlushes = c.flushes;
    fillTables(data);
  }

  function fillTables(data) {
    const s = data.stats;
    document.getElementById("flushes").replaceChildren(table(["reason", "batches"],
      Object.entries(s.counters.flushes).map(([r, n]) => el("tr", {}, el("td", {}, r),
        el("td", { "data-flush": r }, num(n))))));
    const workers = s.workers || [];
    document.getElementById("workers").replaceChildren(workers.length
      ? table(["worker", "state", "RQ queues"], workers.map((w) => el("tr", {},
        el("td", {}, w.name), el("td", {}, w.state), el("td", {}, w.queues.join(", ")))),
      { id: "workers-table" })
      : el("p", { class: "muted" }, "No live RQ worker."));
    document.getElementById("inflight").replaceChildren(data.inflight.length
      ? table(["batch", "status", "entries", "attempt", "reason", "priority", "lease"],
        data.inflight.map((x) => el("tr", { "data-batch": x.id },
          el("td", {}, el("a", { href: `/queues/${q}/batches/${encodeURIComponent(x.id)}` },
            x.id)),
          el("td", {}, num(x.status)), el("td", {}, num(x.size)), el("td", {}, num(x.attempt)),
          el("td", {}, num(x.reason)), el("td", {}, num(x.priority)),
          el("td", {}, `${((x.lease_ms - s.now_ms) / 1000).toFixed(1)} s`))))
      : el("p", { class: "muted" }, "No batch in flight."));
    fillDead(data);
    document.getElementById("events").replaceChildren(table(["time", "type", "details"],
      // the stream id's first part is when it was written (an event's own "ms" is a figure)
      s.events.map((e) => el("tr", {}, el("td", {}, clock(e.id.split("-")[0])),
        el("td", {}, e.type),
        el("td", { class: "details" }, Object.entries(e)
          .filter(([k]) => !["id", "type"].includes(k))
          .map(([k, v]) => `${k}=${v}`).join("  "))))));
  }

  function fillDead(data) {
    const total = data.stats.buffer.dead;
    const bar = document.getElementById("dead-actions");
    bar.replaceChildren();
    if (data.write && total > 0) {
      bar.append(
        el("button", { "data-action": "requeue-all", onclick: () => act("requeue", {},
          `Requeue all ${total} dead entries of ${QUEUE} to pending?`) }, "Requeue all"),
        el("button", { "data-action": "purge-all", class: "danger", onclick: () => act("purge",
          {}, `Delete all ${total} dead entries of ${QUEUE} for good?`) }, "Purge all"));
    }
    const head = ["entry", "reason", "error", "attempts", "died at"];
    if (data.write) head.push("");
    document.getElementById("dead").replaceChildren(data.dead.length
      ? table(head, data.dead.map((d) => el("tr", { "data-dead": d.id },
        el("td", {}, d.id), el("td", {}, num(d.reason)), el("td", { class: "details" },
          num(d.error)), el("td", {}, num(d.attempts)), el("td", {}, clock(d.died_at_ms)),
        data.write ? el("td", {},
          el("button", { "data-action": "requeue", onclick: () => act("requeue",
            { ids: [d.id] }, `Requeue dead entry ${d.id} to pending?`) }, "Requeue"),
          el("button", { "data-action": "purge", class: "danger", onclick: () => act("purge",
            { ids: [d.id] }, `Delete dead entry ${d.id} for good?`) }, "Purge")) : null)),
      { id: "dead-table" })
      : el("p", { class: "muted" }, "No dead entry."));
  }

  // -- batch page --------------------------------------------------------------------------

  function renderBatch(data, now) {
    if (data.gone) {
      main.replaceChildren(el("h1", {}, `Batch ${BATCH}`),
        el("p", { id: "batch-gone" }, "This batch is gone: acked, or never flushed."));
      return;
    }
    const m = data.meta;
    const lease = data.lease_ms === null ? "-" : `${clock(data.lease_ms)} UTC`;
    main.replaceChildren(el("h1", {}, `Batch ${BATCH}`),
      table(["status", "entries", "attempt", "reason", "priority", "created", "lease until"],
        [el("tr", {}, el("td", { "data-figure": "status" }, num(m.status)),
          el("td", { "data-figure": "entries" }, num(m.n)),
          el("td", { "data-figure": "attempt" }, num(m.attempt)), el("td", {}, num(m.reason)),
          el("td", {}, num(m.priority)), el("td", {}, `${clock(Number(m.created_ms))} UTC`),
          el("td", { "data-figure": "lease" }, lease))]),
      el("h2", {}, "Entries"),
      table(["entry", "priority", "enqueued", "calls before", "payload"],
        data.entries.map((e) => el("tr", { "data-entry": e.id }, el("td", {}, e.id),
          el("td", {}, e.priority), el("td", {}, `${clock(e.enqueued_ms)} UTC`),
          el("td", {}, e.prior_attempts),
          el("td", { class: "details" }, JSON.stringify(
            e.envelope && e.envelope.payload !== undefined ? e.envelope.payload : e.envelope)
            .slice(0, 200))))));
    void now;
  }

  // -- loop --------------------------------------------------------------------------------

  let busy = false;
  async function tick() {
    if (busy) return;  // a slow refresh is not stacked on by the next one
    busy = true;
    try {
      if (PAGE === "overview") {
        renderOverview(await getJSON("/api/queues"));
      } else if (PAGE === "queue") {
        const data = await getJSON(`/api/queues/${q}`);
        if (!charts) buildQueuePage();
        fillQueuePage(data);
      } else if (PAGE === "batch") {
        const [sess, data] = await Promise.all([getJSON("/api/session"),
          getJSON(`/api/queues/${q}/batches/${encodeURIComponent(BATCH)}`)]);
        session(sess.write, sess.token_configured);
        renderBatch(data, Date.now());
      }
      body.dataset.updated = String(Date.now());
      showError("");
    } catch (err) {
      showError(`Cannot refresh: ${err.message}`);
    } finally {
      busy = false;
    }
  }

  window.addEventListener("resize", () => {
    if (!charts) return;
    for (const c of Object.values(charts)) c.u.setSize({ width: c.div.clientWidth, height: 210 });
  });
  tick();
  setInterval(tick, REFRESH_MS);
})();
