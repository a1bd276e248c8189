// The labeler's work pages: ranking K completions and writing demonstrations.
// Talks to the JSON API through rlhf.api; builds every node with rlhf.el / textContent,
// never innerHTML, so prompt and completion text is always shown as text.
"use strict";
(function () {
  const { api, el } = window.rlhf;
  const app = document.getElementById("label-app");
  const area = document.getElementById("task-area");
  if (!app || !area) return;
  const cfg = JSON.parse(document.getElementById("label-config").textContent);
  const MODE = cfg.mode; // "rank" | "demonstrate"
  const leaseEl = document.getElementById("lease");
  const toastEl = document.getElementById("toast");
  const sessionEl = document.getElementById("session-count");
  const reduceMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;

  // --- state -----------------------------------------------------------------------------
  let task = null;          // the task shown (TaskOut)
  let skewMs = 0;           // server clock minus client clock
  let startedAt = 0;        // when the task was shown (for time spent)
  let timeSpent = null;     // fixed at the first submit attempt, reused on retries
  let submitting = false;
  let lastActivity = Date.now();
  let lastRenew = 0;
  let renewing = false;
  let pollTimer = null;
  let undoTimer = null;
  let drag = null;
  const serverNow = () => Date.now() + skewMs;

  // --- small helpers ---------------------------------------------------------------------
  const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
  const fmtClock = (ms) => {
    const s = Math.max(0, Math.round(ms / 1000));
    const m = Math.floor(s / 60);
    return `${m}:${String(s % 60).padStart(2, "0")}`;
  };
  const fmtTime = (iso) => new Date(Date.parse(iso) - skewMs).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const isTyping = (t) => t && (t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
    (t.tagName === "INPUT" && !["checkbox", "radio", "button"].includes(t.type)) || t.isContentEditable);
  const store = window.sessionStorage;
  const draftKey = (id) => `rlhf.draft.${id}`;
  const countKey = `rlhf.done.${cfg.promptSetId}.${MODE}`;

  function updateSessionCount(add) {
    const n = Number(store.getItem(countKey) || 0) + (add || 0);
    store.setItem(countKey, String(n));
    sessionEl.textContent = n ? `${n} done this session` : "";
  }

  // Text with paragraphs, line breaks, ``` fenced code blocks and `inline code`, as DOM nodes.
  function renderText(text) {
    const box = el("div", { class: "rich" });
    const fence = /```([^\n`]*)\n?([\s\S]*?)(?:\n?```|$)/g;
    let last = 0;
    let m;
    const prose = (chunk) => {
      for (const para of chunk.split(/\n{2,}/)) {
        if (!para.trim()) continue;
        const p = el("p");
        para.split(/(`[^`\n]+`)/).forEach((part) => {
          if (part.length > 2 && part.startsWith("`") && part.endsWith("`")) p.append(el("code", {}, part.slice(1, -1)));
          else if (part) p.append(document.createTextNode(part));
        });
        box.append(p);
      }
    };
    while ((m = fence.exec(text)) !== null) {
      if (m.index === fence.lastIndex) { fence.lastIndex++; continue; }
      prose(text.slice(last, m.index));
      const code = el("code", m[1].trim() ? { "data-lang": m[1].trim() } : {}, m[2]);
      box.append(el("pre", { class: "code" }, code));
      last = fence.lastIndex;
    }
    prose(text.slice(last));
    if (!box.childNodes.length) box.append(el("p", { class: "muted" }, "(empty)"));
    return box;
  }

  function promptCard(t) {
    const card = el("article", { class: "prompt-card card", "aria-label": "Prompt" });
    const msgs = t.messages || [];
    let lastUser = -1;
    msgs.forEach((m, i) => { if (m.role === "user") lastUser = i; });
    const earlier = lastUser > 0 ? msgs.slice(0, lastUser) : [];
    if (earlier.length) {
      const turns = el("div", { class: "turns" }, el("div", { class: "turns-title muted" }, "Earlier in the conversation"));
      for (const m of earlier) {
        turns.append(el("div", { class: `turn role-${m.role}` }, el("span", { class: "role" }, m.role), renderText(m.content)));
      }
      card.append(turns);
    }
    card.append(el("div", { class: "prompt-label muted" }, earlier.length ? "User's last message" : "Prompt"));
    card.append(el("div", { class: "prompt-text" }, renderText(t.prompt)));
    return card;
  }

  // --- errors and toasts -----------------------------------------------------------------
  function errorBox() { return area.querySelector(".submit-error"); }

  function showError(err) {
    const box = errorBox();
    if (!box) return;
    box.replaceChildren();
    if (!err) { box.hidden = true; return; }
    box.hidden = false;
    let msg = err.message || String(err);
    if (err.status === 401) msg = "Your session has ended. Log in again in another tab, then submit again; your answer is kept here.";
    box.append(el("span", {}, msg));
    if (err.status === 401) box.append(" ", el("a", { href: `/login?next=${encodeURIComponent(location.pathname)}`, target: "_blank", rel: "noopener" }, "Log in"));
    if (err.status === 409 && /new task/.test(msg)) {
      box.append(" ", el("button", { type: "button", class: "link-button", onclick: () => loadNext() }, "Get a new task"));
    }
  }

  function toast(children, ms) {
    toastEl.replaceChildren(...children);
    toastEl.hidden = false;
    clearTimeout(toastEl._t);
    if (ms) toastEl._t = setTimeout(() => { toastEl.hidden = true; }, ms);
  }

  function offerUndo(taskId, untilIso, kindLabel) {
    clearInterval(undoTimer);
    const until = Date.parse(untilIso);
    const left = el("span", { class: "undo-left" });
    const btn = el("button", { type: "button", class: "undo-btn", onclick: () => undo(taskId) }, "Undo");
    const tick = () => {
      const ms = until - serverNow();
      if (ms <= 0) { clearInterval(undoTimer); toastEl.hidden = true; return; }
      left.textContent = fmtClock(ms);
    };
    toast([el("span", {}, `${kindLabel} submitted.`), btn, left]);
    tick();
    undoTimer = setInterval(tick, 1000);
  }

  async function undo(taskId) {
    clearInterval(undoTimer);
    toastEl.hidden = true;
    saveDraft();
    try {
      const res = await api("POST", `/api/v1/tasks/${taskId}/undo`);
      updateSessionCount(-1);
      showTask(res.data, res.data.previous);
      toast([el("span", {}, "Taken back. Change your answer and submit again.")], 4000);
    } catch (err) {
      toast([el("span", { class: "error" }, `Undo failed: ${err.message}`)], 6000);
    }
  }

  // --- lease countdown and renewal -------------------------------------------------------
  function tickLease() {
    if (!task) { leaseEl.hidden = true; return; }
    const ms = Date.parse(task.lease_expires_at) - serverNow();
    leaseEl.hidden = false;
    leaseEl.classList.toggle("warn", ms > 0 && ms < 5 * 60 * 1000);
    leaseEl.classList.toggle("expired", ms <= 0);
    leaseEl.textContent = ms > 0 ? `Lease ${fmtClock(ms)}` : "Lease expired";
    const half = (cfg.leaseMinutes * 60 * 1000) / 2;
    const active = Date.now() - lastActivity < 10 * 60 * 1000 && lastActivity > lastRenew;
    if (!renewing && !task.leaseLost && active && ms < half && Date.now() - lastRenew > 30 * 1000) renew();
  }

  async function renew() {
    if (!task) return;
    renewing = true;
    lastRenew = Date.now();
    const id = task.id;
    try {
      const res = await api("POST", `/api/v1/tasks/${id}/renew`);
      if (task && task.id === id) {
        task.lease_expires_at = res.data.lease_expires_at;
        skewMs = Date.parse(res.data.server_time) - Date.now();
      }
    } catch (err) {
      if (task && task.id === id) {
        if (err.status === 409 || err.status === 403 || err.status === 404) task.leaseLost = true;
        showError(err);
      }
    } finally {
      renewing = false;
      tickLease();
    }
  }

  ["keydown", "pointerdown", "input", "wheel"].forEach((ev) =>
    document.addEventListener(ev, () => { lastActivity = Date.now(); }, { passive: true, capture: true }));

  // --- drafts: what the labeler entered survives a reload ---------------------------------
  function saveDraft() {
    if (!task) return;
    try { store.setItem(draftKey(task.id), JSON.stringify(MODE === "rank" ? rankState() : { text: demoText().value })); } catch (_) { /* full */ }
  }
  function loadDraft(id) {
    try { return JSON.parse(store.getItem(draftKey(id)) || "null"); } catch (_) { return null; }
  }
  const clearDraft = (id) => store.removeItem(draftKey(id));

  // --- loading tasks ---------------------------------------------------------------------
  async function loadNext() {
    stopPolling();
    area.setAttribute("aria-busy", "true");
    try {
      const res = await api("POST", "/api/v1/tasks/next", { prompt_set_id: cfg.promptSetId, kind: MODE });
      if (res.status === 204) { await showEmpty(); return; }
      showTask(res.data, null);
    } catch (err) {
      task = null;
      list = null;
      tickLease();
      area.replaceChildren(el("section", { class: "card empty-state" },
        el("h2", {}, "Could not load a task"),
        el("p", { class: "error", role: "alert" }, err.message),
        el("button", { type: "button", onclick: () => loadNext() }, "Try again")));
    } finally {
      area.setAttribute("aria-busy", "false");
      submitting = false;
      area.classList.remove("busy");
    }
  }

  function showTask(t, previous) {
    task = t;
    skewMs = Date.parse(t.server_time) - Date.now();
    startedAt = Date.now();
    timeSpent = null;
    submitting = false;
    lastRenew = Date.now();
    const restore = previous && Object.keys(previous).length ? previous : null;
    if (MODE === "rank") renderRank(t, restore ? fromPrevious(restore) : loadDraft(t.id));
    else renderDemo(t, restore ? { text: restore.text } : loadDraft(t.id));
    tickLease();
    window.scrollTo({ top: 0 });
  }

  async function showEmpty() {
    task = null;
    list = null;
    tickLease();
    let p = null;
    try { p = (await api("GET", `/api/v1/tasks/progress?prompt_set_id=${cfg.promptSetId}`)).data; } catch (_) { /* shown below */ }
    const lines = [];
    if (p && p.status !== "active") {
      lines.push(`This set is ${p.status}. Come back when an admin opens it again.`);
    } else if (p) {
      const left = MODE === "rank" ? p.rank_left : p.demonstrate_left;
      if (MODE === "rank" && p.waiting_for_completions) {
        lines.push(`${p.waiting_for_completions} prompt${p.waiting_for_completions === 1 ? " is" : "s are"} waiting for the sampler to produce completions. New work usually appears within a few minutes.`);
      }
      if (p.next_lease_expiry && !left) {
        lines.push(`Other labelers are working on the rest. If one of their leases runs out, a prompt opens up again around ${fmtTime(p.next_lease_expiry)}.`);
      }
      if (!lines.length) {
        const done = MODE === "rank" ? p.ranked : p.demonstrated;
        lines.push(`You have done everything there is in this set for now (${done} ${MODE === "rank" ? "ranking" : "demonstration"}${done === 1 ? "" : "s"}). Thank you! New prompts may be added later.`);
      }
    }
    const checkBtn = el("button", { type: "button", class: "primary", onclick: () => loadNext() }, "Check now");
    area.replaceChildren(el("section", { class: "card empty-state", id: "empty-state" },
      el("h2", {}, "Nothing left for you here right now"),
      ...lines.map((l) => el("p", {}, l)),
      el("p", { class: "muted" }, "This page checks again every minute and picks up new work by itself."),
      el("div", { class: "actions" }, checkBtn, el("a", { class: "button", href: "/label" }, "Other sets"))));
    startPolling();
  }

  function startPolling() {
    stopPolling();
    pollTimer = setInterval(async () => {
      if (document.visibilityState !== "visible") return;
      try {
        const p = (await api("GET", `/api/v1/tasks/progress?prompt_set_id=${cfg.promptSetId}`)).data;
        const left = MODE === "rank" ? p.rank_left + p.holding : p.demonstrate_left + p.holding;
        if (left > 0) loadNext();
      } catch (_) { /* try again next minute */ }
    }, 60 * 1000);
  }
  function stopPolling() { clearInterval(pollTimer); pollTimer = null; }

  // --- the shared bottom: error, submit, skip ---------------------------------------------
  function actionArea(submitLabel, onSubmit) {
    const reasonSel = el("select", { class: "skip-reason", "aria-label": "Why skip?" },
      el("option", { value: "" }, "Why skip? (optional)"),
      ...cfg.skipReasons.map((r) => el("option", { value: r }, r)),
      el("option", { value: "__other" }, "Other…"));
    const reasonText = el("input", { class: "skip-other", type: "text", maxlength: "1000", placeholder: "Say why (optional)", hidden: true });
    reasonSel.addEventListener("change", () => { reasonText.hidden = reasonSel.value !== "__other"; if (!reasonText.hidden) reasonText.focus(); });
    const skipBox = el("div", { class: "skip-box", hidden: true },
      reasonSel, reasonText,
      el("button", { type: "button", class: "danger", onclick: () => doSkip(reasonSel.value === "__other" ? reasonText.value : reasonSel.value) }, "Skip this task"),
      el("button", { type: "button", class: "link-button", onclick: () => { skipBox.hidden = true; } }, "Cancel"));
    const submitBtn = el("button", { type: "button", class: "primary submit-btn", onclick: onSubmit }, submitLabel, el("kbd", { class: "hint-key" }, "Ctrl+Enter"));
    return el("div", { class: "actions-area" },
      el("div", { class: "submit-error error", role: "alert", hidden: true }),
      el("div", { class: "actions" }, submitBtn,
        el("button", { type: "button", class: "skip-btn", onclick: () => { skipBox.hidden = !skipBox.hidden; if (!skipBox.hidden) reasonSel.focus(); } }, "Skip…")),
      skipBox);
  }

  function setBusy(busy) {
    submitting = busy;
    area.querySelectorAll(".submit-btn, .skip-box button.danger").forEach((b) => { b.disabled = busy; });
    area.classList.toggle("busy", busy);
  }

  async function doSkip(reason) {
    if (!task || submitting) return;
    setBusy(true);
    showError(null);
    try {
      await api("POST", `/api/v1/tasks/${task.id}/skip`, { reason: reason || null });
      clearDraft(task.id);
      toast([el("span", {}, "Skipped. You won't see that prompt again.")], 3000);
      await loadNext();
    } catch (err) {
      setBusy(false);
      showError(err);
    }
  }

  // =======================================================================================
  // Ranking
  // =======================================================================================
  let list = null;
  const cards = () => (list ? Array.from(list.children) : []);

  function renderRank(t, draft) {
    list = el("ol", { class: "cards", id: "cards", "aria-label": "Completions, best first" });
    t.completions.forEach((c, i) => list.append(completionCard(c, LETTERS[i] || String(i + 1))));
    const allBad = el("input", { type: "checkbox", id: "all-unacceptable" });
    const comment = el("textarea", { id: "comment", rows: "2", maxlength: "5000", placeholder: "Anything the team should know about this task? (optional)" });
    area.replaceChildren(
      promptCard(t),
      el("p", { class: "rank-hint muted" }, `Put the best completion on top. Drag a card, use its arrows, or focus it and press 1–${Math.min(t.completions.length, 9)}. Press ? for all keys.`),
      list,
      el("div", { class: "card rank-extras" },
        el("label", { class: "all-bad", for: "all-unacceptable" }, allBad, " All of them are unacceptable"),
        el("label", { class: "comment-label", for: "comment" }, "Comment"),
        comment),
      actionArea("Submit ranking", submitRanking));
    allBad.addEventListener("change", saveDraft);
    comment.addEventListener("input", saveDraft);
    if (draft) applyRankState(draft);
    refresh(false);
    requestAnimationFrame(() => {
      list.querySelectorAll(".comp-text").forEach(measureCollapse);
      const first = cards()[0];
      if (first) first.focus({ preventScroll: true });
    });
  }

  function completionCard(c, letter) {
    const likert = el("div", { class: "likert", role: "group", "aria-label": `Quality of ${letter}, 1 worst to 7 best` },
      el("span", { class: "likert-label muted" }, "Quality"));
    for (let n = 1; n <= 7; n++) {
      likert.append(el("button", { type: "button", class: "likert-btn", "data-value": String(n), "aria-pressed": "false", title: n === 1 ? "1 · very bad" : n === 7 ? "7 · excellent" : String(n) }, String(n)));
    }
    const flags = el("div", { class: "flags", role: "group", "aria-label": `Flags for ${letter}` },
      ...cfg.flags.map((f) => el("label", { class: "flag", title: f.label },
        el("input", { type: "checkbox", name: f.name, "aria-label": f.label }), el("span", {}, f.short))));
    const text = el("div", { class: "comp-text collapsed" }, renderText(c.text));
    const expand = el("button", { type: "button", class: "expand-btn link-button", hidden: true }, "Show all");
    const card = el("li", { class: "comp-card", tabindex: "0", "data-id": String(c.id), "data-letter": letter },
      el("div", { class: "card-head" },
        el("span", { class: "drag-handle", title: "Drag to reorder", "aria-hidden": "true" }, "⠿"),
        el("span", { class: "rank-badge", "aria-hidden": "true" }),
        el("span", { class: "rank-word muted" }),
        el("span", { class: "letter" }, letter),
        el("span", { class: "spacer" }),
        el("button", { type: "button", class: "tie-btn", "aria-pressed": "false", title: "Tie with the card above (t)" }, "= Tie"),
        el("button", { type: "button", class: "move-btn up", "aria-label": `Move ${letter} up`, title: "Move up (Alt+↑)" }, "↑"),
        el("button", { type: "button", class: "move-btn down", "aria-label": `Move ${letter} down`, title: "Move down (Alt+↓)" }, "↓")),
      text, expand,
      el("div", { class: "card-foot" }, likert, flags));
    expand.addEventListener("click", () => toggleExpand(card));
    card.querySelector(".tie-btn").addEventListener("click", () => toggleTie(card));
    card.querySelector(".move-btn.up").addEventListener("click", () => moveCard(card, cards().indexOf(card) - 1));
    card.querySelector(".move-btn.down").addEventListener("click", () => moveCard(card, cards().indexOf(card) + 1));
    likert.addEventListener("click", (e) => {
      const b = e.target.closest(".likert-btn");
      if (b) setLikert(card, Number(b.dataset.value));
    });
    flags.addEventListener("change", (e) => {
      e.target.closest(".flag").classList.toggle("on", e.target.checked);
      saveDraft();
    });
    return card;
  }

  function measureCollapse(textEl) {
    const card = textEl.closest(".comp-card");
    const btn = card.querySelector(".expand-btn");
    textEl.classList.add("collapsed"); // measure against the collapsed height
    const long = textEl.scrollHeight > textEl.clientHeight + 4;
    btn.hidden = !long;
    textEl.classList.toggle("collapsed", long);
    textEl.classList.toggle("fits", !long);
  }

  function toggleExpand(card) {
    const textEl = card.querySelector(".comp-text");
    const btn = card.querySelector(".expand-btn");
    if (btn.hidden) return;
    const open = textEl.classList.toggle("expanded");
    btn.textContent = open ? "Show less" : "Show all";
    if (!open) card.scrollIntoView({ block: "nearest" });
  }

  function setLikert(card, n) {
    const cur = Number(card.dataset.likert || 0);
    const val = cur === n ? 0 : n; // pressing the chosen value again clears it
    card.dataset.likert = val ? String(val) : "";
    card.querySelectorAll(".likert-btn").forEach((b) => b.setAttribute("aria-pressed", String(Number(b.dataset.value) === val)));
    saveDraft();
  }

  function toggleTie(card) {
    const i = cards().indexOf(card);
    if (i <= 0) return;
    card.dataset.tie = card.dataset.tie === "1" ? "" : "1";
    refresh();
  }

  // Move a card to position ``to`` (0-based) with a short slide of the others.
  function moveCard(card, to, opts) {
    const items = cards();
    const from = items.indexOf(card);
    to = Math.max(0, Math.min(items.length - 1, to));
    if (from === to || from < 0) return;
    const next = items[from + 1];
    if (next && next.dataset.tie === "1" && card.dataset.tie !== "1") next.dataset.tie = ""; // it was tied to the one that left
    card.dataset.tie = "";
    flip(() => {
      const rest = items.filter((c) => c !== card);
      list.insertBefore(card, rest[to] || null);
      const after = cards()[to + 1];
      if (after) after.dataset.tie = "";
    });
    refresh();
    if (!opts || opts.focus !== false) {
      card.focus({ preventScroll: true });
      card.scrollIntoView({ block: "nearest", behavior: reduceMotion ? "auto" : "smooth" });
    }
  }

  function flip(mutate) {
    const before = new Map(cards().map((c) => [c, c.getBoundingClientRect().top]));
    mutate();
    if (reduceMotion) return;
    for (const c of cards()) {
      if (drag && c === drag.card) continue;
      const dy = before.get(c) - c.getBoundingClientRect().top;
      if (!dy) continue;
      c.style.transition = "none";
      c.style.transform = `translateY(${dy}px)`;
      c.getBoundingClientRect(); // apply before animating back
      c.style.transition = "transform 150ms ease-out";
      c.style.transform = "";
    }
  }

  function groups() {
    const out = [];
    for (const c of cards()) {
      const id = Number(c.dataset.id);
      if (c.dataset.tie === "1" && out.length) out[out.length - 1].push(id);
      else out.push([id]);
    }
    return out;
  }

  // Redraw rank badges and button states from the DOM order and the tie marks.
  function refresh(save) {
    const items = cards();
    let g = 0;
    const groupOf = [];
    items.forEach((c, i) => {
      if (i === 0) c.dataset.tie = "";
      if (c.dataset.tie !== "1") g++;
      groupOf.push(g);
    });
    const total = g;
    items.forEach((c, i) => {
      const tied = (i > 0 && groupOf[i - 1] === groupOf[i]) || (i + 1 < items.length && groupOf[i + 1] === groupOf[i]);
      const badge = c.querySelector(".rank-badge");
      badge.textContent = String(groupOf[i]);
      badge.classList.toggle("tied", tied);
      const word = groupOf[i] === 1 ? "Best" : groupOf[i] === total ? "Worst" : "";
      c.querySelector(".rank-word").textContent = tied ? `${word ? word + ", " : ""}tied` : word;
      c.setAttribute("aria-label", `Completion ${c.dataset.letter}, rank ${groupOf[i]} of ${total}${tied ? ", tied" : ""}`);
      const tie = c.querySelector(".tie-btn");
      tie.setAttribute("aria-pressed", String(c.dataset.tie === "1"));
      tie.disabled = i === 0;
      c.classList.toggle("tied-above", c.dataset.tie === "1");
      c.querySelector(".move-btn.up").disabled = i === 0;
      c.querySelector(".move-btn.down").disabled = i === items.length - 1;
    });
    if (save !== false) saveDraft();
  }

  function rankState() {
    const ratings = {};
    for (const c of cards()) {
      const flags = Array.from(c.querySelectorAll(".flags input:checked")).map((i) => i.name);
      const likert = Number(c.dataset.likert || 0) || null;
      if (likert || flags.length) ratings[c.dataset.id] = { likert, flags };
    }
    return {
      ranking: groups(),
      ratings,
      all_unacceptable: area.querySelector("#all-unacceptable").checked,
      comment: area.querySelector("#comment").value,
    };
  }

  function fromPrevious(prev) {
    return { ranking: prev.ranking, ratings: prev.ratings || {}, all_unacceptable: !!prev.all_unacceptable, comment: prev.comment || "" };
  }

  function applyRankState(s) {
    const byId = new Map(cards().map((c) => [Number(c.dataset.id), c]));
    const flat = (s.ranking || []).flat();
    if (flat.length === byId.size && flat.every((id) => byId.has(id))) {
      for (const group of s.ranking) {
        group.forEach((id, j) => {
          const c = byId.get(id);
          c.dataset.tie = j > 0 ? "1" : "";
          list.append(c);
        });
      }
    }
    for (const [id, r] of Object.entries(s.ratings || {})) {
      const c = byId.get(Number(id));
      if (!c) continue;
      if (r.likert) setLikert(c, r.likert);
      for (const f of r.flags || []) {
        const box = c.querySelector(`.flags input[name="${CSS.escape(f)}"]`);
        if (box) { box.checked = true; box.closest(".flag").classList.add("on"); }
      }
    }
    area.querySelector("#all-unacceptable").checked = !!s.all_unacceptable;
    area.querySelector("#comment").value = s.comment || "";
  }

  async function submitRanking() {
    if (!task || submitting || MODE !== "rank") return;
    const t = task;
    const body = rankState();
    if (timeSpent === null) timeSpent = Math.round((Date.now() - startedAt) / 100) / 10;
    body.time_spent_s = timeSpent;
    setBusy(true);
    showError(null);
    try {
      const res = await api("POST", `/api/v1/tasks/${t.id}/ranking`, body);
      clearDraft(t.id);
      updateSessionCount(1);
      offerUndo(t.id, res.data.undo_until, "Ranking");
      await loadNext();
    } catch (err) {
      setBusy(false);
      showError(err);
    }
  }

  // Pointer dragging (mouse anywhere on the card head, touch and pen on the handle).
  function onPointerDown(e) {
    if (MODE !== "rank" || !list || e.button !== 0) return;
    const head = e.target.closest(".card-head");
    if (!head || e.target.closest("button, input, label, a, select, textarea")) return;
    if (e.pointerType !== "mouse" && !e.target.closest(".drag-handle")) return;
    const card = head.closest(".comp-card");
    e.preventDefault();
    drag = { card, id: e.pointerId };
    card.setPointerCapture(e.pointerId);
    card.classList.add("dragging");
    list.classList.add("drag-active");
    card.focus({ preventScroll: true });
  }
  function onPointerMove(e) {
    if (!drag || e.pointerId !== drag.id) return;
    const others = cards().filter((c) => c !== drag.card);
    let to = 0;
    for (const c of others) {
      const r = c.getBoundingClientRect();
      if (e.clientY > r.top + r.height / 2) to++;
    }
    if (to !== cards().indexOf(drag.card)) moveCard(drag.card, to, { focus: false });
    const edge = 60;
    if (e.clientY < edge) window.scrollBy(0, -12);
    else if (e.clientY > window.innerHeight - edge) window.scrollBy(0, 12);
  }
  function onPointerUp(e) {
    if (!drag || e.pointerId !== drag.id) return;
    drag.card.classList.remove("dragging");
    list.classList.remove("drag-active");
    const card = drag.card;
    drag = null;
    refresh();
    card.focus({ preventScroll: true });
  }
  area.addEventListener("pointerdown", onPointerDown);
  area.addEventListener("pointermove", onPointerMove);
  area.addEventListener("pointerup", onPointerUp);
  area.addEventListener("pointercancel", onPointerUp);

  function rankKeys(e) {
    const items = cards();
    if (!items.length) return false;
    const active = document.activeElement;
    const card = active && active.closest ? active.closest(".comp-card") : null;
    const i = card ? items.indexOf(card) : -1;
    const focusAt = (j) => { const c = items[Math.max(0, Math.min(items.length - 1, j))]; c.focus({ preventScroll: true }); c.scrollIntoView({ block: "nearest" }); };
    const k = e.key;
    if ((k === "ArrowDown" || k === "ArrowUp") && (e.altKey || e.shiftKey) && card) {
      moveCard(card, i + (k === "ArrowDown" ? 1 : -1));
      return true;
    }
    if (e.altKey || e.ctrlKey || e.metaKey) return false;
    if (k === "ArrowDown" || k === "j") { focusAt(i < 0 ? 0 : i + 1); return true; }
    if (k === "ArrowUp" || k === "k") { focusAt(i < 0 ? 0 : i - 1); return true; }
    if (!card) {
      if (/^[1-9]$/.test(k) || k === "t" || k === "=" || k === "e") { focusAt(0); return true; }
      return false;
    }
    const digit = /^Digit([1-9])$/.exec(e.code) || /^Numpad([1-9])$/.exec(e.code);
    if (e.shiftKey && digit && Number(digit[1]) <= 7) { setLikert(card, Number(digit[1])); return true; }
    if (!e.shiftKey && /^[1-9]$/.test(k)) {
      const pos = Number(k);
      if (pos <= items.length) moveCard(card, pos - 1);
      return true;
    }
    if (k === "t" || k === "=") { toggleTie(card); card.focus({ preventScroll: true }); return true; }
    if (k === "e") { toggleExpand(card); return true; }
    return false;
  }

  // =======================================================================================
  // Demonstrations
  // =======================================================================================
  const demoText = () => area.querySelector("#demo-text");

  function renderDemo(t, draft) {
    const max = cfg.maxDemonstrationChars;
    const textarea = el("textarea", { id: "demo-text", rows: "12", spellcheck: "true", placeholder: "Write the response you would want an excellent assistant to give." });
    const count = el("span", { class: "char-count", id: "char-count", "aria-live": "off" });
    const update = () => {
      const n = textarea.value.length;
      count.textContent = `${n.toLocaleString()} / ${max.toLocaleString()}`;
      count.classList.toggle("over", n > max);
    };
    textarea.addEventListener("input", () => { update(); saveDraft(); });
    area.replaceChildren(
      promptCard(t),
      el("div", { class: "card demo-card" },
        el("div", { class: "demo-head" }, el("label", { for: "demo-text" }, "Your response"), count),
        textarea),
      actionArea("Submit demonstration", submitDemonstration));
    if (draft && typeof draft.text === "string") textarea.value = draft.text;
    update();
    requestAnimationFrame(() => textarea.focus({ preventScroll: true }));
  }

  async function submitDemonstration() {
    if (!task || submitting || MODE !== "demonstrate") return;
    const t = task;
    const text = demoText().value;
    if (!text.trim()) { showError(new Error("The demonstration is empty; write the response first.")); return; }
    if (text.length > cfg.maxDemonstrationChars) {
      showError(new Error(`The demonstration is too long (${text.length.toLocaleString()} characters; at most ${cfg.maxDemonstrationChars.toLocaleString()}).`));
      return;
    }
    if (timeSpent === null) timeSpent = Math.round((Date.now() - startedAt) / 100) / 10;
    setBusy(true);
    showError(null);
    try {
      const res = await api("POST", `/api/v1/tasks/${t.id}/demonstration`, { text, time_spent_s: timeSpent });
      clearDraft(t.id);
      updateSessionCount(1);
      offerUndo(t.id, res.data.undo_until, "Demonstration");
      await loadNext();
    } catch (err) {
      setBusy(false);
      showError(err);
    }
  }

  // --- keyboard: global -------------------------------------------------------------------
  const help = document.getElementById("keys-help");
  const helpBtn = document.getElementById("keys-toggle");
  function toggleHelp(force) {
    help.hidden = force === undefined ? !help.hidden : !force;
    helpBtn.setAttribute("aria-expanded", String(!help.hidden));
  }
  helpBtn.addEventListener("click", () => toggleHelp());

  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
      e.preventDefault();
      if (MODE === "rank") submitRanking(); else submitDemonstration();
      return;
    }
    if (e.key === "Escape") {
      if (!help.hidden) { toggleHelp(false); return; }
      const box = area.querySelector(".skip-box");
      if (box && !box.hidden) { box.hidden = true; return; }
      if (isTyping(e.target)) e.target.blur();
      return;
    }
    if (isTyping(e.target)) return;
    if (e.key === "?") { toggleHelp(); e.preventDefault(); return; }
    if (MODE === "rank" && !drag && rankKeys(e)) e.preventDefault();
  });

  // Remember whether the guidelines are open.
  const guide = document.getElementById("guidelines");
  if (guide) {
    const key = `rlhf.guidelines.${cfg.promptSetId}`;
    guide.open = window.localStorage.getItem(key) === "open";
    guide.addEventListener("toggle", () => window.localStorage.setItem(key, guide.open ? "open" : "closed"));
  }

  window.addEventListener("resize", () => { if (list) list.querySelectorAll(".comp-text:not(.expanded)").forEach(measureCollapse); });
  setInterval(tickLease, 1000);
  updateSessionCount(0);
  loadNext();
})();
