// The lease on the task shown: the countdown in the work bar, and renewal while the labeler
// is active (at half the lease, at most every 30 s, after activity in the last 10 minutes).
// Also keeps the offset of the server's clock, which the undo countdown and the empty
// state use.

import * as api from "./api.js";
import { fmtClock } from "./dom.js";

const ACTIVE_MS = 10 * 60 * 1000;
const WARN_MS = 5 * 60 * 1000;
const RENEW_GAP_MS = 30 * 1000;

export function createLease({ node, leaseMinutes, onError }) {
  let task = null; // { id, expiresAt, lost }
  let skewMs = 0; // server clock minus client clock
  let lastActivity = Date.now();
  let lastRenew = 0;
  let renewing = false;
  const serverNow = () => Date.now() + skewMs;

  function tick() {
    if (!task) { node.hidden = true; return; }
    const ms = task.expiresAt - serverNow();
    node.hidden = false;
    node.classList.toggle("warn", ms > 0 && ms < WARN_MS);
    node.classList.toggle("expired", ms <= 0);
    node.textContent = ms > 0 ? `Lease ${fmtClock(ms)}` : "Lease expired";
    const half = (leaseMinutes * 60 * 1000) / 2;
    const active = Date.now() - lastActivity < ACTIVE_MS && lastActivity > lastRenew;
    if (!renewing && !task.lost && active && ms < half && Date.now() - lastRenew > RENEW_GAP_MS) renew();
  }

  async function renew() {
    const current = task;
    renewing = true;
    lastRenew = Date.now();
    try {
      const res = await api.renew(current.id);
      if (task === current) {
        current.expiresAt = Date.parse(res.lease_expires_at);
        skewMs = Date.parse(res.server_time) - Date.now();
      }
    } catch (err) {
      if (task === current) {
        if (err.status === 409 || err.status === 403 || err.status === 404) current.lost = true;
        onError(err);
      }
    } finally {
      renewing = false;
      tick();
    }
  }

  ["keydown", "pointerdown", "input", "wheel"].forEach((ev) =>
    document.addEventListener(ev, () => { lastActivity = Date.now(); }, { passive: true, capture: true }));
  setInterval(tick, 1000);

  return {
    // Count down the lease of task ``t`` (a TaskOut), or of nothing.
    show(t) {
      task = t ? { id: t.id, expiresAt: Date.parse(t.lease_expires_at), lost: false } : null;
      if (t) {
        skewMs = Date.parse(t.server_time) - Date.now();
        lastRenew = Date.now();
      }
      tick();
    },
    serverNow,
    // A server timestamp as the labeler's local wall-clock time ("14:05").
    localTime: (iso) => new Date(Date.parse(iso) - skewMs).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
  };
}
