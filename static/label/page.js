// The task cycle of a work page, the same for every mode: claim the next task, show it
// through the mode, keep its draft, submit or skip it, offer undo, renew the lease, and say
// why nothing is left. What a task looks like and what its answer is belong to the mode
// (see main.js for the interface a mode module implements).

import * as api from "./api.js";
import { el, fmtClock, promptCard } from "./dom.js";
import { createDrafts } from "./drafts.js";
import { createLease } from "./lease.js";
import { createToast } from "./toast.js";

const POLL_MS = 60 * 1000;

export function createPage({ cfg, area, nodes, createMode }) {
  const drafts = createDrafts(cfg.promptSetId, cfg.mode);
  const toast = createToast(nodes.toast);
  const lease = createLease({ node: nodes.lease, leaseMinutes: cfg.leaseMinutes, onError: (err) => showError(err) });
  const mode = createMode({ cfg, changed: saveDraft, submit });
  const session = {
    task: null, // the task shown (TaskOut)
    startedAt: 0, // when it was shown
    timeSpent: null, // fixed at the first submit attempt and reused on retries, so a retry is identical
    submitting: false,
  };
  let pollTimer = null;
  let undoTimer = null;
  // A mode whose tasks do not come from a prompt set (compare: an evaluation) brings its own.
  const fetchProgress = () => (mode.fetchProgress ? mode.fetchProgress() : api.progress(cfg.promptSetId));

  function updateSessionCount(add) {
    const n = drafts.countDone(add);
    nodes.sessionCount.textContent = n ? `${n} done this session` : "";
  }

  function saveDraft() {
    if (session.task) drafts.save(session.task.id, mode.draft());
  }

  // --- errors ----------------------------------------------------------------------------
  function showError(err) {
    const box = area.querySelector(".submit-error");
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

  // --- loading and showing tasks ---------------------------------------------------------
  async function loadNext() {
    stopPolling();
    area.setAttribute("aria-busy", "true");
    try {
      const t = await (mode.nextTask ? mode.nextTask() : api.nextTask(cfg.promptSetId, mode.kind));
      if (t) showTask(t, null);
      else await showEmpty();
    } catch (err) {
      session.task = null;
      lease.show(null);
      area.replaceChildren(el("section", { class: "card empty-state" },
        el("h2", {}, "Could not load a task"),
        el("p", { class: "error", role: "alert" }, err.message),
        el("button", { type: "button", onclick: () => loadNext() }, "Try again")));
    } finally {
      area.setAttribute("aria-busy", "false");
      session.submitting = false;
      area.classList.remove("busy");
    }
  }

  // Show task ``t``, with ``previous`` (the answer an undo took back) or else its draft.
  function showTask(t, previous) {
    Object.assign(session, { task: t, startedAt: Date.now(), timeSpent: null, submitting: false });
    lease.show(t);
    const saved = previous && Object.keys(previous).length ? mode.fromPrevious(previous) : drafts.load(t.id);
    area.replaceChildren((mode.prompt || promptCard)(t), ...mode.render(t, saved), actionArea());
    window.scrollTo({ top: 0 });
  }

  async function showEmpty() {
    session.task = null;
    lease.show(null);
    let p = null;
    try { p = await fetchProgress(); } catch (_) { /* said below */ }
    const lines = [];
    if (p && p.status !== "active") {
      lines.push(`This set is ${p.status}. Come back when an admin opens it again.`);
    } else if (p) {
      const left = mode.progress.left(p);
      lines.push(...(mode.progress.notes ? mode.progress.notes(p) : []));
      if (p.next_lease_expiry && !left) {
        lines.push(`Other labelers are working on the rest. If one of their leases runs out, a prompt opens up again around ${lease.localTime(p.next_lease_expiry)}.`);
      }
      if (!lines.length) {
        const done = mode.progress.done(p);
        lines.push(`You have done everything there is in this set for now (${done} ${mode.progress.unit}${done === 1 ? "" : "s"}). Thank you! New prompts may be added later.`);
      }
    }
    area.replaceChildren(el("section", { class: "card empty-state", id: "empty-state" },
      el("h2", {}, "Nothing left for you here right now"),
      ...lines.map((l) => el("p", {}, l)),
      el("p", { class: "muted" }, "This page checks again every minute and picks up new work by itself."),
      el("div", { class: "actions" },
        el("button", { type: "button", class: "primary", onclick: () => loadNext() }, "Check now"),
        el("a", { class: "button", href: "/label" }, "Other sets"))));
    startPolling();
  }

  function startPolling() {
    stopPolling();
    pollTimer = setInterval(async () => {
      if (document.visibilityState !== "visible") return;
      try {
        const p = await fetchProgress();
        if (mode.progress.left(p) + p.holding > 0) loadNext();
      } catch (_) { /* try again next minute */ }
    }, POLL_MS);
  }
  function stopPolling() { clearInterval(pollTimer); pollTimer = null; }

  // --- the shared bottom: error, submit, skip ---------------------------------------------
  function actionArea() {
    const reasonSel = el("select", { class: "skip-reason", "aria-label": "Why skip?" },
      el("option", { value: "" }, "Why skip? (optional)"),
      ...cfg.skipReasons.map((r) => el("option", { value: r }, r)),
      el("option", { value: "__other" }, "Other…"));
    const reasonText = el("input", { class: "skip-other", type: "text", maxlength: "1000", placeholder: "Say why (optional)", hidden: true });
    reasonSel.addEventListener("change", () => { reasonText.hidden = reasonSel.value !== "__other"; if (!reasonText.hidden) reasonText.focus(); });
    const skipBox = el("div", { class: "skip-box", hidden: true },
      reasonSel, reasonText,
      el("button", { type: "button", class: "danger", onclick: () => skip(reasonSel.value === "__other" ? reasonText.value : reasonSel.value) }, "Skip this task"),
      el("button", { type: "button", class: "link-button", onclick: () => { skipBox.hidden = true; } }, "Cancel"));
    const submitBtn = el("button", { type: "button", class: "primary submit-btn", onclick: () => submit() }, mode.submitLabel, el("kbd", { class: "hint-key" }, "Ctrl+Enter"));
    return el("div", { class: "actions-area" },
      el("div", { class: "submit-error error", role: "alert", hidden: true }),
      el("div", { class: "actions" }, submitBtn,
        el("button", { type: "button", class: "skip-btn", onclick: () => { skipBox.hidden = !skipBox.hidden; if (!skipBox.hidden) reasonSel.focus(); } }, "Skip…")),
      skipBox);
  }

  function setBusy(busy) {
    session.submitting = busy;
    area.querySelectorAll(".submit-btn, .skip-box button.danger").forEach((b) => { b.disabled = busy; });
    area.classList.toggle("busy", busy);
  }

  async function submit() {
    const t = session.task;
    if (!t || session.submitting) return;
    let body;
    try { body = mode.answer(); } catch (err) { showError(err); return; } // the mode's own checks
    if (session.timeSpent === null) session.timeSpent = Math.round((Date.now() - session.startedAt) / 100) / 10;
    body.time_spent_s = session.timeSpent;
    setBusy(true);
    showError(null);
    try {
      const res = await api.submit(t.id, mode.endpoint, body);
      drafts.clear(t.id);
      updateSessionCount(1);
      offerUndo(t.id, res.undo_until);
      await loadNext();
    } catch (err) {
      setBusy(false);
      showError(err);
    }
  }

  async function skip(reason) {
    const t = session.task;
    if (!t || session.submitting) return;
    setBusy(true);
    showError(null);
    try {
      await api.skip(t.id, reason);
      drafts.clear(t.id);
      toast.show([el("span", {}, "Skipped. You won't see that prompt again.")], 3000);
      await loadNext();
    } catch (err) {
      setBusy(false);
      showError(err);
    }
  }

  // --- undo ------------------------------------------------------------------------------
  function offerUndo(taskId, untilIso) {
    clearInterval(undoTimer);
    const until = Date.parse(untilIso);
    const left = el("span", { class: "undo-left" });
    const tick = () => {
      const ms = until - lease.serverNow();
      if (ms <= 0) { clearInterval(undoTimer); toast.hide(); return; }
      left.textContent = fmtClock(ms);
    };
    toast.show([el("span", {}, `${mode.noun} submitted.`),
      el("button", { type: "button", class: "undo-btn", onclick: () => undo(taskId) }, "Undo"), left]);
    tick();
    undoTimer = setInterval(tick, 1000);
  }

  async function undo(taskId) {
    clearInterval(undoTimer);
    toast.hide();
    saveDraft(); // the task shown now comes back later with what was entered
    try {
      const t = await api.undo(taskId);
      updateSessionCount(-1);
      showTask(t, t.previous);
      toast.show([el("span", {}, "Taken back. Change your answer and submit again.")], 4000);
    } catch (err) {
      toast.show([el("span", { class: "error" }, `Undo failed: ${err.message}`)], 6000);
    }
  }

  return {
    start() { updateSessionCount(0); loadNext(); },
    submit,
    onKey: (e) => (session.task && mode.onKey ? mode.onKey(e) : false),
    // Close the skip box if it is open; true if it was.
    closeSkip() {
      const box = area.querySelector(".skip-box");
      if (!box || box.hidden) return false;
      box.hidden = true;
      return true;
    },
  };
}
