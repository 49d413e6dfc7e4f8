// The ccm dashboard: renders each state the server sends over
// server-sent events. Everything shown comes from etcd, where customers'
// names and errors live, so it only ever becomes text (textContent), never
// markup.
"use strict";

const $ = (sel) => document.querySelector(sel);

function cell(tr, text, cls, title) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  if (title) td.title = title;
  tr.appendChild(td);
  return td;
}

function firstLine(s) {
  const i = (s || "").indexOf("\n");
  return i < 0 ? (s || "") : s.slice(0, i) + " ...";
}

function time(t) {
  if (!t || t.startsWith("0001")) return "";
  return new Date(t).toLocaleString();
}

function setText(root, sel, text) {
  root.querySelector(sel).textContent = text;
}

function render(st) {
  const v = st.view || { nodes: [] };
  document.body.dataset.revision = String(st.revision || 0);
  $("#revision").textContent = "revision " + (st.revision || 0) + " · " + time(st.time);

  const failure = $("#failure");
  failure.hidden = !v.failure;
  failure.dataset.node = v.failure ? v.failure.node : "";
  if (v.failure) {
    setText(failure, ".node", v.failure.node);
    setText(failure, ".config", v.failure.configuration);
    setText(failure, ".revision", String(v.failure.revision));
    setText(failure, ".error", v.failure.error);
  }
  // Every other node's failure record, each named by its own key.
  const others = (v.failures || []).slice(1).map((f) => f.node + " (" + f.configuration + ")");
  const more = failure.querySelector(".more");
  more.hidden = others.length === 0;
  more.textContent = others.length ? "Also failed: " + others.join(", ") : "";
  const pause = $("#pause");
  pause.hidden = !v.pause;
  if (v.pause) {
    setText(pause, ".by", v.pause.by);
    setText(pause, ".reason", v.pause.reason || "");
  }
  const etcdError = $("#etcd-error");
  etcdError.hidden = !st.error;
  etcdError.textContent = st.error || "";

  // A stale view (etcd unreadable) shows every node's state as unknown,
  // as of the last good read: nothing on it is known to hold now.
  document.body.dataset.stale = String(!!v.stale);
  const badge = $("#connection");
  if (v.stale) {
    badge.textContent = "stale since " + time(v.read_at);
  } else if (document.body.dataset.connection === "live") {
    badge.textContent = "live";
  }
  const sum = v.summary || { nodes: 0, converged: 0, behind: 0, failed: 0, down: 0 };
  const summary = $("#summary");
  summary.textContent = v.stale
    ? sum.nodes + " nodes: state unknown; last read at " + time(v.read_at)
    : sum.nodes + " nodes: " + sum.converged + " converged, " + sum.behind + " behind, " +
      sum.failed + " failed, " + sum.down + " down";
  summary.className = "summary" + (v.stale || sum.failed || sum.down ? " bad" : sum.behind ? " warn" : " ok");
  for (const k of ["nodes", "converged", "behind", "failed", "down", "unknown"]) summary.dataset[k] = String(sum[k] || 0);

  const members = st.etcd || [];
  const healthy = members.filter((m) => m.healthy).length;
  const etcd = $("#etcd");
  etcd.textContent = healthy + "/" + members.length + " endpoints healthy" +
    members.filter((m) => !m.healthy).map((m) => " · " + m.endpoint + ": " + firstLine(m.error)).join("");
  etcd.className = healthy === members.length && members.length > 0 ? "state-idle" : "state-failed";
  etcd.dataset.healthy = String(healthy);
  etcd.dataset.endpoints = String(members.length);

  // The promoted release, or none: agents read their --config-dir.
  const release = (id) => (id ? id.slice(0, 12) : "dir");
  $("#release").textContent = v.release ? release(v.release.id) + " by " + v.release.by : "none (--config-dir)";
  $("#rollout").textContent = st.rollout || "";
  $("#holders").textContent = (v.holders || []).join(", ") || "free";
  $("#waiting").textContent = (v.waiting || []).join(", ") || "none";

  const nodes = $("#nodes tbody");
  nodes.replaceChildren();
  for (const n of v.nodes || []) {
    const tr = document.createElement("tr");
    tr.dataset.node = n.name;
    tr.dataset.state = n.state;
    tr.dataset.behind = String(!!n.behind);
    if (n.behind) tr.className = "behind";
    cell(tr, n.name, "name");
    cell(tr, n.state, "state state-" + n.state);
    cell(tr, release(n.release), "release");
    cell(tr, String(n.converged_revision), "converged");
    cell(tr, v.stale ? "?" : n.behind ? "yes" : "no", "behind");
    const s = n.status || {};
    cell(tr, s.result ? s.result + " · " + time(s.time) : "", "last");
    // The operators' labels: those a call by label matches.
    const labels = n.labels || {};
    cell(tr, Object.keys(labels).sort().map((k) => k + "=" + labels[k]).join(" "), "labels");
    // An alive agent that cannot make progress says why (its problem
    // record); otherwise the last run's error.
    const detail = n.reload_error ? "reload failed: " + n.reload_error : n.problem ? "agent: " + n.problem.error : s.error || n.drift || "";
    cell(tr, firstLine(detail), "detail", detail);
    nodes.appendChild(tr);
  }

  const qs = v.quarantines || [];
  $("#quarantine").hidden = qs.length === 0;
  const qbody = $("#quarantines tbody");
  qbody.replaceChildren();
  for (const q of qs) {
    const tr = document.createElement("tr");
    tr.dataset.object = q.type + "/" + q.id;
    tr.dataset.node = q.node;
    cell(tr, q.type + "/" + q.id, "object");
    cell(tr, String(q.revision), "revision");
    cell(tr, q.node, "node");
    cell(tr, q.configuration, "config");
    cell(tr, time(q.time), "when");
    cell(tr, firstLine(q.error), "error", q.error || "");
    qbody.appendChild(tr);
  }

  const acts = $("#actions tbody");
  acts.replaceChildren();
  for (const a of st.actions || []) {
    const tr = document.createElement("tr");
    tr.dataset.id = a.id;
    tr.dataset.node = a.node;
    tr.dataset.state = a.state;
    cell(tr, time(a.created), "when");
    cell(tr, a.action, "action");
    cell(tr, a.node, "node");
    cell(tr, a.by || "", "by");
    cell(tr, a.state, "state state-" + a.state);
    cell(tr, firstLine(a.error), "error", a.error || "");
    acts.appendChild(tr);
  }
}

function connect() {
  const events = new EventSource("events");
  events.onopen = () => {
    document.body.dataset.connection = "live";
    if (document.body.dataset.stale !== "true") $("#connection").textContent = "live";
  };
  events.onmessage = (e) => render(JSON.parse(e.data));
  events.onerror = () => {
    // EventSource reconnects by itself.
    document.body.dataset.connection = "lost";
    $("#connection").textContent = "reconnecting";
  };
}

connect();
