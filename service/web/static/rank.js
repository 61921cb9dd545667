/* The ranking form (/ui/jobs/{id}/rank, /ui/r/{token}).
 *
 * Shows the job's pending ranking query as m large images; the person orders them by clicking
 * (numbers appear), by keyboard (1–9 or the letters, Backspace undoes, Esc clears, Enter submits)
 * or by dragging onto the slots of "Your ranking". Only k picks are needed (top-k oracle).
 * Submitting posts {"ranking": [...]} to the public API; the next query arrives over SSE. A 409
 * (double submit, or answered elsewhere) ends the round without counting twice; while the server
 * is unreachable the ranking is kept and re-sent, and the page resumes on the same pending query.
 */
"use strict";

(() => {
  const { api, el, jobPath, sleep } = ZO;
  const $ = (id) => document.getElementById(id);
  const root = $("rank");
  const jobId = root.dataset.job;
  if (root.dataset.rater) ZO.useRaterToken(root.dataset.rater);
  const qpath = jobPath(jobId) + "/queries";
  const png = (qid, cid) => `${qpath}/${encodeURIComponent(qid)}/candidates/${encodeURIComponent(cid)}.png`;

  let budget = root.dataset.budget ? JSON.parse(root.dataset.budget) : null;
  let query = null, k = 1, m = 0, picks = [], autoFilled = false;
  let submitting = false, finished = false, refreshing = false, again = false, notice = "";
  const answered = new Set();
  const history = new Map();  // step -> {qid, best}

  function status(text, isError) {
    const s = $("status");
    s.textContent = text || "";
    s.classList.toggle("error", !!isError);
  }
  function setConn(state) {
    const c = $("conn");
    c.dataset.state = state;
    c.textContent = { open: "live", retrying: "reconnecting…", closed: "finished", connecting: "connecting…", gone: "link not valid" }[state] || state;
  }

  function left(step) {
    if (!budget) return null;
    const lim = [budget.max_queries, budget.max_steps].filter((v) => v);
    return lim.length ? Math.max(0, Math.min(...lim) - (step - 1)) : null;
  }

  function instructions() {
    if (k === 1) return `Click your favourite of these ${m}${m <= 9 ? ` (or press 1–${m})` : ""}, then Submit.`;
    if (k >= m) return `Rank all ${m}: click them from best to worst${m <= 9 ? ` (or press 1–${m})` : ""}, then Submit.`;
    return `Pick your top ${k} of these ${m}, best first${m <= 9 ? ` (or press 1–${m})` : ""}, then Submit.`;
  }

  // ---- one round ----
  function show(q) {
    const hadFocus = !document.activeElement || document.activeElement === document.body || document.activeElement.classList.contains("cand");
    query = q; k = Math.min(q.k || q.candidates.length, q.candidates.length); m = q.candidates.length;
    picks = []; autoFilled = false;
    $("round").textContent = "Round " + q.step;
    const l = left(q.step);
    $("left").textContent = l === null ? "" : `${l} ${l === 1 ? "query" : "queries"} left`;
    $("left").hidden = l === null;
    $("instructions").textContent = instructions();
    const grid = $("grid");
    grid.classList.remove("busy");
    grid.style.setProperty("--cols", String(m <= 6 ? m : Math.ceil(m / Math.ceil(m / 6))));  // one row up to 6
    grid.replaceChildren(...q.candidates.map((c, i) => {
      const img = el("img", { alt: "Candidate " + c.id, draggable: "false" });
      ZO.image(png(q.id, c.id)).then((u) => { img.src = u; }).catch(() => { img.alt = `Candidate ${c.id} (image failed to load)`; });
      const card = el("button", { type: "button", class: "cand", id: "cand-" + c.id, "data-id": c.id, draggable: "true",
                                  "aria-pressed": "false", onclick: () => pick(c.id) },
        el("span", { class: "rankno", "aria-hidden": "true" }), img,
        el("span", { class: "cap" }, el("span", { text: c.id }), i < 9 ? el("span", { class: "key", text: "key " + (i + 1) }) : null));
      card.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", c.id); e.dataTransfer.effectAllowed = "move"; card.classList.add("dragging"); });
      card.addEventListener("dragend", () => card.classList.remove("dragging"));
      return card;
    }));
    buildTray();
    update();
    status(`${notice}Round ${q.step}: ${m} new candidates.`);
    notice = "";
    if (hadFocus) grid.querySelector(".cand")?.focus({ preventScroll: true });
  }

  function buildTray() {
    $("tray").replaceChildren(...Array.from({ length: k }, (_, i) => {
      const slot = el("li", { class: "slot", "data-slot": String(i), "aria-label": `Rank ${i + 1}: empty` }, el("span", { class: "n", text: String(i + 1) }));
      slot.addEventListener("dragover", (e) => { e.preventDefault(); slot.classList.add("over"); });
      slot.addEventListener("dragleave", () => slot.classList.remove("over"));
      slot.addEventListener("drop", (e) => {
        e.preventDefault(); slot.classList.remove("over");
        const id = e.dataTransfer.getData("text/plain");
        if (id) place(id, i);
      });
      slot.addEventListener("dragstart", (e) => { if (picks[i]) e.dataTransfer.setData("text/plain", picks[i]); });
      return slot;
    }));
  }

  function update() {
    const grid = $("grid");
    for (const card of grid.querySelectorAll(".cand")) {
      const r = picks.indexOf(card.dataset.id);
      card.classList.toggle("picked", r >= 0);
      card.setAttribute("aria-pressed", String(r >= 0));
      card.querySelector(".rankno").textContent = r >= 0 ? String(r + 1) : "";
      card.setAttribute("aria-label", `Candidate ${card.dataset.id}` + (r >= 0 ? `, your number ${r + 1}` : ""));
      card.disabled = submitting || finished;
    }
    [...$("tray").children].forEach((slot, i) => {
      const id = picks[i];
      slot.classList.toggle("filled", !!id);
      slot.draggable = !!id;
      slot.setAttribute("aria-label", id ? `Rank ${i + 1}: candidate ${id}` : `Rank ${i + 1}: empty`);
      const kids = [el("span", { class: "n", text: id ? `${i + 1} · ${id}` : String(i + 1) })];
      if (id) {
        const img = el("img", { alt: "", draggable: "false" });
        ZO.image(png(query.id, id)).then((u) => { img.src = u; }).catch(() => {});
        kids.unshift(img);
      }
      slot.replaceChildren(...kids);
    });
    $("undo").disabled = !picks.length || submitting || finished;
    $("clear").disabled = !picks.length || submitting || finished;
    $("submit").disabled = !query || picks.length < k || submitting || finished || answered.has(query.id);
  }

  function pick(id) {
    if (!query || submitting || finished || answered.has(query.id)) return;
    const at = picks.indexOf(id);
    if (at >= 0) {  // clicking a picked candidate takes it (and only it) back
      picks.splice(at, 1); autoFilled = false;
      status(`Took back ${id}.`);
    } else if (picks.length < k) {
      picks.push(id);
      status(`${id} is your number ${picks.length}.` + (picks.length === k ? " Press Enter or Submit." : ""));
      if (k === m && picks.length === m - 1) {  // a full ranking: the last one is implied
        picks.push(query.candidates.find((c) => !picks.includes(c.id)).id);
        autoFilled = true;
      }
    } else {
      status(`You have picked ${k}. Submit, or undo a pick.`);
    }
    update();
  }

  function place(id, index) {
    if (!query || submitting || finished || !query.candidates.some((c) => c.id === id)) return;
    picks = picks.filter((p) => p !== id);
    picks.splice(Math.min(index, picks.length), 0, id);
    picks = picks.slice(0, k); autoFilled = false;
    status(`${id} is your number ${picks.indexOf(id) + 1}.`);
    update();
  }

  function undo() {
    if (!picks.length || submitting || finished) return;
    if (autoFilled) { picks.pop(); autoFilled = false; }
    const id = picks.pop();
    status(`Undid ${id}.`);
    update();
  }
  function clear() { if (submitting || finished) return; picks = []; autoFilled = false; status("Cleared."); update(); }

  async function submit() {
    if (!query || submitting || finished || picks.length < k || answered.has(query.id)) return;
    submitting = true;
    const q = query, ranking = picks.slice();
    update();
    status("Sending your ranking…");
    for (let wait = 500; ; wait = Math.min(wait * 2, 3000)) {
      try {
        await api("POST", `${qpath}/${encodeURIComponent(q.id)}/answer`, { ranking });
        return accepted(q, ranking[0], "Thanks! Waiting for the next candidates…");
      } catch (e) {
        if (e.status === 409) {  // answered already (a double submit, another tab or rater): never counted twice
          const stored = await api("GET", `${qpath}/${encodeURIComponent(q.id)}/answer`).catch(() => null);
          notice = `Round ${q.step} was already answered (not counted twice). `;
          return accepted(q, stored && stored.ranking ? stored.ranking[0] : ranking[0],
                          "This round was already answered; moving on to the next one.");
        }
        if (e.status === 0 || e.status >= 500) {
          status("Cannot reach the server. Your ranking is kept and will be sent when it is back…", true);
          setConn("retrying");
          await sleep(wait);
          continue;
        }
        submitting = false; update();
        status(e.status === 404 ? "This round is gone; loading the current one…" : "Not accepted: " + e.message, true);
        if (e.status === 404) refresh();
        return;
      }
    }
  }

  function accepted(q, best, message) {
    answered.add(q.id);
    submitting = false;
    addHistory(q.step, q.id, best);
    $("grid").classList.add("busy");
    update();
    status(message);
    refresh();
  }

  // ---- strip of past winners ----
  function addHistory(step, qid, best) {
    if (!best || history.has(step)) return;
    history.set(step, { qid, best });
    const items = [...history.entries()].sort((a, b) => a[0] - b[0]);
    $("strip").replaceChildren(...items.map(([s, h]) => {
      const img = el("img", { alt: `Round ${s}: candidate ${h.best}` });
      ZO.image(png(h.qid, h.best)).then((u) => { img.src = u; }).catch(() => {});
      return el("li", { "data-step": String(s) }, img, el("span", { text: "Round " + s }));
    }));
    $("strip-empty").hidden = true;
    $("strip").lastElementChild?.scrollIntoView({ block: "nearest", inline: "end" });
  }

  async function loadHistory() {
    const page = await api("GET", qpath + "?status=answered").catch(() => null);
    if (!page) return;
    const recent = page.items.filter((q) => q.kind === "ranking").slice(-24);
    const answers = await Promise.all(recent.map((q) =>
      api("GET", `${qpath}/${encodeURIComponent(q.id)}/answer`).then((a) => [q, a]).catch(() => [q, null])));
    for (const [q, a] of answers) if (a && a.ranking) addHistory(q.step, q.id, a.ranking[0]);
  }

  // ---- the current pending query ----
  async function refresh() {
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      do {
        again = false;
        const page = await api("GET", qpath + "?status=pending");
        const q = page.items.find((p) => p.kind === "ranking" && !answered.has(p.id));
        if (q && (!query || q.id !== query.id)) show(q);  // the same query (e.g. after a restart) keeps its picks
      } while (again);
    } catch (e) {
      if (e.status === 0) { setConn("retrying"); setTimeout(refresh, 1500); }
      else if (e.status === 401 || e.status === 404) status("This form is not available: " + e.message, true);
    } finally {
      refreshing = false;
    }
  }

  function finish(message) {
    finished = true;
    $("grid").classList.add("busy");
    $("instructions").replaceChildren(el("span", { class: "done", text: message }));
    update();
    status("");
  }

  function onEvent(ev) {
    if (ev.type === "query") refresh();
    else if (ev.type === "status" && ev.status === "waiting") refresh();
    else if (ev.type === "result") finish(`All done, thank you! The job finished after ${ev.result.queries} rounds (${ev.result.reason}).`);
    else if (ev.type === "error") finish(ev.status === "cancelled" ? "The job was cancelled; there is nothing left to rank." : "The job stopped with an error: " + (ev.problem.detail || ev.problem.title));
  }

  // ---- keyboard, buttons ----
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest("input, textarea, select, summary, a")) return;
    if (!query) return;
    if (/^[1-9]$/.test(e.key)) {
      const c = query.candidates[Number(e.key) - 1];
      if (c) { e.preventDefault(); pick(c.id); }
    } else if (/^[a-zA-Z]$/.test(e.key) && query.candidates.some((c) => c.id === e.key.toUpperCase())) {
      e.preventDefault(); pick(e.key.toUpperCase());
    } else if (e.key === "Backspace") {
      e.preventDefault(); undo();
    } else if (e.key === "Escape") {
      clear();
    } else if (e.key === "Enter" && picks.length >= k) {
      const other = e.target.closest("button:not(.cand):not(#submit)");
      if (!other) { e.preventDefault(); submit(); }
    }
  });
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clear);
  $("submit").addEventListener("click", submit);
  $("grid").addEventListener("dragover", (e) => e.preventDefault());
  $("grid").addEventListener("drop", (e) => {  // a pick dragged back from the tray is taken back
    e.preventDefault();
    const id = e.dataTransfer.getData("text/plain");
    if (picks.includes(id) && !e.target.closest(".slot")) { picks = picks.filter((p) => p !== id); autoFilled = false; update(); }
  });

  let started = false;
  async function start() {
    if (started) return;
    if (!root.dataset.rater) {
      try {
        const job = await api("GET", jobPath(jobId));
        budget = job.spec.budget || null;
        if (job.name) $("goal").textContent = job.name;
        if (job.objective_kind !== "ranking") { finish("This job is not a ranking job; there is nothing to rank."); return; }
      } catch (e) {
        status(e.status === 404 ? "No such job (or it belongs to another key)." : e.status === 401 ? "" : "Could not load the job: " + e.message, true);
        if (e.status === 401 || e.status === 404) return;
      }
    }
    if (started) return;
    started = true;
    await loadHistory();
    await refresh();
    let wasDown = false;
    ZO.stream(jobId, onEvent, (s) => {
      setConn(s);
      if (s === "retrying") wasDown = true;
      if (s === "open" && wasDown) { wasDown = false; status(submitting ? "Back online; sending…" : "Back online."); refresh(); }
    });
    // safety net: if an event was missed while waiting for the next round, poll
    setInterval(() => { if (!finished && !document.hidden && (!query || answered.has(query.id))) refresh(); }, 3000);
  }
  ZO.onAuth(start);
  start();
})();
