// Compare mode: two answers to one prompt, A and B, from two policies the labeler is not
// told about. The answer is a choice (a, b, tie, both_bad) and, optionally, a 1-7 Likert
// rating and flags per side. Keys: a, b, t (tie), x (both bad); 1-7 rate A, Shift+1-7
// rate B; Ctrl+Enter submits (keyboard.js). Side by side on a wide screen, stacked on a
// phone (label.css, .compare-grid).

import * as api from "./api.js";
import { el, renderText } from "./dom.js";
import { createStore } from "./state.js";

const CHOICES = [
  { value: "a", key: "a", label: "A is better" },
  { value: "b", key: "b", label: "B is better" },
  { value: "tie", key: "t", label: "Tie" },
  { value: "both_bad", key: "x", label: "Both bad" },
];
const SIDES = ["a", "b"];
const SHIFTED = { "!": 1, "@": 2, "#": 3, $: 4, "%": 5, "^": 6, "&": 7 };

const empty = () => ({ choice: null, ratings: { a: { likert: null, flags: [] }, b: { likert: null, flags: [] } }, comment: "" });

// A saved draft or a taken-back answer, as state (unknown sides and flags dropped).
function fromAnswer(saved, flagNames) {
  const s = empty();
  if (!saved) return s;
  if (CHOICES.some((c) => c.value === saved.choice)) s.choice = saved.choice;
  for (const side of SIDES) {
    const r = (saved.ratings || {})[side] || {};
    s.ratings[side] = {
      likert: Number.isInteger(r.likert) && r.likert >= 1 && r.likert <= 7 ? r.likert : null,
      flags: (r.flags || []).filter((f) => flagNames.includes(f)),
    };
  }
  s.comment = typeof saved.comment === "string" ? saved.comment : "";
  return s;
}

function toAnswer(s) {
  const ratings = {};
  for (const side of SIDES) {
    const r = s.ratings[side];
    if (r.likert !== null || r.flags.length) ratings[side] = { likert: r.likert, flags: [...r.flags] };
  }
  return { choice: s.choice, ratings, comment: s.comment };
}

const rate = (s, side, n) => ({ ...s, ratings: { ...s.ratings, [side]: { ...s.ratings[side], likert: s.ratings[side].likert === n ? null : n } } });
const flag = (s, side, name, on) => {
  const flags = s.ratings[side].flags.filter((f) => f !== name);
  if (on) flags.push(name);
  return { ...s, ratings: { ...s.ratings, [side]: { ...s.ratings[side], flags } } };
};

export function createMode({ cfg, changed }) {
  const flagNames = cfg.flags.map((f) => f.name);
  let store = null;

  function sideCard(t, side) {
    const text = (t.sides.find((x) => x.side === side) || { text: "" }).text;
    const likertBtns = [];
    const likert = el("div", { class: "likert", role: "group", "aria-label": `Quality of ${side.toUpperCase()}, 1 worst to 7 best` },
      el("span", { class: "likert-label muted" }, "Quality"));
    for (let n = 1; n <= 7; n++) {
      const b = el("button", { type: "button", class: "likert-btn", "data-value": String(n), "aria-pressed": "false", onclick: () => store.update((s) => rate(s, side, n)) }, String(n));
      likertBtns.push(b);
      likert.append(b);
    }
    const flagInputs = cfg.flags.map((f) => el("input", { type: "checkbox", name: f.name, "aria-label": `${f.label} (${side.toUpperCase()})`, onchange: (e) => store.update((s) => flag(s, side, f.name, e.target.checked)) }));
    const flags = el("div", { class: "flags", role: "group", "aria-label": `Flags for ${side.toUpperCase()}` },
      ...cfg.flags.map((f, i) => el("label", { class: "flag", title: f.label }, flagInputs[i], el("span", {}, f.short))));
    const card = el("article", { class: "card compare-card", "data-side": side, "aria-label": `Answer ${side.toUpperCase()}` },
      el("div", { class: "compare-head" }, el("span", { class: "side-badge" }, side.toUpperCase())),
      el("div", { class: "completion-text" }, renderText(text)),
      el("div", { class: "card-foot" }, likert, flags));
    return { card, likertBtns, flagInputs };
  }

  function render(t, saved) {
    store = createStore(fromAnswer(saved, flagNames));
    const cards = Object.fromEntries(SIDES.map((side) => [side, sideCard(t, side)]));
    const buttons = CHOICES.map((c) => el("button", { type: "button", class: "choice-btn", "data-choice": c.value, "aria-pressed": "false", onclick: () => store.update((s) => ({ ...s, choice: c.value })) },
      c.label, " ", el("kbd", {}, c.key.toUpperCase())));
    const comment = el("textarea", { class: "compare-comment", rows: "2", maxlength: "5000", placeholder: "Comment (optional)", "aria-label": "Comment" });
    comment.addEventListener("input", () => store.update((s) => ({ ...s, comment: comment.value })));
    const draw = (s) => {
      for (const side of SIDES) {
        const parts = cards[side];
        const r = s.ratings[side];
        parts.likertBtns.forEach((b, i) => b.setAttribute("aria-pressed", String(r.likert === i + 1)));
        parts.flagInputs.forEach((input) => {
          input.checked = r.flags.includes(input.name);
          input.closest(".flag").classList.toggle("on", input.checked);
        });
        const preferred = s.choice === side;
        parts.card.classList.toggle("preferred", preferred);
        parts.card.classList.toggle("rejected", s.choice === "both_bad" || (s.choice !== null && s.choice !== "tie" && !preferred));
      }
      buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.choice === s.choice)));
      if (comment.value !== s.comment) comment.value = s.comment;
    };
    store.subscribe((s) => { draw(s); changed(); });
    draw(store.get());
    return [
      el("div", { class: "compare-grid" }, cards.a.card, cards.b.card),
      el("div", { class: "card choice-bar", role: "group", "aria-label": "Which answer is better?" }, ...buttons),
      el("div", { class: "card comment-card" }, comment),
    ];
  }

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return false;
    const key = e.key.toLowerCase();
    const choice = CHOICES.find((c) => c.key === key);
    if (choice && !e.shiftKey) { store.update((s) => ({ ...s, choice: choice.value })); return true; }
    if (/^[1-7]$/.test(e.key)) { store.update((s) => rate(s, "a", Number(e.key))); return true; }
    if (SHIFTED[e.key] || (e.shiftKey && /^Digit[1-7]$/.test(e.code))) {
      const n = SHIFTED[e.key] || Number(e.code.slice(5));
      store.update((s) => rate(s, "b", n));
      return true;
    }
    return false;
  }

  return {
    kind: "compare",
    endpoint: "comparison",
    noun: "Comparison",
    submitLabel: "Submit comparison",
    progress: { left: (p) => p.compare_left, done: (p) => p.compared, unit: "comparison" },
    nextTask: () => api.nextCompareTask(cfg.evaluationId),
    fetchProgress: () => api.compareProgress(cfg.evaluationId),
    render,
    fromPrevious: (prev) => fromAnswer(prev, flagNames),
    draft: () => toAnswer(store.get()),
    answer() {
      const a = toAnswer(store.get());
      if (!a.choice) throw new Error("Choose first: A is better (A), B is better (B), tie (T) or both bad (X).");
      return a;
    },
    onKey,
  };
}
