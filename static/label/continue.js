// Continue mode (conversation sets): the conversation so far ends with a reply that was
// ranked best (or written by a labeler); write what the user says next. The turn goes to
// the sampler, whose replies become a rank task later. The answer ({ text }) lives in a
// store; the character count against the conversation's size limit renders from it.

import { el } from "./dom.js";
import { createStore } from "./state.js";

export function createMode({ cfg, changed }) {
  const max = cfg.maxDemonstrationChars;
  let store = null;
  let room = max;

  function render(t, saved) {
    const conv = t.conversation;
    room = Math.min(max, conv.max_context_chars - conv.context_chars);
    store = createStore({ text: saved && typeof saved.text === "string" ? saved.text : "" });
    const textarea = el("textarea", { id: "turn-text", rows: "6", spellcheck: "true", placeholder: "What does the user say next? A follow-up question, a correction, a new request…" });
    const count = el("span", { class: "char-count", id: "char-count", "aria-live": "off" });
    const draw = (s) => {
      if (textarea.value !== s.text) textarea.value = s.text;
      count.textContent = `${s.text.length.toLocaleString()} / ${room.toLocaleString()}`;
      count.classList.toggle("over", s.text.length > room);
    };
    textarea.addEventListener("input", () => store.set({ text: textarea.value }));
    store.subscribe((s) => { draw(s); changed(); });
    draw(store.get());
    requestAnimationFrame(() => textarea.focus({ preventScroll: true }));
    return [el("div", { class: "card demo-card continue-card" },
      el("div", { class: "demo-head" }, el("label", { for: "turn-text" }, `The user's turn ${conv.turn} of ${conv.max_turns}`), count),
      textarea)];
  }

  return {
    kind: "continue",
    endpoint: "continuation",
    noun: "Turn",
    submitLabel: "Submit the next turn",
    progress: { left: (p) => p.continue_left, done: (p) => p.continued, unit: "turn" },
    render,
    fromPrevious: (prev) => ({ text: prev.text }),
    draft: () => ({ text: store.get().text }),
    answer() {
      const { text } = store.get();
      if (!text.trim()) throw new Error("The turn is empty; write what the user says next.");
      if (text.length > room) {
        throw new Error(`The turn is too long for this conversation (${text.length.toLocaleString()} characters; at most ${room.toLocaleString()}).`);
      }
      return { text };
    },
  };
}
