// What the labeler entered survives a reload: one draft per task in sessionStorage, plus the
// "N done this session" counter of the work bar.

const store = window.sessionStorage;

export function createDrafts(promptSetId, kind) {
  const key = (taskId) => `rlhf.draft.${taskId}`;
  const countKey = `rlhf.done.${promptSetId}.${kind}`;
  return {
    save(taskId, value) {
      try { store.setItem(key(taskId), JSON.stringify(value)); } catch (_) { /* storage full or off */ }
    },
    load(taskId) {
      try { return JSON.parse(store.getItem(key(taskId)) || "null"); } catch (_) { return null; }
    },
    clear(taskId) { store.removeItem(key(taskId)); },
    // Add ``add`` (may be negative, or 0 to read) to this session's count and return it.
    countDone(add) {
      const n = Number(store.getItem(countKey) || 0) + (add || 0);
      store.setItem(countKey, String(n));
      return n;
    },
  };
}
