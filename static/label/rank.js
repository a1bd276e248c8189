// Rank mode: put the K completions of a task best first, with ties, an optional Likert
// rating and flags per completion, "all unacceptable" and a comment.
//
// The answer lives in ONE state object (static/label/ranking.js) in a store; every change
// goes through a pure function of ranking.js, and draw() renders the cards from the new
// state: their order, rank badges, tie marks, buttons, Likert and flags. A card's data-id is
// only the key that ties it to its completion; nothing else is read back from the DOM.

import { el, reduceMotion, renderText } from "./dom.js";
import * as R from "./ranking.js";
import { createStore } from "./state.js";

const LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

export function createMode({ cfg, changed }) {
  const flagNames = cfg.flags.map((f) => f.name);
  let view = null; // the task shown (see mount)
  const live = () => (view && view.list.isConnected ? view : null);

  window.addEventListener("resize", () => { const v = live(); if (v) v.remeasure(); });

  // --- one completion's card (its parts; draw() fills in the state) ------------------------
  function completionCard(c, letter, act) {
    const likert = el("div", { class: "likert", role: "group", "aria-label": `Quality of ${letter}, 1 worst to 7 best` },
      el("span", { class: "likert-label muted" }, "Quality"));
    const likertBtns = [];
    for (let n = 1; n <= R.LIKERT_MAX; n++) {
      const title = n === 1 ? "1 · very bad" : n === R.LIKERT_MAX ? "7 · excellent" : String(n);
      const b = el("button", { type: "button", class: "likert-btn", "data-value": String(n), "aria-pressed": "false", title, onclick: () => act.rate(n) }, String(n));
      likertBtns.push(b);
      likert.append(b);
    }
    const flagInputs = cfg.flags.map((f) => el("input", { type: "checkbox", name: f.name, "aria-label": f.label, onchange: (e) => act.flag(f.name, e.target.checked) }));
    const flags = el("div", { class: "flags", role: "group", "aria-label": `Flags for ${letter}` },
      ...cfg.flags.map((f, i) => el("label", { class: "flag", title: f.label }, flagInputs[i], el("span", {}, f.short))));
    const text = el("div", { class: "comp-text collapsed" }, renderText(c.text));
    const expand = el("button", { type: "button", class: "expand-btn link-button", hidden: true, onclick: () => toggleExpand(parts) }, "Show all");
    const parts = {
      letter, text, expand, likertBtns, flagInputs,
      badge: el("span", { class: "rank-badge", "aria-hidden": "true" }),
      word: el("span", { class: "rank-word muted" }),
      tie: el("button", { type: "button", class: "tie-btn", "aria-pressed": "false", title: "Tie with the card above (t)", onclick: act.tie }, "= Tie"),
      up: el("button", { type: "button", class: "move-btn up", "aria-label": `Move ${letter} up`, title: "Move up (Alt+↑)", onclick: () => act.step(-1) }, "↑"),
      down: el("button", { type: "button", class: "move-btn down", "aria-label": `Move ${letter} down`, title: "Move down (Alt+↓)", onclick: () => act.step(1) }, "↓"),
    };
    parts.li = el("li", { class: "comp-card", tabindex: "0", "data-id": String(c.id) },
      el("div", { class: "card-head" },
        el("span", { class: "drag-handle", title: "Drag to reorder", "aria-hidden": "true" }, "⠿"),
        parts.badge, parts.word,
        el("span", { class: "letter" }, letter),
        el("span", { class: "spacer" }),
        parts.tie, parts.up, parts.down),
      text, expand,
      el("div", { class: "card-foot" }, likert, flags));
    return parts;
  }

  function drawCard(parts, p) {
    parts.badge.textContent = String(p.rank);
    parts.badge.classList.toggle("tied", p.tied);
    const word = p.rank === 1 ? "Best" : p.rank === p.total ? "Worst" : "";
    parts.word.textContent = p.tied ? `${word ? word + ", " : ""}tied` : word;
    parts.li.setAttribute("aria-label", `Completion ${parts.letter}, rank ${p.rank} of ${p.total}${p.tied ? ", tied" : ""}`);
    parts.li.classList.toggle("tied-above", p.tiedAbove);
    parts.tie.setAttribute("aria-pressed", String(p.tiedAbove));
    parts.tie.disabled = p.index === 0;
    parts.up.disabled = p.index === 0;
    parts.down.disabled = p.last;
    parts.likertBtns.forEach((b, i) => b.setAttribute("aria-pressed", String(p.likert === i + 1)));
    parts.flagInputs.forEach((input) => {
      input.checked = p.flags.includes(input.name);
      input.closest(".flag").classList.toggle("on", input.checked);
    });
  }

  // Long completions start collapsed; "Show all" (or e) opens them. View-only, not part of the answer.
  function measureCollapse(parts) {
    parts.text.classList.add("collapsed"); // measure against the collapsed height
    const long = parts.text.scrollHeight > parts.text.clientHeight + 4;
    parts.expand.hidden = !long;
    parts.text.classList.toggle("collapsed", long);
    parts.text.classList.toggle("fits", !long);
  }

  function toggleExpand(parts) {
    if (parts.expand.hidden) return;
    const open = parts.text.classList.toggle("expanded");
    parts.expand.textContent = open ? "Show less" : "Show all";
    if (!open) parts.li.scrollIntoView({ block: "nearest" });
  }

  // --- the task shown: its store, its cards, and the render from state -----------------------
  function mount(t, saved) {
    const store = createStore(R.fromAnswer(t.completions.map((c) => c.id), saved, flagNames));
    const cards = new Map(); // completion id -> card parts
    let drag = null;
    const list = el("ol", { class: "cards", id: "cards", "aria-label": "Completions, best first" });
    const allBad = el("input", { type: "checkbox", id: "all-unacceptable", onchange: () => store.update((s) => R.setAllUnacceptable(s, allBad.checked)) });
    const comment = el("textarea", { id: "comment", rows: "2", maxlength: "5000", placeholder: "Anything the team should know about this task? (optional)", oninput: () => store.update((s) => R.setComment(s, comment.value)) });

    // Put ``id`` at position ``to`` (0-based); the others slide to their new places.
    function move(id, to, opts) {
      const before = store.get();
      store.update((s) => R.move(s, id, to), { animate: true });
      if (store.get() === before || (opts && opts.focus === false)) return;
      cards.get(id).li.focus({ preventScroll: true });
      cards.get(id).li.scrollIntoView({ block: "nearest", behavior: reduceMotion ? "auto" : "smooth" });
    }

    t.completions.forEach((c, i) => {
      const id = c.id;
      cards.set(id, completionCard(c, LETTERS[i] || String(i + 1), {
        rate: (n) => store.update((s) => R.rate(s, id, n)),
        flag: (name, on) => store.update((s) => R.setFlag(s, id, name, on)),
        tie: () => store.update((s) => R.toggleTie(s, id)),
        step: (d) => move(id, R.indexOf(store.get(), id) + d),
      }));
    });

    // render(state): the DOM follows the state, keyed by completion id.
    function draw(s, info) {
      const tops = info.animate && !reduceMotion ? new Map([...cards].map(([id, p]) => [id, p.li.getBoundingClientRect().top])) : null;
      const rows = R.positions(s);
      rows.forEach((p, i) => {
        const li = cards.get(p.id).li;
        if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null);
        drawCard(cards.get(p.id), { ...p, last: i === rows.length - 1 });
      });
      allBad.checked = s.allUnacceptable;
      if (comment.value !== s.comment) comment.value = s.comment;
      if (tops) slide(tops);
    }

    // FLIP: start each moved card where it was and let it slide to its new place.
    function slide(tops) {
      for (const [id, p] of cards) {
        if (drag && id === drag.id) continue;
        const dy = tops.get(id) - p.li.getBoundingClientRect().top;
        if (!dy) continue;
        p.li.style.transition = "none";
        p.li.style.transform = `translateY(${dy}px)`;
        p.li.getBoundingClientRect(); // apply before animating back
        p.li.style.transition = "transform 150ms ease-out";
        p.li.style.transform = "";
      }
    }

    store.subscribe((s, info) => { draw(s, info); changed(); });
    draw(store.get(), {});

    // Pointer dragging (mouse anywhere on the card head, touch and pen on the handle).
    list.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      const head = e.target.closest(".card-head");
      if (!head || e.target.closest("button, input, label, a, select, textarea")) return;
      if (e.pointerType !== "mouse" && !e.target.closest(".drag-handle")) return;
      const li = head.closest(".comp-card");
      e.preventDefault();
      drag = { id: Number(li.dataset.id), li, pointerId: e.pointerId };
      li.setPointerCapture(e.pointerId);
      li.classList.add("dragging");
      list.classList.add("drag-active");
      li.focus({ preventScroll: true });
    });
    list.addEventListener("pointermove", (e) => {
      if (!drag || e.pointerId !== drag.pointerId) return;
      let to = 0;
      for (const r of store.get().rows) {
        if (r.id === drag.id) continue;
        const rect = cards.get(r.id).li.getBoundingClientRect();
        if (e.clientY > rect.top + rect.height / 2) to++;
      }
      move(drag.id, to, { focus: false });
      const edge = 60;
      if (e.clientY < edge) window.scrollBy(0, -12);
      else if (e.clientY > window.innerHeight - edge) window.scrollBy(0, 12);
    });
    const endDrag = (e) => {
      if (!drag || e.pointerId !== drag.pointerId) return;
      const { li } = drag;
      li.classList.remove("dragging");
      list.classList.remove("drag-active");
      drag = null;
      li.focus({ preventScroll: true });
    };
    list.addEventListener("pointerup", endDrag);
    list.addEventListener("pointercancel", endDrag);

    // The rank keys (templates/label/rank.html lists them).
    function onKey(e) {
      const s = store.get();
      if (drag || !s.rows.length) return false;
      const active = document.activeElement;
      const li = active && active.closest ? active.closest(".comp-card") : null;
      const id = li && list.contains(li) ? Number(li.dataset.id) : null;
      const i = id === null ? -1 : R.indexOf(s, id);
      const focusAt = (j) => { const c = cards.get(R.idAt(s, j)).li; c.focus({ preventScroll: true }); c.scrollIntoView({ block: "nearest" }); };
      const k = e.key;
      if ((k === "ArrowDown" || k === "ArrowUp") && (e.altKey || e.shiftKey) && id !== null) {
        move(id, i + (k === "ArrowDown" ? 1 : -1));
        return true;
      }
      if (e.altKey || e.ctrlKey || e.metaKey) return false;
      if (k === "ArrowDown" || k === "j") { focusAt(i < 0 ? 0 : i + 1); return true; }
      if (k === "ArrowUp" || k === "k") { focusAt(i < 0 ? 0 : i - 1); return true; }
      if (id === null) {
        if (/^[1-9]$/.test(k) || k === "t" || k === "=" || k === "e") { focusAt(0); return true; }
        return false;
      }
      const digit = /^(?:Digit|Numpad)([1-9])$/.exec(e.code);
      if (e.shiftKey && digit && Number(digit[1]) <= R.LIKERT_MAX) { store.update((x) => R.rate(x, id, Number(digit[1]))); return true; }
      if (!e.shiftKey && /^[1-9]$/.test(k)) {
        if (Number(k) <= s.rows.length) move(id, Number(k) - 1);
        return true;
      }
      if (k === "t" || k === "=") { store.update((x) => R.toggleTie(x, id)); li.focus({ preventScroll: true }); return true; }
      if (k === "e") { toggleExpand(cards.get(id)); return true; }
      const flag = e.shiftKey ? null : cfg.flags.find((f) => f.key === k);
      if (flag) { store.update((x) => R.toggleFlag(x, id, flag.name)); return true; }
      return false;
    }

    const nodes = [
      el("p", { class: "rank-hint muted" }, `Put the best completion on top. Drag a card, use its arrows, or focus it and press 1–${Math.min(t.completions.length, 9)}. Press ? for all keys.`),
      list,
      el("div", { class: "card rank-extras" },
        el("label", { class: "all-bad", for: "all-unacceptable" }, allBad, " All of them are unacceptable"),
        el("label", { class: "comment-label", for: "comment" }, "Comment"),
        comment),
    ];
    requestAnimationFrame(() => {
      for (const p of cards.values()) measureCollapse(p);
      if (list.firstElementChild) list.firstElementChild.focus({ preventScroll: true });
    });
    return {
      nodes, list, store, onKey,
      remeasure() { for (const p of cards.values()) if (!p.text.classList.contains("expanded")) measureCollapse(p); },
    };
  }

  return {
    kind: "rank", // POST /tasks/next {kind}
    endpoint: "ranking", // POST /tasks/{id}/ranking
    noun: "Ranking",
    submitLabel: "Submit ranking",
    progress: {
      left: (p) => p.rank_left,
      done: (p) => p.ranked,
      unit: "ranking",
      notes: (p) => (p.waiting_for_completions
        ? [`${p.waiting_for_completions} prompt${p.waiting_for_completions === 1 ? " is" : "s are"} waiting for the sampler to produce completions. New work usually appears within a few minutes.`]
        : []),
    },
    render(t, saved) { view = mount(t, saved); return view.nodes; },
    fromPrevious: (prev) => prev, // an undone ranking has the answer's shape, which R.fromAnswer reads
    draft: () => R.toAnswer(view.store.get(), flagNames),
    answer: () => R.toAnswer(view.store.get(), flagNames),
    onKey: (e) => { const v = live(); return v ? v.onKey(e) : false; },
  };
}
