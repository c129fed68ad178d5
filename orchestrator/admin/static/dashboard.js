// The fleetlm dashboard: a page over the admin API (/admin/v1/...), kept live by its
// server-sent event stream. Plain JS, no build step, no CDN. Every number comes from the admin
// API; the only state kept here is the last minutes of snapshots, for the charts.
"use strict";

const HISTORY_S = 300; // what the charts show
const COLORS = ["#4fa3ff", "#3fb97a", "#e5a93a", "#c678dd", "#e5534b", "#56b6c2"];
const S = { snap: null, history: [], events: [], page: "", arg: "", requests: null };

// ---- the admin API ------------------------------------------------------------------------

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error((data.error && data.error.message) || resp.statusText);
    err.data = data;
    throw err;
  }
  return data;
}

function toast(message, isError) {
  const box = document.getElementById("toast");
  const div = document.createElement("div");
  div.textContent = message;
  if (isError) div.className = "error";
  box.appendChild(div);
  setTimeout(() => div.remove(), isError ? 9000 : 5000);
}

// Every action asks first and reports what the controller answered.
async function act(question, call, describe) {
  if (!window.confirm(question)) return;
  try {
    toast(describe(await call()));
  } catch (err) {
    toast(err.message, true);
  }
}

// ---- the stream -----------------------------------------------------------------------------

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/admin/v1/stream");
  source.addEventListener("snapshot", (msg) => {
    live.textContent = "live";
    live.className = "live on";
    onSnapshot(JSON.parse(msg.data));
  });
  source.onerror = () => {
    live.textContent = "reconnecting";
    live.className = "live off";
  };
}

function onSnapshot(snap) {
  const now = Date.now() / 1000;
  S.snap = snap;
  const seen = new Set(S.events.map((e) => e.seq));
  S.events = S.events.concat(snap.events.filter((e) => !seen.has(e.seq))).slice(-1000);
  S.history.push({ t: now, replicas: snap.replicas });
  S.history = S.history.filter((h) => h.t >= now - HISTORY_S);
  update();
}

// ---- helpers ----------------------------------------------------------------------------------

const esc = (v) =>
  String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
    '"': "&quot;", "'": "&#39;" })[c]);
const fmt = (v, d = 1) => (v === undefined || v === null ? "–" : Number(v).toFixed(d));
const kvUsed = (r) => (r.kv_blocks_total ? 1 - r.kv_blocks_free / r.kv_blocks_total : 0);
const stateBadge = (s) => `<span class="state ${esc(s)}">${esc(s)}</span>`;
const bar = (f) => `<span class="bar"><span style="width:${(100 * f).toFixed(1)}%"></span></span>`;
const replicaLink = (id) => `<a href="#/replica/${encodeURIComponent(id)}">${esc(id)}</a>`;

// A replica's counter as a rate over the charts' window (snapshots kept here).
function ratePerSecond(id, counter) {
  const h = S.history.filter((x) => x.replicas.some((r) => r.id === id));
  if (h.length < 2) return null;
  const first = h[0].replicas.find((r) => r.id === id);
  const last = h[h.length - 1].replicas.find((r) => r.id === id);
  const dt = h[h.length - 1].t - h[0].t;
  return dt > 0 ? Math.max(0, (last[counter] || 0) - (first[counter] || 0)) / dt : null;
}
const stepsPerSecond = (id) => ratePerSecond(id, "num_steps");

// The same counter's rate between consecutive snapshots, per replica, for a chart.
function rateSeries(counter) {
  const ids = [...new Set(S.history.flatMap((h) => h.replicas.map((r) => r.id)))].sort();
  return ids.map((id) => ({
    name: id,
    points: S.history.slice(1).flatMap((h, i) => {
      const prev = S.history[i].replicas.find((x) => x.id === id);
      const cur = h.replicas.find((x) => x.id === id);
      const dt = h.t - S.history[i].t;
      if (!prev || !cur || dt <= 0 || cur[counter] === undefined) return [];
      return [[h.t, Math.max(0, cur[counter] - prev[counter]) / dt]];
    }),
  }));
}

// A line chart as SVG: series = [{name, points: [[t, v], ...]}].
function chart(title, series, unit) {
  const w = 600, h = 140, pad = 4;
  const now = Date.now() / 1000;
  const all = series.flatMap((s) => s.points.map((p) => p[1]));
  const top = Math.max(1e-9, ...all) * 1.1;
  const x = (t) => pad + ((t - (now - HISTORY_S)) / HISTORY_S) * (w - 2 * pad);
  const y = (v) => h - pad - (v / top) * (h - 2 * pad);
  const lines = series.map((s, i) => {
    const pts = s.points.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" ");
    return `<polyline fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="2"
      points="${pts}"/>`;
  });
  const legend = series.map((s, i) => {
    const last = s.points.length ? s.points[s.points.length - 1][1] : null;
    return `<span style="color:${COLORS[i % COLORS.length]}">■</span> ${esc(s.name)}
      ${fmt(last, unit === "%" ? 0 : 1)}${unit}`;
  });
  return `<div class="chart"><div class="k">${esc(title)} (last ${HISTORY_S / 60} min,
    max ${fmt(top / 1.1, 1)}${unit})</div>
    <svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none">${lines.join("")}</svg>
    <div class="legend">${legend.join(" &nbsp; ")}</div></div>`;
}

function seriesPerReplica(value) {
  const ids = [...new Set(S.history.flatMap((h) => h.replicas.map((r) => r.id)))].sort();
  return ids.map((id) => ({
    name: id,
    points: S.history.flatMap((h) => {
      const r = h.replicas.find((x) => x.id === id);
      return r && r.kv_blocks_total !== undefined ? [[h.t, value(r)]] : [];
    }),
  }));
}

// ---- pages -------------------------------------------------------------------------------------
// mount() draws a page once (forms keep what is typed); update() redraws its live parts.

const PAGES = {
  overview: {
    mount: () => `
      <div id="cards" class="cards"></div>
      <h2>Load</h2><div id="charts" class="charts"></div>
      <h2>Replicas</h2><div id="replicas"></div>
      <div class="row">Scale to <input id="scale-n" type="number" min="0" style="width:80px">
        replicas <button id="scale-go">Scale</button></div>`,
    update: () => {
      const reps = S.snap.replicas;
      const ready = reps.filter((r) => r.state === "ready").length;
      const sum = (k) => reps.reduce((a, r) => a + (r[k] || 0), 0);
      const kvTotal = sum("kv_blocks_total");
      const kv = kvTotal ? 1 - sum("kv_blocks_free") / kvTotal : 0;
      const cards = [
        ["replicas ready", `${ready} / ${reps.length}`],
        ["desired replicas", S.snap.desired_replicas],
        ["dispatch policy", S.snap.policy.name],
        ["running requests", sum("running")],
        ["waiting requests", sum("waiting")],
        ["KV cache used", `${(100 * kv).toFixed(1)}%`],
        ["prompt tokens/s", fmt(reps.reduce((a, r) => a + (ratePerSecond(r.id,
          "prompt_tokens_total") || 0), 0), 0)],
        ["prefix-cache hits", `${(100 * sum("prefix_hit_tokens_total") /
          Math.max(1, sum("prompt_tokens_total"))).toFixed(1)}%`],
        ["migrations (recent)", S.snap.migrations.length],
        ["adapters", S.snap.adapters.length],
      ];
      setHTML("cards", cards.map(([k, v]) =>
        `<div class="card"><div class="v">${esc(v)}</div><div class="k">${esc(k)}</div></div>`
      ).join(""));
      setHTML("charts", [
        chart("Running requests per replica", seriesPerReplica((r) => r.running), ""),
        chart("Waiting requests per replica", seriesPerReplica((r) => r.waiting), ""),
        chart("KV cache used per replica", seriesPerReplica((r) => 100 * kvUsed(r)), "%"),
        chart("Step time per replica", seriesPerReplica((r) => r.step_time_ms), " ms"),
        chart("Prompt tokens/s per replica", rateSeries("prompt_tokens_total"), "/s"),
      ].join(""));
      setHTML("replicas", replicaTable(reps));
    },
    bind: () => {
      on("scale-go", async () => {
        const raw = document.getElementById("scale-n").value.trim();
        const n = Number(raw);
        if (raw === "" || !Number.isInteger(n) || n < 0) {
          toast("replicas: enter a whole number >= 0", true);
          return;
        }
        await act(`Scale the fleet to ${n} replicas?`,
          () => api("POST", "/admin/v1/scale", { replicas: n }),
          (r) => `desired replicas: ${r.desired_replicas}`);
      });
    },
  },

  replica: {
    mount: () => `<div id="detail"></div><h2>Requests</h2><div id="reqs"
      class="muted">loading…</div><h2>Migrations in and out</h2><div id="rmig"></div>`,
    update: () => {
      const r = S.snap.replicas.find((x) => x.id === S.arg);
      if (!r) {
        setHTML("detail", `<p class="bad">No replica ${esc(S.arg)}.</p>`);
        return;
      }
      setHTML("detail", `
        <div class="cards">
          <div class="card"><div class="v">${stateBadge(r.state)}</div>
            <div class="k">${esc(r.id)} on node ${esc((r.node || "?").slice(0, 12))} (pid ${esc(r.pid)})</div></div>
          <div class="card"><div class="v">${r.running} / ${r.waiting}</div>
            <div class="k">running / waiting</div></div>
          <div class="card"><div class="v">${(100 * kvUsed(r)).toFixed(1)}%</div>
            <div class="k">KV used of ${r.kv_blocks_total} blocks</div></div>
          <div class="card"><div class="v">${fmt(r.step_time_ms)} ms</div>
            <div class="k">step time</div></div>
          <div class="card"><div class="v">${(r.adapters_resident || []).length}
            / ${(r.adapters_loaded || []).length}</div>
            <div class="k">adapters on device / served:
            ${esc((r.adapters_resident || []).join(", ") || "none")}</div></div>
        </div>
        <div class="row">${replicaActions(r)}</div>`);
      const mine = S.snap.migrations.filter(
        (m) => m.source_replica === r.id || m.target_replica === r.id);
      setHTML("rmig", migrationTable(mine));
      refreshRequests();
    },
  },

  migrations: {
    mount: () => `<h2>Migrations, newest first</h2><div id="migs"></div>`,
    update: () => setHTML("migs", migrationTable(S.snap.migrations)),
  },

  adapters: {
    mount: () => `
      <h2>LoRA adapters</h2><div id="ads"></div>
      <h2>Load an adapter on every replica</h2>
      <div class="row"><input id="ad-name" placeholder="name"><input id="ad-path"
        placeholder="PEFT directory (inside adapters.allowed_dirs)" style="width:420px">
        <button id="ad-load">Load</button></div>`,
    update: () => {
      const ids = S.snap.replicas.map((r) => r.id).sort();
      const rows = S.snap.adapters.map((a) => `<tr><td>${esc(a.name)}</td>
        <td class="num">${fmt(a.requests_per_s, 2)}</td>
        ${ids.map((id) => `<td>${a.resident_on.includes(id) ? "<b class='ok'>GPU</b>"
          : a.loaded_on.includes(id) ? "host" : "disk"}</td>`).join("")}
        <td class="muted">${esc(a.path)}</td>
        <td><button class="danger" data-unload="${esc(a.name)}">Unload</button></td></tr>`);
      setHTML("ads", S.snap.adapters.length ? `<table><tr><th>adapter</th><th>req/s</th>
        ${ids.map((id) => `<th>${esc(id)}</th>`).join("")}<th>path</th><th></th></tr>
        ${rows.join("")}</table>` : `<p class="muted">No adapters are loaded.</p>`);
    },
    bind: () => {
      on("ad-load", async () => {
        const name = document.getElementById("ad-name").value.trim();
        const path = document.getElementById("ad-path").value.trim();
        await act(`Load adapter ${name} from ${path} on every replica?`,
          () => api("POST", "/admin/v1/adapters", { lora_name: name, lora_path: path }),
          (r) => `loaded ${r.adapter} (rank ${r.rank}) on ${JSON.stringify(r.replicas)}`);
      });
    },
  },

  policy: {
    mount: () => `
      <h2>The running deployment file</h2>
      <p class="muted">Edit and apply: it is validated first, and an invalid file changes
        nothing. Fields that cannot change while running are refused by name.</p>
      <textarea id="yaml" spellcheck="false"></textarea>
      <div class="row"><button id="yaml-apply">Validate and apply</button>
        <button id="yaml-reload">Reload</button></div>
      <ul id="yaml-errors" class="errors"></ul>`,
    update: () => {},
    bind: () => {
      const load = async () => {
        document.getElementById("yaml").value = (await api("GET", "/admin/v1/config")).yaml;
        setHTML("yaml-errors", "");
      };
      load().catch((err) => toast(err.message, true));
      on("yaml-reload", load);
      on("yaml-apply", async () => {
        if (!window.confirm("Apply this deployment file to the running fleet?")) return;
        try {
          const r = await api("POST", "/admin/v1/config",
            { yaml: document.getElementById("yaml").value });
          setHTML("yaml-errors", "");
          toast(r.message || "applied");
        } catch (err) {
          const issues = (err.data && err.data.error && err.data.error.issues) || [];
          setHTML("yaml-errors", issues.length
            ? issues.map((i) => `<li><b>${esc(i.key)}</b>: ${esc(i.reason)}</li>`).join("")
            : `<li>${esc(err.message)}</li>`);
          toast("not applied: the file has errors", true);
        }
      });
    },
  },

  events: {
    mount: () => `<h2>Controller events, newest first</h2><div id="evs"></div>`,
    update: () => {
      const rows = S.events.slice().reverse().slice(0, 300).map((e) => `<tr>
        <td>${new Date(e.time * 1000).toLocaleTimeString()}</td><td>${esc(e.kind)}</td>
        <td>${e.replica ? replicaLink(e.replica) : ""}</td>
        <td class="${e.ok === false ? "bad" : ""}" style="white-space:normal">${esc(e.message)}</td>
        </tr>`);
      setHTML("evs", `<table><tr><th>time</th><th>kind</th><th>replica</th><th>message</th></tr>
        ${rows.join("")}</table>`);
    },
  },
};

function replicaActions(r) {
  const cordoned = r.cordoned_by_operator || r.draining;
  return `${cordoned
    ? `<button data-act="uncordon" data-id="${esc(r.id)}">Uncordon</button>`
    : `<button data-act="cordon" data-id="${esc(r.id)}">Cordon</button>`}
    <button class="danger" data-act="drain" data-id="${esc(r.id)}">Drain</button>`;
}

function replicaTable(reps) {
  const rows = reps.map((r) => `<tr data-replica="${esc(r.id)}">
    <td>${replicaLink(r.id)}</td><td>${stateBadge(r.state)}</td><td title="${esc(r.node)}">${esc((r.node || "").slice(0, 12))}</td>
    <td>${bar(kvUsed(r))} ${(100 * kvUsed(r)).toFixed(0)}%</td>
    <td class="num">${r.running ?? "–"}</td><td class="num">${r.waiting ?? "–"}</td>
    <td class="num">${fmt(r.step_time_ms)}</td><td class="num">${fmt(stepsPerSecond(r.id))}</td>
    <td class="num">${(r.adapters_resident || []).length}/${(r.adapters_loaded || []).length}</td>
    <td>${replicaActions(r)}</td></tr>`);
  return `<table><tr><th>replica</th><th>state</th><th>node</th><th>KV cache</th>
    <th>running</th><th>waiting</th><th>step ms</th><th>steps/s</th><th>LoRA dev/host</th>
    <th>actions</th></tr>${rows.join("")}</table>`;
}

function migrationTable(migs) {
  if (!migs.length) return `<p class="muted">No migrations yet.</p>`;
  const rows = migs.slice().reverse().map((m) => `<tr>
    <td>${esc(m.migration_id)}</td><td>${esc(m.request_id)}</td>
    <td>${replicaLink(m.source_replica)} → ${replicaLink(m.target_replica)}</td>
    <td class="${m.outcome === "committed" ? "ok" : "bad"}">${esc(m.outcome)}</td>
    <td class="num">${m.stages}</td><td class="num">${(m.bytes / 1048576).toFixed(1)} MiB</td>
    <td class="num">${fmt(m.downtime_ms)} ms</td><td class="num">${fmt(m.duration_ms)} ms</td>
    <td style="white-space:normal">${esc(m.reason)}</td></tr>`);
  return `<table><tr><th>migration</th><th>request</th><th>source → target</th><th>outcome</th>
    <th>stages</th><th>moved</th><th>downtime</th><th>duration</th><th>reason</th></tr>
    ${rows.join("")}</table>`;
}

// The replica page's request list: asked of the replicas (a command), so at most every 2 s.
let lastRequests = 0;
async function refreshRequests() {
  if (Date.now() - lastRequests < 2000) return;
  lastRequests = Date.now();
  try {
    const all = (await api("GET", "/admin/v1/requests")).requests;
    const mine = all.filter((q) => q.replica === S.arg);
    const others = S.snap.replicas.filter((r) => r.id !== S.arg && r.state === "ready");
    const options = others.map((r) => `<option>${esc(r.id)}</option>`).join("");
    const rows = mine.map((q) => `<tr><td>${esc(q.id)}</td><td>${esc(q.state)}</td>
      <td>${esc(q.adapter || "base")}</td><td class="num">${q.prompt_tokens}</td>
      <td class="num">${q.output_tokens}</td><td class="num">${fmt(q.age_s)} s</td>
      <td><select data-target-for="${esc(q.id)}">${options}</select>
      <button data-migrate="${esc(q.id)}" ${others.length ? "" : "disabled"}>Migrate</button>
      </td></tr>`);
    setHTML("reqs", mine.length ? `<table><tr><th>request</th><th>state</th><th>model</th>
      <th>prompt</th><th>output</th><th>age</th><th>move to</th></tr>${rows.join("")}</table>`
      : `<p class="muted">No running or waiting requests.</p>`);
  } catch (err) {
    setHTML("reqs", `<p class="bad">${esc(err.message)}</p>`);
  }
}

// ---- wiring ------------------------------------------------------------------------------------

function setHTML(id, html) {
  const el = document.getElementById(id);
  if (el) el.innerHTML = html;
}

function on(id, handler) {
  const el = document.getElementById(id);
  if (el) el.addEventListener("click", handler);
}

// Buttons inside redrawn tables: one delegated listener.
document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("button");
  if (!b) return;
  if (b.dataset.act) {
    const { act: verb, id } = b.dataset;
    const what = { cordon: "take no new requests", uncordon: "take requests again",
      drain: "move its requests away by live migration" }[verb];
    await act(`${verb} ${id}: ${what}?`,
      () => api("POST", `/admin/v1/replicas/${encodeURIComponent(id)}/${verb}`),
      (r) => `${id} is ${r.replica.state}` + (r.command.ok ? "" : ` (${r.command.error})`));
  } else if (b.dataset.unload) {
    const name = b.dataset.unload;
    await act(`Unload adapter ${name}? Requests in flight finish first.`,
      () => api("DELETE", `/admin/v1/adapters/${encodeURIComponent(name)}`),
      () => `unloaded ${name}`);
  } else if (b.dataset.migrate) {
    const rid = b.dataset.migrate;
    const target = document.querySelector(`select[data-target-for="${CSS.escape(rid)}"]`).value;
    await act(`Migrate request ${rid} to ${target}?`,
      () => api("POST", "/admin/v1/migrate", { request_id: rid, target_replica: target }),
      (m) => `migration ${m.outcome}: ${m.stages} stages, downtime ${fmt(m.downtime_ms)} ms`);
  }
});

function route() {
  const [page, arg] = (location.hash.replace(/^#\//, "") || "overview").split("/");
  S.page = PAGES[page] ? page : "overview";
  S.arg = decodeURIComponent(arg || "");
  document.querySelectorAll("nav a").forEach((a) =>
    a.classList.toggle("active", a.dataset.page === S.page));
  const p = PAGES[S.page];
  document.getElementById("view").innerHTML = p.mount();
  if (p.bind) p.bind();
  lastRequests = 0;
  update();
}

function update() {
  if (S.snap) PAGES[S.page].update();
}

window.addEventListener("hashchange", route);
route();
connect();
