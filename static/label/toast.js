// The toast at the bottom of the work page ("Ranking submitted. Undo 4:59", "Skipped ...").

export function createToast(node) {
  let timer = null;
  return {
    show(children, ms) {
      node.replaceChildren(...children);
      node.hidden = false;
      clearTimeout(timer);
      if (ms) timer = setTimeout(() => { node.hidden = true; }, ms);
    },
    hide() { clearTimeout(timer); node.hidden = true; },
  };
}
