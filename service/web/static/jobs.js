/* Job list (/ui/): status, algorithm, objective kind, progress, age; filter by status; refreshes itself. */
"use strict";

(() => {
  const { api, el, age, budgetProgress } = ZO;
  const rows = document.getElementById("job-rows");
  const filter = document.getElementById("status-filter");
  const more = document.getElementById("more");
  const empty = document.getElementById("empty");
  let cursor = null, pages = 1;

  filter.value = new URLSearchParams(location.search).get("status") || "";

  function row(job) {
    const [done, limit, unit] = budgetProgress(job);
    const title = job.name || job.spec?.objective?.function || job.objective_kind;
    const bar = el("div", { class: "bar" },
      limit ? el("progress", { max: limit, value: Math.min(done, limit), "aria-label": `${done} of ${limit} ${unit}` }) : null,
      el("span", { text: limit ? `${done} / ${limit} ${unit}` : `${done} ${unit}` }));
    return el("tr", { "data-id": job.id, "data-status": job.status },
      el("td", {}, el("a", { class: "name", href: "/ui/jobs/" + encodeURIComponent(job.id), text: title }),
        el("span", { class: "id", text: job.id })),
      el("td", {}, el("span", { class: "badge " + job.status, text: job.status })),
      el("td", { class: "nowrap", text: job.algorithm }),
      el("td", { class: "nowrap", text: job.objective_kind + (job.spec?.objective?.oracle ? ` (${job.spec.objective.oracle})` : "") }),
      el("td", {}, bar),
      el("td", { class: "nowrap" }, el("time", { datetime: job.created_at, title: job.created_at, text: age(job.created_at) })));
  }

  async function load(reset) {
    const q = new URLSearchParams({ limit: "50" });
    if (filter.value) q.set("status", filter.value);
    const items = [];
    let next = null;
    try {
      for (let i = 0; i < (reset ? pages : 1); i++) {  // a refresh reloads as many pages as are shown
        if (next || (!reset && cursor)) q.set("cursor", next || cursor);
        const page = await api("GET", "/v1/jobs?" + q);
        items.push(...page.items);
        next = page.next_cursor;
        if (!next) break;
      }
    } catch (e) {
      if (e.status !== 401) empty.textContent = "Could not load jobs: " + e.message;
      empty.hidden = false;
      return;
    }
    if (reset) rows.replaceChildren();
    items.forEach((j) => rows.append(row(j)));
    cursor = next;
    more.hidden = !cursor;
    empty.hidden = rows.children.length > 0;
  }

  filter.addEventListener("change", () => {
    const url = new URL(location.href);
    if (filter.value) url.searchParams.set("status", filter.value); else url.searchParams.delete("status");
    history.replaceState(null, "", url);
    pages = 1; load(true);
  });
  more.addEventListener("click", () => { pages += 1; load(false); });
  ZO.onAuth(() => load(true));
  load(true);
  setInterval(() => { if (!document.hidden) load(true); }, 4000);
})();
