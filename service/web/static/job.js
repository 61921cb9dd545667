/* Job page (/ui/jobs/{id}): live convergence plot from the event stream, config, result,
 * downloads, cancel, and for ranking jobs the form link and rater links. */
"use strict";

(() => {
  const { api, el, num, age, jobPath } = ZO;
  const root = document.getElementById("job");
  const jobId = root.dataset.job;
  const $ = (id) => document.getElementById(id);
  const series = { value: [], best: [], rate: [] };  // [queries, y] pairs
  let job = null, moves = 0, searches = 0, drawQueued = false, stop = null;

  // ---- plot (inline SVG) ----
  const NS = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
    return n;
  };

  /** Round tick values in [a, b] (for a log axis a and b are log10 values; ticks are decades). */
  function ticks(a, b, log, integer) {
    if (log) {
      const lo = Math.ceil(a - 1e-9), hi = Math.floor(b + 1e-9), every = Math.max(1, Math.ceil((hi - lo + 1) / 6));
      const out = [];
      for (let e = lo; e <= hi; e += every) out.push(Math.pow(10, e));
      if (out.length >= 2) return out;
    }
    const raw = (b - a) / 5, mag = Math.pow(10, Math.floor(Math.log10(raw))), n = raw / mag;
    const step = Math.max((n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag, integer ? 1 : 0);
    const out = [];
    for (let v = Math.ceil(a / step) * step; v <= b + step * 1e-9; v += step) out.push(log ? Math.pow(10, v) : Number(v.toPrecision(12)));
    return out;
  }
  const tickLabel = (v, log) => (log && (v < 1e-2 || v >= 1e4) ? v.toExponential(0).replace("e+", "e") : num(v));

  function draw() {
    drawQueued = false;
    const W = 900, H = 300, L = 70, R = 16, T = 14, B = 40;
    const useRate = !series.value.length && series.rate.length;
    const lines = useRate ? { rate: series.rate } : { value: series.value, best: series.best };
    const pts = Object.values(lines).flat();
    const box = $("plot");
    if (!pts.length) {
      box.replaceChildren(el("p", { class: "note", text: "No values yet: the plot fills in as the job reports progress." }));
      return;
    }
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    let x0 = Math.min(...xs), x1 = Math.max(...xs);
    if (x1 === x0) x1 = x0 + 1;
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    const log = !useRate && y0 > 0 && y1 / y0 > 100;
    const f = log ? Math.log10 : (v) => v;
    if (useRate) { y0 = 0; y1 = 1; }
    let a = f(y0), b = f(y1);
    if (b === a) { a -= 1; b += 1; }
    if (log) { a = Math.floor(a); b = Math.ceil(b); }  // whole decades
    const sx = (v) => L + ((v - x0) / (x1 - x0)) * (W - L - R);
    const sy = (v) => T + (1 - (f(v) - a) / (b - a)) * (H - T - B);
    const out = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "data-points": String(pts.length),
      "aria-label": useRate ? "How often a new candidate beat the current one, versus queries"
                            : `Objective value and best value versus queries${log ? " (log scale)" : ""}` });
    for (const v of ticks(a, b, log)) {
      const y = sy(v);
      out.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y, y2: y }));
      const t = svg("text", { x: L - 8, y: y + 4, "text-anchor": "end" }); t.textContent = tickLabel(v, log); out.append(t);
    }
    for (const xv of ticks(x0, x1, false, true)) {
      const tx = svg("text", { x: sx(xv), y: H - B + 18, "text-anchor": "middle" }); tx.textContent = tickLabel(xv, false); out.append(tx);
    }
    out.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    out.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    const xl = svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }); xl.textContent = "queries"; out.append(xl);
    for (const [name, data] of Object.entries(lines)) {
      if (!data.length) continue;
      const d = data.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      out.append(svg("path", { class: "series-" + name, d }));
      if (data.length <= 60) for (const p of data) out.append(svg("circle", { class: "dot-" + name, cx: sx(p[0]), cy: sy(p[1]), r: 3.5 }));
    }
    box.replaceChildren(out);
    $("plot-note").textContent = useRate
      ? "Win-rate: the share of line-search rounds in which a new candidate beat the current one."
      : "Light line: the value at each step; dark line: the best so far." + (log ? " Log scale." : "");
  }
  const redraw = () => { if (!drawQueued) { drawQueued = true; requestAnimationFrame(draw); } };

  function onProgress(ev) {
    const x = ev.queries;
    if (ev.value !== null && ev.value !== undefined) series.value.push([x, ev.value]);
    if (ev.best_value !== null && ev.best_value !== undefined) series.best.push([x, ev.best_value]);
    if (ev.extra && ev.extra.moved !== undefined) {
      searches += 1; moves += ev.extra.moved;
      series.rate.push([x, moves / searches]);
    }
    showProgress(ev);
    redraw();
  }

  // ---- panels ----
  function showProgress(p) {
    const rows = [["step", p.step], ["queries", p.queries], ["evaluations", p.evaluations],
                  ["failed queries", p.failed_queries], ["value", p.value], ["best value", p.best_value]];
    $("progress").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: num(v) })]));
  }

  function download(name, getBlob) {
    return el("li", {}, el("button", { type: "button", class: "link-button", onclick: async () => {
      const blob = await getBlob();
      const a = el("a", { href: URL.createObjectURL(blob), download: name });
      document.body.append(a); a.click(); a.remove();
    } }, "Download " + name));
  }

  function showJob(j) {
    job = j;
    $("job-title").textContent = j.name || j.id;
    const badge = $("job-status");
    badge.textContent = j.status; badge.className = "badge " + j.status;
    $("cancel").hidden = ["succeeded", "failed", "cancelled"].includes(j.status);
    $("config").textContent = JSON.stringify({ algorithm: j.algorithm, ...j.spec }, null, 2);
    showProgress(j.progress || {});
    const o = j.spec.objective || {};
    const human = o.kind === "ranking" && (o.oracle === "human" || o.oracle === "client");
    $("rank-link").hidden = !human || $("cancel").hidden;
    $("raters-card").hidden = !human;
    const res = $("result");
    if (j.result) {
      const r = j.result, x = r.x_best;
      res.replaceChildren(el("dl", { class: "kv" },
        el("dt", { text: "best value" }), el("dd", { text: num(r.value_best) }),
        el("dt", { text: "steps" }), el("dd", { text: num(r.steps) }),
        el("dt", { text: "queries" }), el("dd", { text: num(r.queries) }),
        el("dt", { text: "stopped" }), el("dd", { text: r.reason }),
        el("dt", { text: "x_best" }), el("dd", { text: x.slice(0, 6).map(num).join(", ") + (x.length > 6 ? `, … (${x.length} values)` : "") })));
    } else if (j.error) {
      res.replaceChildren(el("p", { class: "status error", text: `${j.error.title}: ${j.error.detail || ""}` }));
    }
    const list = [download("job.json", async () => new Blob([JSON.stringify(await api("GET", jobPath(jobId)), null, 2)], { type: "application/json" }))];
    for (const a of (j.result && j.result.artifacts) || []) {
      list.push(download(a.name, async () => {
        const res = await fetch(a.url, { headers: { Authorization: "Bearer " + (sessionStorage.getItem("zoserve.apiKey") || "") } });
        return res.blob();
      }));
    }
    $("artifacts").replaceChildren(...list);
  }

  async function loadJob() {
    try { showJob(await api("GET", jobPath(jobId))); } catch (e) {
      $("job-msg").textContent = e.status === 404 ? "No such job (or it belongs to another key)." : "Could not load the job: " + e.message;
      return false;
    }
    return true;
  }

  // ---- cancel (two clicks: the first asks) ----
  const cancel = $("cancel");
  cancel.addEventListener("click", async () => {
    if (cancel.dataset.armed !== "1") {
      cancel.dataset.armed = "1"; cancel.textContent = "Really cancel?";
      setTimeout(() => { cancel.dataset.armed = ""; cancel.textContent = "Cancel job"; }, 4000);
      return;
    }
    cancel.disabled = true;
    try { showJob(await api("POST", jobPath(jobId) + "/cancel")); $("job-msg").textContent = "Cancel requested."; }
    catch (e) { $("job-msg").textContent = "Cancel failed: " + e.message; }
    cancel.disabled = false; cancel.dataset.armed = ""; cancel.textContent = "Cancel job";
  });

  // ---- rater links ----
  async function loadLinks() {
    let page;
    try { page = await api("GET", jobPath(jobId) + "/rater-links"); } catch (e) { return; }
    $("links").replaceChildren(...page.items.map((l) => el("li", { "data-link": l.id },
      el("span", {}, el("code", { text: l.id }), ` · expires ${new Date(l.expires_at).toLocaleString()}`),
      el("button", { type: "button", class: "danger", "aria-label": "Revoke rater link " + l.id, onclick: async () => {
        await api("DELETE", jobPath(jobId) + "/rater-links/" + encodeURIComponent(l.id)).catch(() => {});
        loadLinks();
      } }, "Revoke"))));
  }
  $("make-link").addEventListener("click", async () => {
    try {
      const link = await api("POST", jobPath(jobId) + "/rater-links", {});
      const url = location.origin + new URL(link.url).pathname;  // the origin this browser reaches
      $("new-link").hidden = false;
      $("link-url").value = url;
      $("link-url").focus(); $("link-url").select();
      loadLinks();
    } catch (e) { $("job-msg").textContent = "Could not make a rater link: " + e.message; }
  });
  $("copy-link").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText($("link-url").value); $("job-msg").textContent = "Link copied."; }
    catch (e) { $("link-url").select(); $("job-msg").textContent = "Press Ctrl+C to copy the selected link."; }
  });

  // ---- live ----
  async function start() {
    if (stop) stop();
    if (!(await loadJob())) return;
    if (!$("raters-card").hidden) loadLinks();
    series.value.length = series.best.length = series.rate.length = 0; moves = searches = 0;
    redraw();
    stop = ZO.stream(jobId, (ev) => {
      if (ev.type === "progress") onProgress(ev);
      else if (ev.type === "status" || ev.type === "result" || ev.type === "error") loadJob();
    }, (s) => { if (s === "retrying") $("job-msg").textContent = "Connection lost; reconnecting…"; else if (s === "open") $("job-msg").textContent = ""; });
    setInterval(() => { if (job && !document.hidden) $("job-status").title = "updated " + age(job.updated_at); }, 5000);
  }
  ZO.onAuth(start);
  start();
})();
