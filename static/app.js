// Shared helpers for every page: JSON API calls with the session's CSRF token.
"use strict";
window.rlhf = (function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

  async function api(method, url, body) {
    const opts = { method, headers: { "Accept": "application/json", "X-CSRF-Token": csrf() }, credentials: "same-origin" };
    if (body instanceof FormData) {
      opts.body = body;
    } else if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(url, opts);
    let data = null;
    const type = res.headers.get("content-type") || "";
    if (res.status !== 204 && type.includes("application/json")) data = await res.json();
    if (!res.ok) {
      let msg = `${res.status} ${res.statusText}`;
      if (data && data.message) msg = data.message;
      else if (data && typeof data.detail === "string") msg = data.detail;
      else if (data && Array.isArray(data.detail)) msg = data.detail.map(d => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
      const err = new Error(msg);
      err.status = res.status;
      err.data = data;
      throw err;
    }
    return { status: res.status, data };
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));  // text, never HTML
    }
    return node;
  }

  return { api, el, csrf };
})();
