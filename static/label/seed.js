// The "Start a conversation" page (templates/label/start.html): a plain form post (it works
// without this script). Here: Ctrl+Enter (or Cmd+Enter) in the text box starts the
// conversation, as Ctrl+Enter submits on every work page, and the character count follows
// the text. The form is sent once: a second Ctrl+Enter while it is on its way does nothing.
(function () {
  const form = document.getElementById("seed-form");
  const text = document.getElementById("seed-text");
  if (!form || !text) return;
  const count = document.getElementById("seed-count");
  const max = Number(count && count.dataset.max) || Infinity;
  let sent = false;
  function draw() {
    if (!count) return;
    count.textContent = `${text.value.length.toLocaleString()} / ${max.toLocaleString()}`;
    count.classList.toggle("over", text.value.length > max);
  }
  text.addEventListener("input", draw);
  form.addEventListener("submit", (e) => {
    if (sent) { e.preventDefault(); return; }
    sent = true;
    form.classList.add("busy");
  });
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter" && form.contains(document.activeElement)) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  if (document.activeElement !== text) text.focus({ preventScroll: true });
  text.setSelectionRange(text.value.length, text.value.length);
  draw();
})();
