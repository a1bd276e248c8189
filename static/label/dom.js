// DOM helpers shared by the labeler's modules. Every node is built with rlhf.el (static/app.js)
// or textContent, never innerHTML, so prompt and completion text is always shown as text.

export const { el } = window.rlhf;

export const reduceMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;

export function fmtClock(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

// Whether keys typed now go into a text field (and so are not shortcuts).
export const isTyping = (t) => !!t && (t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
  (t.tagName === "INPUT" && !["checkbox", "radio", "button"].includes(t.type)) || t.isContentEditable);

// Text with paragraphs, line breaks, ``` fenced code blocks and `inline code`, as DOM nodes.
export function renderText(text) {
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

// One message of a conversation thread.
function bubble(m, extra = "") {
  return el("div", { class: `msg role-${m.role}${extra}` }, el("span", { class: "role" }, m.role), renderText(m.content));
}

// A task on a conversation set, as a chat thread: the earlier turns folded in a <details>
// (open; the labeler can collapse it, or press h), then the turn being judged, answered or
// continued from set apart under its own heading. Rank and demonstrate tasks end with the
// user's turn; a continue task ends with the assistant reply the next user turn follows.
export function conversationCard(t) {
  const msgs = t.messages || [];
  const conv = t.conversation;
  const current = msgs.length ? msgs[msgs.length - 1] : { role: "user", content: t.prompt };
  const earlier = msgs.slice(0, -1);
  const card = el("article", { class: "prompt-card card thread", "aria-label": "Conversation", "data-turn": String(conv.turn) });
  card.append(el("div", { class: "thread-head muted" },
    el("span", {}, `Conversation · turn ${conv.turn} of ${conv.max_turns}`),
    el("span", { class: "thread-size" }, `${conv.context_chars.toLocaleString()} / ${conv.max_context_chars.toLocaleString()} characters`)));
  if (earlier.length) {
    const fold = el("details", { class: "thread-earlier", open: "" },
      el("summary", {}, `Earlier turns (${earlier.length} message${earlier.length === 1 ? "" : "s"})`, el("kbd", { class: "hint-key" }, "h")));
    for (const m of earlier) fold.append(bubble(m));
    card.append(fold);
  }
  const label = t.kind === "continue" ? "The reply you continue from"
    : t.kind === "demonstrate" ? "The user's turn you answer" : "The user's turn being judged";
  card.append(el("section", { class: "thread-current", "aria-label": label },
    el("div", { class: "prompt-label muted" }, label), bubble(current, " current")));
  return card;
}

// The prompt, with the earlier turns of a chat prompt above the user's last message.
export function promptCard(t) {
  if (t.conversation) return conversationCard(t);
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
