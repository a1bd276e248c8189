// Admin dashboard behaviour: confirmations, live runs list, live run page (charts, log).
// Builds DOM with rlhf.el / textContent only; data comes from the JSON API.
"use strict";
window.adminPages = (function () {
  const { api, el } = window.rlhf;
  const POLL_MS = 3000;

  function pct(x) { return `${Math.round((x || 0) * 100)}%`; }
  function when(iso) {
    if (!iso) return el("span", { class: "muted" }, "—");
    const d = new Date(iso);
    const text = d.toISOString().slice(0, 16).replace("T", " ");
    return el("time", { datetime: iso, title: d.toISOString() }, text);
  }
  function badge(text) { return el("span", { class: `badge ${text}` }, text); }
  function bar(fraction, label) {
    const w = Math.max(0, Math.min(100, (fraction || 0) * 100));
    return el("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
                       "aria-valuenow": Math.round(w), "aria-label": label }, el("span", { style: `width: ${w}%` }));
  }
  function json(id) {
    const node = document.getElementById(id);
    try { return node ? JSON.parse(node.textContent) : {}; } catch (e) { return {}; }
  }

  // Poll `fn` every POLL_MS while it returns true (and the tab is visible).
  function poll(fn) {
    let timer = null;
    async function tick() {
      let again = true;
      if (document.visibilityState !== "hidden") {
        try { again = await fn(); } catch (e) { again = true; }
      }
      if (again) timer = setTimeout(tick, POLL_MS);
    }
    timer = setTimeout(tick, POLL_MS);
    return () => clearTimeout(timer);
  }

  function confirmations() {
    for (const form of document.querySelectorAll("form[data-confirm]")) {
      form.addEventListener("submit", ev => {
        if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
      });
    }
  }

  // ------------------------------------------------------------ runs list
  function runsList() {
    const table = document.getElementById("runs-table");
    if (!table) return;
    const sets = json("set-names");
    const versions = json("policy-versions");
    const note = document.getElementById("live-note");
    poll(async () => {
      const { data } = await api("GET", "/api/v1/training/runs?limit=50");
      const body = el("tbody", {}, data.map(r => el("tr", { "data-run": r.id },
        el("td", {}, el("a", { href: `/admin/runs/${r.id}` }, `#${r.id}`)),
        el("td", {}, badge(r.status), r.cancel_requested && r.status === "running" ? el("span", { class: "hint" }, " cancelling") : null),
        el("td", {}, r.stage || "—"),
        el("td", {}, el("div", { class: "bar-label" }, el("span"), el("span", {}, pct(r.progress))), bar(r.progress, `run ${r.id}`)),
        el("td", {}, r.prompt_set_ids.map(id => sets[id] || String(id)).join(", ")),
        el("td", {}, r.stages.join(", "), r.deploy ? [" ", el("span", { class: "badge" }, "deploy")] : null),
        el("td", {}, r.policy_id ? `v${versions[r.policy_id] ?? "?"}` : "—"),
        el("td", {}, when(r.created_at)),
        el("td", {}, when(r.finished_at)),
      )));
      if (!data.length) body.append(el("tr", {}, el("td", { colspan: 9, class: "muted" }, "No runs yet: start one below.")));
      table.tBodies[0].replaceWith(body);
      if (note) note.textContent = `updated ${new Date().toLocaleTimeString()}`;
      return true;
    });
  }

  // ------------------------------------------------------------ one run
  const PANELS = [
    { title: "SFT loss", keys: ["sft/loss"] },
    { title: "Reward model loss", keys: ["rm/loss", "rm/val_loss"] },
    { title: "Reward model accuracy (held-out)", keys: ["rm/accuracy", "rm/val_accuracy"], percent: true },
    { title: "PPO reward", keys: ["ppo/reward", "ppo/score"] },
    { title: "PPO KL to the SFT policy", keys: ["ppo/kl"] },
    { title: "PPO entropy", keys: ["ppo/entropy"] },
  ];

  function drawCharts(container, series) {
    const used = new Set();
    const cells = [];
    for (const panel of PANELS) {
      const present = panel.keys.filter(k => series[k] && series[k].length);
      present.forEach(k => used.add(k));
      cells.push({ title: panel.title, percent: panel.percent,
                   series: present.map(k => ({ label: k, points: series[k] })),
                   emptyText: `no ${panel.keys[0]} yet` });
    }
    for (const key of Object.keys(series).sort()) {
      if (!used.has(key)) cells.push({ title: key, series: [{ label: key, points: series[key] }],
                                       percent: /accuracy|win_rate|clipfrac/.test(key) });
    }
    container.replaceChildren();
    for (const cell of cells) {
      const slot = el("div");
      container.append(slot);
      window.rlhfCharts.line(slot, cell);
    }
  }

  function runDetail() {
    const head = document.getElementById("run");
    if (!head) return;
    const id = head.dataset.run;
    const charts = document.getElementById("charts");
    const logs = document.getElementById("run-logs");
    let finished = head.dataset.finished === "true";
    let lastLog = Number(logs.dataset.last || 0);

    async function refresh() {
      const [run, metrics, lines] = await Promise.all([
        api("GET", `/api/v1/training/runs/${id}`),
        api("GET", `/api/v1/training/runs/${id}/metrics`),
        api("GET", `/api/v1/training/runs/${id}/logs?after_id=${lastLog}&limit=500`),
      ]);
      const r = run.data;
      document.getElementById("run-status").replaceChildren(badge(r.status));
      document.getElementById("run-stage").textContent = r.stage || "—";
      document.getElementById("run-progress-label").textContent = pct(r.progress);
      document.getElementById("run-progress").replaceChildren(bar(r.progress, "run progress"));
      document.getElementById("run-progress").firstChild.classList.add("big");
      const err = document.getElementById("run-error");
      err.hidden = !r.error;
      document.getElementById("run-error-text").textContent = r.error || "";
      document.getElementById("run-finished").replaceChildren(when(r.finished_at));
      if (r.metrics && Object.keys(r.metrics).length) {
        document.getElementById("run-metrics").replaceChildren(el("pre", {}, JSON.stringify(r.metrics, null, 2)));
      }
      if (r.snapshot && Object.keys(r.snapshot).length) {
        const dl = el("dl", { class: "props" });
        for (const k of Object.keys(r.snapshot).sort()) {
          const v = r.snapshot[k];
          dl.append(el("dt", {}, k), el("dd", {}, typeof v === "object" && v !== null ? el("code", {}, JSON.stringify(v)) : String(v)));
        }
        document.getElementById("run-snapshot").replaceChildren(dl);
      }
      drawCharts(charts, metrics.data.series || {});
      if (lines.data.length) {
        if (lastLog === 0) logs.replaceChildren();
        for (const l of lines.data) {
          logs.append(el("div", { class: l.level }, `${new Date(l.created_at).toISOString().slice(11, 19)} ${l.message}`));
          lastLog = l.id;
        }
        logs.scrollTop = logs.scrollHeight;
      }
      const cancel = document.getElementById("cancel-run");
      if (["succeeded", "failed", "cancelled"].includes(r.status)) {
        if (cancel) cancel.closest("form").remove();
        return false;
      }
      if (cancel && r.cancel_requested) { cancel.disabled = true; cancel.textContent = "Cancelling…"; }
      return true;
    }

    refresh().then(again => {
      finished = finished || !again;
      if (!finished) poll(refresh);
    }).catch(() => poll(refresh));
  }

  // Selects that submit their form on change (no inline handlers: the CSP forbids them).
  function autosubmit() {
    for (const select of document.querySelectorAll("select[data-autosubmit]")) {
      select.addEventListener("change", () => select.form.submit());
    }
  }

  function init() {
    confirmations();
    autosubmit();
    runsList();
    runDetail();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();

  return { runsList, runDetail, drawCharts };
})();
