/* zoserve browser client: the public API only, like the SDK.
 *
 * - Auth: a rater link's token (rank page via /ui/r/...) or the API key the user typed into the
 *   sign-in form, kept in sessionStorage and sent as `Authorization: Bearer ...` by fetch.
 * - Events: Server-Sent Events read over fetch + ReadableStream (EventSource cannot send headers),
 *   resuming after the last seen id (Last-Event-ID) when the connection drops or the server restarts.
 */
"use strict";

const ZO = (() => {
  const KEY = "zoserve.apiKey";
  let raterToken = "";

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const k = raterToken || sessionStorage.getItem(KEY);
    if (k) h.Authorization = "Bearer " + k;
    return h;
  }

  class ApiError extends Error {
    constructor(status, problem, fallback) {
      super((problem && (problem.detail || problem.title)) || fallback);
      this.status = status; this.problem = problem;
    }
  }

  /** JSON request to the public API; throws ApiError (status 0: the server is unreachable). */
  async function api(method, path, body) {
    const init = { method, headers: headers({ Accept: "application/json" }), cache: "no-store" };
    if (body !== undefined) { init.headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    let res;
    try { res = await fetch(path, init); } catch (e) { throw new ApiError(0, null, "cannot reach the server"); }
    if (res.status === 401 && !raterToken) needLogin("This server needs an API key.");
    const type = res.headers.get("content-type") || "";
    const data = type.includes("json") ? await res.json().catch(() => null) : null;
    if (!res.ok) throw new ApiError(res.status, data, res.statusText || "request failed");
    return data;
  }

  const images = new Map();
  /** An object URL for an authenticated image (img tags cannot send the Authorization header). */
  async function image(path) {
    if (images.has(path)) return images.get(path);
    const p = (async () => {
      const res = await fetch(path, { headers: headers() });  // the HTTP cache keeps it (immutable)
      if (!res.ok) throw new ApiError(res.status, null, "image " + res.status);
      return URL.createObjectURL(await res.blob());
    })();
    images.set(path, p);
    p.catch(() => images.delete(path));
    return p;
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  /** Parse SSE text blocks; calls onEvent({id, type, data}) per dispatched event. */
  function parseBlock(block, onEvent) {
    let id = null, type = "message", data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "id") id = value; else if (field === "event") type = value; else if (field === "data") data.push(value);
    }
    if (data.length) onEvent({ id, type, data: JSON.parse(data.join("\n")) });
  }

  /**
   * Follow a job's events: onEvent(event) for each, onState("open"|"retrying"|"closed"|"gone").
   * Reconnects with backoff after the last id; stops after the terminal event. Returns stop().
   */
  function stream(jobId, onEvent, onState) {
    const path = "/v1/jobs/" + encodeURIComponent(jobId) + "/events";
    let lastId = null, stopped = false, ctrl = null;
    const state = onState || (() => {});
    async function finished() {  // a clean close without a terminal event: is the job over?
      const after = lastId || "0";
      const page = await api("GET", path + "?after=" + encodeURIComponent(after) + "&limit=1");
      return page && page.done && !page.items.length;
    }
    (async () => {
      let delay = 400;
      while (!stopped) {
        let terminal = false;
        try {
          ctrl = new AbortController();
          const h = headers({ Accept: "text/event-stream" });
          if (lastId) h["Last-Event-ID"] = lastId;
          const res = await fetch(path, { headers: h, signal: ctrl.signal, cache: "no-store" });
          if (res.status === 401 || res.status === 404) { state("gone", res.status); return; }
          if (!res.ok) throw new Error("HTTP " + res.status);
          state("open"); delay = 400;
          const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
          let buf = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += value.replace(/\r\n?/g, "\n");
            let cut;
            while ((cut = buf.indexOf("\n\n")) >= 0) {
              const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
              parseBlock(block, (ev) => {
                if (ev.id) lastId = ev.id;
                ev.data.id = ev.id;
                if (ev.type === "result" || ev.type === "error") terminal = true;
                onEvent(ev.data);
              });
            }
          }
          if (terminal || await finished()) { state("closed"); return; }
        } catch (e) {
          if (stopped) return;
          state("retrying");
        }
        await sleep(delay); delay = Math.min(delay * 2, 4000);
      }
    })();
    return () => { stopped = true; if (ctrl) ctrl.abort(); };
  }

  // ---- sign-in (dashboard pages only; rater pages carry their token) ----
  const authListeners = [];
  function onAuth(fn) { authListeners.push(fn); }
  function needLogin(msg) {
    const form = document.getElementById("login"), banner = document.getElementById("auth-msg");
    if (!form) return;
    form.hidden = false;
    document.getElementById("who").hidden = true;
    banner.textContent = msg + " Enter it above (it is kept only in this browser tab).";
    banner.hidden = false;
  }
  function setupLogin() {
    const form = document.getElementById("login");
    if (!form) return;
    const who = document.getElementById("who");
    if (sessionStorage.getItem(KEY)) who.hidden = false;
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      const input = document.getElementById("api-key");
      sessionStorage.setItem(KEY, input.value.trim());
      input.value = "";
      form.hidden = true; who.hidden = false;
      document.getElementById("auth-msg").hidden = true;
      authListeners.forEach((fn) => fn());
    });
    document.getElementById("logout").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      location.reload();
    });
  }
  document.addEventListener("DOMContentLoaded", setupLogin);

  // ---- small helpers ----
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }
  function num(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6)) return v.toExponential(3);
    return Number(v.toPrecision(5)).toString();
  }
  function age(iso) {
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  }
  /** The budget limit closest to stopping the job: [done, limit, unit] (limit null if none). */
  function budgetProgress(job) {
    const b = (job.spec && job.spec.budget) || {}, p = job.progress || {};
    const limits = [[p.queries || 0, b.max_queries, "queries"], [p.step || 0, b.max_steps, "steps"]].filter((l) => l[1]);
    if (!limits.length) return [p.step || 0, null, "steps"];
    return limits.reduce((a, l) => (l[0] / l[1] > a[0] / a[1] ? l : a));
  }

  return {
    api, image, stream, onAuth, el, num, age, budgetProgress, ApiError, sleep,
    useRaterToken(t) { raterToken = t; },
    jobPath: (id) => "/v1/jobs/" + encodeURIComponent(id),
  };
})();
