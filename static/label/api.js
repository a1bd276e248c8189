// The labeling endpoints of the JSON API (docs/labeling.md). Requests go through rlhf.api
// (static/app.js, shared with the admin pages): it sends the session cookie and the page's
// CSRF token, and turns an error answer into an Error with .status and the server's message.

const { api } = window.rlhf;
const TASKS = "/api/v1/tasks";

// The next task of ``kind`` in the set, or null when nothing is left for this labeler (204).
export async function nextTask(promptSetId, kind) {
  const res = await api("POST", `${TASKS}/next`, { prompt_set_id: promptSetId, kind });
  return res.status === 204 ? null : res.data;
}

export const progress = async (promptSetId) =>
  (await api("GET", `${TASKS}/progress?prompt_set_id=${encodeURIComponent(promptSetId)}`)).data;

// POST the answer to /tasks/{id}/{endpoint} ("ranking", "demonstration", ...). Resubmitting
// an identical body is answered like the first time, so a retry after a network error is safe.
export const submit = async (taskId, endpoint, body) => (await api("POST", `${TASKS}/${taskId}/${endpoint}`, body)).data;

export const skip = async (taskId, reason) => (await api("POST", `${TASKS}/${taskId}/skip`, { reason: reason || null })).data;

// The task again, with ``previous`` = the answer taken back.
export const undo = async (taskId) => (await api("POST", `${TASKS}/${taskId}/undo`)).data;

export const renew = async (taskId) => (await api("POST", `${TASKS}/${taskId}/renew`)).data;

// Compare tasks come from an evaluation, not a prompt set (docs/evaluations.md).
export async function nextCompareTask(evaluationId) {
  const res = await api("POST", `${TASKS}/next`, { evaluation_id: evaluationId, kind: "compare" });
  return res.status === 204 ? null : res.data;
}

export const compareProgress = async (evaluationId) =>
  (await api("GET", `${TASKS}/progress?evaluation_id=${encodeURIComponent(evaluationId)}`)).data;
