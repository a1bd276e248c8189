// The ranking a labeler is building: one plain state object and the pure functions that
// change it. Nothing here touches the DOM; static/label/rank.js renders the cards from it.
//
//   {
//     rows: [{ id, tied }],     completion ids, best first; tied: in one group with the row above
//     ratings: { [id]: { likert: 1..7 | null, flags: [name, ...] } },   only rated completions
//     allUnacceptable: false,
//     comment: "",
//   }
//
// Every function returns a new state (or the same one when nothing changes) and leaves its
// argument alone, so a render can compare and the draft is always a faithful copy.

export const LIKERT_MAX = 7;

export function initial(ids) {
  return { rows: ids.map((id) => ({ id, tied: false })), ratings: {}, allUnacceptable: false, comment: "" };
}

export const indexOf = (s, id) => s.rows.findIndex((r) => r.id === id);
export const idAt = (s, i) => s.rows[Math.max(0, Math.min(s.rows.length - 1, i))].id;

// The top row has nobody above it to be tied with.
const topUntied = (rows) => rows.map((r, i) => (i === 0 && r.tied ? { ...r, tied: false } : r));

// Put completion ``id`` at position ``to`` (0-based), on its own. The group it leaves stays
// together; a group it lands inside is split in two around it.
export function move(s, id, to) {
  const from = indexOf(s, id);
  if (from < 0) return s;
  to = Math.max(0, Math.min(s.rows.length - 1, to));
  if (to === from) return s;
  const card = s.rows[from];
  const rest = s.rows.flatMap((r, i) => {
    if (i === from) return [];
    if (i === from + 1) return [{ ...r, tied: r.tied && card.tied }]; // the group's next head
    return [r];
  });
  rest.splice(to, 0, { id, tied: false });
  if (rest[to + 1]) rest[to + 1] = { ...rest[to + 1], tied: false };
  return { ...s, rows: topUntied(rest) };
}

// Tie ``id`` with the row above it, or untie it.
export function toggleTie(s, id) {
  const i = indexOf(s, id);
  if (i <= 0) return s;
  return { ...s, rows: s.rows.map((r, j) => (j === i ? { ...r, tied: !r.tied } : r)) };
}

const ratingOf = (s, id) => s.ratings[id] || { likert: null, flags: [] };

function withRating(s, id, r) {
  const ratings = { ...s.ratings };
  if (r.likert || r.flags.length) ratings[id] = r;
  else delete ratings[id];
  return { ...s, ratings };
}

// Likert 1..7; choosing the value a completion already has clears it.
export function rate(s, id, n) {
  const cur = ratingOf(s, id);
  return withRating(s, id, { ...cur, likert: cur.likert === n ? null : n });
}

export function setFlag(s, id, name, on) {
  const cur = ratingOf(s, id);
  const flags = cur.flags.filter((f) => f !== name);
  if (on) flags.push(name);
  return withRating(s, id, { ...cur, flags });
}

export const hasFlag = (s, id, name) => ratingOf(s, id).flags.includes(name);
export const toggleFlag = (s, id, name) => setFlag(s, id, name, !hasFlag(s, id, name));

export const setAllUnacceptable = (s, on) => (s.allUnacceptable === !!on ? s : { ...s, allUnacceptable: !!on });
export const setComment = (s, comment) => (s.comment === comment ? s : { ...s, comment });

// Best-first groups of ids; a group of more than one is a tie.
export function groups(s) {
  const out = [];
  for (const r of s.rows) {
    if (r.tied && out.length) out[out.length - 1].push(r.id);
    else out.push([r.id]);
  }
  return out;
}

// What each row shows, in order: its rank (group number), whether it shares the rank, and
// the number of ranks in all.
export function positions(s) {
  const rank = [];
  let g = 0;
  s.rows.forEach((r, i) => { if (i === 0 || !r.tied) g++; rank.push(g); });
  return s.rows.map((r, i) => ({
    id: r.id,
    index: i,
    rank: rank[i],
    total: g,
    tiedAbove: i > 0 && r.tied,
    tied: (i > 0 && rank[i - 1] === rank[i]) || (i + 1 < rank.length && rank[i + 1] === rank[i]),
    likert: ratingOf(s, r.id).likert,
    flags: ratingOf(s, r.id).flags,
  }));
}

// The body of POST /api/v1/tasks/{id}/ranking (without time_spent_s); also the draft's shape.
// Flags are listed in ``flagOrder`` so that the same answer always reads the same.
export function toAnswer(s, flagOrder) {
  const ratings = {};
  for (const r of s.rows) {
    const rating = s.ratings[r.id];
    if (!rating) continue;
    const flags = flagOrder ? flagOrder.filter((f) => rating.flags.includes(f)) : [...rating.flags];
    ratings[String(r.id)] = { likert: rating.likert || null, flags };
  }
  return { ranking: groups(s), ratings, all_unacceptable: s.allUnacceptable, comment: s.comment };
}

// The state for a task's completion ``ids`` from a saved answer (a draft, or the answer an
// undo took back). A ranking that does not cover exactly these ids is ignored; so are
// ratings for other completions, unknown flags and Likert values outside 1..7.
export function fromAnswer(ids, saved, flagNames) {
  const s = initial(ids);
  if (!saved) return s;
  const known = new Set(ids);
  const ranking = Array.isArray(saved.ranking) ? saved.ranking.filter(Array.isArray) : [];
  const flat = ranking.flat();
  if (flat.length === ids.length && new Set(flat).size === flat.length && flat.every((id) => known.has(id))) {
    s.rows = topUntied(ranking.flatMap((g) => g.map((id, j) => ({ id, tied: j > 0 }))));
  }
  for (const [key, r] of Object.entries(saved.ratings || {})) {
    const id = Number(key);
    if (!known.has(id) || !r) continue;
    const likert = Number.isInteger(r.likert) && r.likert >= 1 && r.likert <= LIKERT_MAX ? r.likert : null;
    const flags = (r.flags || []).filter((f) => !flagNames || flagNames.includes(f));
    if (likert || flags.length) s.ratings[id] = { likert, flags };
  }
  s.allUnacceptable = !!saved.all_unacceptable;
  s.comment = typeof saved.comment === "string" ? saved.comment : "";
  return s;
}
