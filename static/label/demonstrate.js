// Demonstrate mode: write the response an excellent assistant would give to the prompt.
// The answer ({ text }) lives in a store; the character count renders from it.

import { el } from "./dom.js";
import { createStore } from "./state.js";

export function createMode({ cfg, changed }) {
  const max = cfg.maxDemonstrationChars;
  let store = null;

  function render(t, saved) {
    store = createStore({ text: saved && typeof saved.text === "string" ? saved.text : "" });
    const textarea = el("textarea", { id: "demo-text", rows: "12", spellcheck: "true", placeholder: "Write the response you would want an excellent assistant to give." });
    const count = el("span", { class: "char-count", id: "char-count", "aria-live": "off" });
    const draw = (s) => {
      if (textarea.value !== s.text) textarea.value = s.text;
      count.textContent = `${s.text.length.toLocaleString()} / ${max.toLocaleString()}`;
      count.classList.toggle("over", s.text.length > max);
    };
    textarea.addEventListener("input", () => store.set({ text: textarea.value }));
    store.subscribe((s) => { draw(s); changed(); });
    draw(store.get());
    requestAnimationFrame(() => textarea.focus({ preventScroll: true }));
    return [el("div", { class: "card demo-card" },
      el("div", { class: "demo-head" }, el("label", { for: "demo-text" }, "Your response"), count),
      textarea)];
  }

  return {
    kind: "demonstrate",
    endpoint: "demonstration",
    noun: "Demonstration",
    submitLabel: "Submit demonstration",
    progress: { left: (p) => p.demonstrate_left, done: (p) => p.demonstrated, unit: "demonstration" },
    render,
    fromPrevious: (prev) => ({ text: prev.text }),
    draft: () => ({ text: store.get().text }),
    answer() {
      const { text } = store.get();
      if (!text.trim()) throw new Error("The demonstration is empty; write the response first.");
      if (text.length > max) {
        throw new Error(`The demonstration is too long (${text.length.toLocaleString()} characters; at most ${max.toLocaleString()}).`);
      }
      return { text };
    },
  };
}
