// A tiny store: one state object, replaced (never mutated) by pure functions, and the
// listeners that render the DOM from it. Each task mode keeps its answer in one of these.

export function createStore(initial) {
  let state = initial;
  const listeners = new Set();
  const store = {
    get: () => state,
    // ``info`` is passed through to the listeners (e.g. { animate: true } for a move).
    set(next, info) {
      if (next === state) return;
      state = next;
      for (const fn of listeners) fn(state, info || {});
    },
    update(fn, info) { store.set(fn(state), info); },
    subscribe(fn) { listeners.add(fn); return () => listeners.delete(fn); },
  };
  return store;
}
