// The labeler's work pages (templates/label/_work.html), as plain ES modules, no build step:
//
//   main.js        boot: reads the page config, loads the mode's module, starts the page
//   page.js        the task cycle every mode shares: next task, drafts, submit, skip, undo, empty state
//   api.js         the /api/v1/tasks calls (through rlhf.api: session cookie + CSRF token)
//   lease.js       lease countdown and renewal, server clock offset
//   keyboard.js    Ctrl+Enter, Escape, ?; other keys go to the mode
//   state.js       createStore: one state object per task, rendered into the DOM on change
//   drafts.js      sessionStorage drafts and the "done this session" counter
//   toast.js, dom.js   the toast; el/renderText/promptCard and small helpers
//   rank.js        rank mode (its state model: ranking.js)
//   demonstrate.js demonstrate mode
//   compare.js     compare mode: blind A/B judgment of an evaluation's two answers
//   continue.js    continue mode: write the next user turn of a conversation (conversation sets)
//
// A mode module exports createMode({ cfg, changed, submit }) returning:
//   kind           the task kind for POST /tasks/next
//   endpoint       POST /tasks/{id}/{endpoint} takes the answer
//   noun, submitLabel      "Ranking" ("Ranking submitted."), the submit button's text
//   progress       { left(p), done(p), unit, notes?(p) } over GET /tasks/progress, for the empty state
//   render(task, saved)    the nodes between the prompt and the action area; ``saved`` is a draft or null
//   fromPrevious(previous) the answer an undo took back, as a draft
//   draft()        what to keep in sessionStorage (call ``changed()`` after every change)
//   answer()       the submission body (without time_spent_s); throw an Error to refuse
//   onKey?(e)      mode keys; true if handled
//   prompt?(task)  replaces the standard prompt card
//   nextTask?(), fetchProgress?()  for tasks that do not come from a prompt set (compare)
// Adding a mode ("continue" a conversation, blind A/B "compare"): write its module, add it to
// MODES, and give it a template extending label/_work.html.

import { installKeyboard } from "./keyboard.js";
import { createPage } from "./page.js";

const MODES = {
  rank: () => import("./rank.js"),
  demonstrate: () => import("./demonstrate.js"),
  compare: () => import("./compare.js"),
  continue: () => import("./continue.js"),
};

async function start() {
  const app = document.getElementById("label-app");
  const area = document.getElementById("task-area");
  if (!app || !area) return;
  const cfg = JSON.parse(document.getElementById("label-config").textContent);
  const load = Object.hasOwn(MODES, cfg.mode) ? MODES[cfg.mode] : null;
  if (!load) {
    area.textContent = `Unknown task mode: ${cfg.mode}`;
    return;
  }
  const { createMode } = await load();
  const page = createPage({
    cfg,
    area,
    createMode,
    nodes: {
      lease: document.getElementById("lease"),
      toast: document.getElementById("toast"),
      sessionCount: document.getElementById("session-count"),
    },
  });
  installKeyboard({ page, help: document.getElementById("keys-help"), helpButton: document.getElementById("keys-toggle") });

  // Remember whether the guidelines are open.
  const guide = document.getElementById("guidelines");
  if (guide) {
    const key = `rlhf.guidelines.${cfg.promptSetId}`;
    guide.open = window.localStorage.getItem(key) === "open";
    guide.addEventListener("toggle", () => window.localStorage.setItem(key, guide.open ? "open" : "closed"));
  }
  page.start();
}

start();
