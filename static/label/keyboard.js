// The keys every work page has (Ctrl+Enter submit, Escape, ? for help, h to fold a
// conversation's earlier turns); every other key
// goes to the mode (page.onKey), unless the labeler is typing in a text field.

import { isTyping } from "./dom.js";

export function installKeyboard({ page, help, helpButton }) {
  function toggleHelp(force) {
    help.hidden = force === undefined ? !help.hidden : !force;
    helpButton.setAttribute("aria-expanded", String(!help.hidden));
  }
  helpButton.addEventListener("click", () => toggleHelp());

  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
      e.preventDefault();
      page.submit();
      return;
    }
    if (e.key === "Escape") {
      if (!help.hidden) { toggleHelp(false); return; }
      if (page.closeSkip()) return;
      if (isTyping(e.target)) e.target.blur();
      return;
    }
    if (isTyping(e.target)) return;
    if (e.key === "?") { toggleHelp(); e.preventDefault(); return; }
    const fold = document.querySelector(".thread-earlier");
    if (e.key === "h" && fold && !e.ctrlKey && !e.metaKey && !e.altKey) { fold.open = !fold.open; e.preventDefault(); return; }
    if (page.onKey(e)) e.preventDefault();
  });
}
