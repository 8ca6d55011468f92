// sessiongate helpdesk console: plain JavaScript, no framework, no build step.
// Every call goes to this server's public API with the signed-in user's credential.
// All data is written with textContent and DOM nodes (no HTML strings), so nothing a
// backend or a user typed can become markup.
"use strict";

(() => {
  const STORE = "sessiongate.console.credential";
  const $ = (id) => document.getElementById(id);

  // ---- credential (session storage only: gone when the tab closes) ----
  function credential() {
    try {
      const raw = sessionStorage.getItem(STORE);
      return raw ? JSON.parse(raw) : null;
    } catch (_) {
      return null;
    }
  }
  function saveCredential(kind, value) {
    sessionStorage.setItem(STORE, JSON.stringify({ kind, value }));
  }
  function forgetCredential() {
    sessionStorage.removeItem(STORE);
  }

  // ---- small DOM helpers ----
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }
  function show(node, on) {
    node.hidden = !on;
  }
  function fmtTime(t) {
    if (!t) return "";
    return String(t).replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC");
  }

  // ---- the API ----
  class ApiProblem extends Error {
    constructor(status, problem) {
      super((problem && problem.title) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem || {};
    }
  }

  async function api(method, path, body) {
    const cred = credential();
    const headers = { Accept: "application/json" };
    if (cred) headers.Authorization = `Bearer ${cred.value}`;
    const init = { method, headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(path, init);
    } catch (e) {
      throw new ApiProblem(0, { title: "The server could not be reached", detail: String(e) });
    }
    let data = null;
    const text = await r.text();
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = { title: `HTTP ${r.status}`, detail: text.slice(0, 300) };
      }
    }
    if (r.status === 401) {
      // The credential was refused (or expired): back to sign-in, with the problem's title.
      signOut(data && data.title ? data.title : "Unauthenticated");
      throw new ApiProblem(401, data);
    }
    if (!r.ok) throw new ApiProblem(r.status, data);
    return { status: r.status, data, location: r.headers.get("Location") };
  }

  // A problem as one line of text: title, code, detail, and for 403 the missing permission.
  function problemText(e) {
    if (!(e instanceof ApiProblem)) return String(e);
    const p = e.problem || {};
    let line = p.title || e.message;
    if (p.code) line += ` (${p.code})`;
    if (e.status === 403) {
      line += p.missing_permission
        ? ` — missing permission: ${p.missing_permission}`
        : " — no role grants this here";
    }
    if (p.detail && !(p.missing_permission && p.detail.includes(p.missing_permission))) {
      line += `: ${p.detail}`;
    }
    return line;
  }

  function clearError() {
    $("app-error").textContent = "";
    delete $("app-error").dataset.status;
  }

  function showError(node, e) {
    node.textContent = problemText(e);
    if (e instanceof ApiProblem && e.status === 403) node.dataset.status = "403";
    else delete node.dataset.status;
  }

  // ---- sign in / out ----
  function signedIn(note) {
    show($("signin-view"), false);
    show($("app-view"), true);
    show($("signout"), true);
    const cred = credential();
    $("who").textContent = note || (cred && cred.kind === "token" ? "Signed in with an access token" : "Signed in with an API key");
    show($("who"), true);
  }

  // Forgets everything the previous user saw (a shared helpdesk screen).
  function resetViews() {
    found = { upn: "", sessions: [] };
    pending = null;
    for (const id of ["sessions-body", "unreachable-list", "preview-body", "results-body", "jobs-body", "job-items", "audit-body"]) {
      clear($(id));
    }
    for (const id of ["sessions-table", "unreachable", "action-form", "preview", "results", "jobs-table", "job", "audit-table"]) {
      show($(id), false);
    }
    for (const id of ["search-status", "audit-status"]) $(id).textContent = "";
    for (const id of ["upn", "reason", "ticket", "msg-title", "msg-body", "audit-ticket", "audit-user"]) $(id).value = "";
    for (const [tab, panel] of TABS) {
      $(tab).setAttribute("aria-pressed", tab === "tab-sessions" ? "true" : "false");
      show($(panel), tab === "tab-sessions");
    }
  }

  function signOut(message) {
    forgetCredential();
    clearError();
    resetViews();
    stopJobWatch();
    show($("app-view"), false);
    show($("signout"), false);
    show($("who"), false);
    show($("signin-view"), true);
    $("signin-error").textContent = message || "";
    $("credential").value = "";
    $("credential").focus();
  }

  async function onSignIn(ev) {
    ev.preventDefault();
    const value = $("credential").value.trim();
    const kind = document.querySelector('input[name="kind"]:checked').value;
    if (!value) return;
    saveCredential(kind, value);
    $("signin-error").textContent = "";
    try {
      const { data } = await api("GET", "hostpools");
      const pools = (data && data.pools) || [];
      $("credential").value = "";
      signedIn(
        `${kind === "token" ? "Signed in with an access token" : "Signed in with an API key"}; ` +
          `pools you may see: ${pools.length ? pools.map((p) => p.name).join(", ") : "none"}`
      );
      $("upn").focus();
    } catch (e) {
      if (!(e instanceof ApiProblem) || e.status !== 401) {
        // Not a refused credential (e.g. the server is down): stay on sign-in and say why.
        forgetCredential();
        $("signin-error").textContent = problemText(e);
      }
    }
  }

  // ---- tabs ----
  const TABS = [
    ["tab-sessions", "sessions-panel"],
    ["tab-jobs", "jobs-panel"],
    ["tab-audit", "audit-panel"],
  ];
  function selectTab(id) {
    for (const [tab, panel] of TABS) {
      const on = tab === id;
      $(tab).setAttribute("aria-pressed", on ? "true" : "false");
      show($(panel), on);
    }
    clearError();
    if (id === "tab-jobs") loadJobs();
  }

  // ---- sessions of a user ----
  let found = { upn: "", sessions: [] };

  function sessionKey(s) {
    return `${s.pool}/${s.host}/${s.id}`;
  }

  async function onSearch(ev) {
    if (ev) ev.preventDefault();
    const upn = $("upn").value.trim();
    if (!upn) return;
    clearError();
    $("search-status").textContent = `Searching every pool for ${upn}…`;
    show($("preview"), false);
    try {
      const { data } = await api("GET", `users/${encodeURIComponent(upn)}/sessions`);
      renderSessions(upn, data);
    } catch (e) {
      $("search-status").textContent = "";
      showError($("app-error"), e);
    }
  }

  function renderSessions(upn, data) {
    const sessions = (data && data.sessions) || [];
    const unreachable = (data && data.unreachable) || [];
    found = { upn, sessions };
    const body = $("sessions-body");
    clear(body);
    for (const s of sessions) {
      const pick = el("button", {
        type: "button",
        class: "small",
        text: "Select",
        "aria-label": `Select session ${s.id} on ${s.host}`,
        onclick: () => {
          $("target").value = sessionKey(s);
          updateActionForm();
          $("action").focus();
        },
      });
      body.append(
        el(
          "tr",
          { "data-session": sessionKey(s) },
          el("td", { text: s.pool }),
          el("td", { text: s.host }),
          el("td", { text: String(s.id) }),
          el("td", { class: `state state-${s.state}`, text: s.state }),
          el("td", { text: s.user || s.upn || s.ad_user || "" }),
          el("td", { text: fmtTime(s.created_at) }),
          el("td", {}, pick)
        )
      );
    }
    $("sessions-caption").textContent = `Sessions of ${upn}`;
    show($("sessions-table"), sessions.length > 0);
    $("search-status").textContent =
      `${sessions.length} session${sessions.length === 1 ? "" : "s"} of ${upn}` +
      (unreachable.length ? `; ${unreachable.length} pool(s) or host(s) could not be asked` : "");
    const ul = $("unreachable-list");
    clear(ul);
    for (const u of unreachable) {
      ul.append(el("li", { text: `${u.pool}${u.host ? ` / ${u.host}` : ""}: ${u.code} — ${u.detail}` }));
    }
    show($("unreachable"), unreachable.length > 0);

    const target = $("target");
    const before = target.value;
    clear(target);
    target.append(el("option", { value: "*", text: `All sessions of ${upn} (${sessions.length}, every pool)` }));
    for (const s of sessions) {
      target.append(
        el("option", { value: sessionKey(s), text: `${s.pool} / ${s.host} / session ${s.id} (${s.state})` })
      );
    }
    if ([...target.options].some((o) => o.value === before)) target.value = before;
    show($("action-form"), true);
    updateActionForm();
  }

  function updateActionForm() {
    const action = $("action").value;
    for (const n of document.querySelectorAll(".msg")) show(n, action === "message");
    $("msg-title").required = action === "message";
    $("msg-body").required = action === "message";
    show($("force-label"), action === "logoff");
    const all = $("target").value === "*";
    $("async").disabled = !all;
    if (!all) $("async").checked = false;
  }

  // The request the action form describes: method path and body (without dry_run).
  function actionRequest() {
    const action = $("action").value;
    const key = $("target").value;
    const body = {};
    const reason = $("reason").value.trim();
    const ticket = $("ticket").value.trim();
    if (reason) body.reason = reason;
    if (ticket) body.ticket = ticket;
    if (action === "logoff" && $("force").checked) body.force = true;
    if (action === "message") {
      body.title = $("msg-title").value;
      body.body = $("msg-body").value;
    }
    if (key === "*") {
      const q = $("async").checked ? "?async=true" : "";
      return { path: `users/${encodeURIComponent(found.upn)}/${action}${q}`, body, what: `all sessions of ${found.upn}` };
    }
    const s = found.sessions.find((x) => sessionKey(x) === key);
    if (!s) return null;
    // The session must still be the user's it was found with (session ids are reused).
    const expected = s.user || s.ad_user;
    if (expected) body.expected_user = expected;
    const path =
      `hostpools/${encodeURIComponent(s.pool)}/sessionhosts/${encodeURIComponent(s.host)}` +
      `/sessions/${encodeURIComponent(String(s.id))}/${action}`;
    return { path, body, what: `session ${s.id} on ${s.host} (${s.pool})` };
  }

  let pending = null;

  async function onPreview(ev) {
    ev.preventDefault();
    const req = actionRequest();
    if (!req) return;
    clearError();
    show($("results"), false);
    const path = req.path.replace("?async=true", "");
    try {
      const { data } = await api("POST", path, { ...req.body, dry_run: true });
      pending = req;
      const box = $("preview-body");
      clear(box);
      box.append(el("p", { text: `${$("action").selectedOptions[0].textContent}: ${req.what}` }));
      box.append(resultsView(data));
      show($("preview"), true);
      $("confirm-button").focus();
    } catch (e) {
      showError($("app-error"), e);
    }
  }

  async function onConfirm() {
    if (!pending) return;
    const req = pending;
    pending = null;
    show($("preview"), false);
    clearError();
    try {
      const r = await api("POST", req.path, { ...req.body, dry_run: false });
      const box = $("results-body");
      clear(box);
      if (r.status === 202) {
        box.append(el("p", { text: `Running as job ${r.data.id}: see Jobs.` }));
        show($("results"), true);
        selectTab("tab-jobs");
        watchJob(r.data.id);
        return;
      }
      box.append(resultsView(r.data));
      show($("results"), true);
      $("results-title").focus();
    } catch (e) {
      showError($("app-error"), e);
    }
  }

  // An action's answer — one ActionResult or a BatchResult — as a table.
  function resultsView(data) {
    const wrap = el("div", {});
    const items = data && Array.isArray(data.results) ? data.results : data ? [data] : [];
    if (data && data.summary) {
      const s = data.summary;
      wrap.append(
        el("p", {
          class: "summary",
          text: `done ${s.done}, already gone ${s.already_gone}, would do ${s.would_do}, refused ${s.refused}, failed ${s.failed}`,
        })
      );
    }
    wrap.append(itemsTable(items.map((r) => ({ result: r, target: r.target }))));
    const unreachable = (data && data.unreachable) || [];
    if (unreachable.length) {
      const ul = el("ul", { class: "unreachable" });
      for (const u of unreachable) {
        ul.append(el("li", { text: `not asked: ${u.pool}${u.host ? ` / ${u.host}` : ""}: ${u.code} — ${u.detail}` }));
      }
      wrap.append(ul);
    }
    return wrap;
  }

  // Items (of a batch or a job) as a table: target, user, state, outcome, error.
  function itemsTable(items) {
    if (!items.length) return el("p", { text: "No sessions." });
    const body = el("tbody", {});
    for (const it of items) {
      const r = it.result || {};
      const t = it.target || r.target || {};
      const err = r.error ? `${r.error.code}: ${r.error.detail}` : "";
      body.append(
        el(
          "tr",
          { "data-session": `${t.pool}/${t.host}/${t.session_id}` },
          el("td", { text: t.pool || "" }),
          el("td", { text: t.host || "" }),
          el("td", { text: t.session_id === undefined ? "" : String(t.session_id) }),
          el("td", { text: r.user || "" }),
          el("td", { text: it.state || r.state || "" }),
          el("td", { class: `outcome outcome-${r.outcome || "pending"}`, text: r.outcome || "" }),
          el("td", { text: err })
        )
      );
    }
    const head = el(
      "tr",
      {},
      ...["Pool", "Host", "Id", "User", "State", "Outcome", "Error"].map((h) => el("th", { scope: "col", text: h }))
    );
    return el("div", { class: "scroll" }, el("table", { class: "items" }, el("thead", {}, head), body));
  }

  // ---- jobs ----
  let jobTimer = null;

  function stopJobWatch() {
    if (jobTimer) clearTimeout(jobTimer);
    jobTimer = null;
  }

  async function loadJobs() {
    try {
      const { data } = await api("GET", "jobs?limit=50");
      const body = $("jobs-body");
      clear(body);
      for (const j of (data && data.jobs) || []) {
        const c = j.counts || {};
        body.append(
          el(
            "tr",
            { "data-job": j.id },
            el("td", { text: fmtTime(j.created) }),
            el("td", { text: j.kind }),
            el("td", { class: `job-state job-${j.state}`, text: j.state }),
            el("td", { text: `${(c.total || 0) - (c.pending || 0)} of ${c.total || 0}` }),
            el("td", { text: j.created_by }),
            el("td", {}, el("button", { type: "button", class: "small", text: "Show", onclick: () => watchJob(j.id) }))
          )
        );
      }
      show($("jobs-table"), true);
    } catch (e) {
      showError($("app-error"), e);
    }
  }

  // Shows a job and polls it until it has ended.
  async function watchJob(id) {
    stopJobWatch();
    try {
      const { data } = await api("GET", `jobs/${encodeURIComponent(id)}?limit=1000`);
      const c = data.counts || {};
      const finished = (c.total || 0) - (c.pending || 0);
      $("job-title").textContent = `Job ${data.id} (${data.kind})`;
      $("job-state").textContent =
        `${data.state}: ${finished} of ${c.total || 0} finished — done ${c.done}, already gone ${c.already_gone}, ` +
        `would do ${c.would_do}, refused ${c.refused}, failed ${c.failed}, cancelled ${c.cancelled}`;
      $("job-state").dataset.state = data.state;
      $("job-progress").max = Math.max(1, c.total || 0);
      $("job-progress").value = finished;
      const items = $("job-items");
      clear(items);
      items.append(itemsTable(data.items || []));
      show($("job"), true);
      if (data.state === "queued" || data.state === "running") {
        jobTimer = setTimeout(() => watchJob(id), 1000);
      } else if (!$("jobs-panel").hidden) {
        loadJobs();
      }
    } catch (e) {
      showError($("app-error"), e);
    }
  }

  // ---- audit ----
  async function onAudit(ev) {
    ev.preventDefault();
    const q = new URLSearchParams();
    const ticket = $("audit-ticket").value.trim();
    const user = $("audit-user").value.trim();
    if (ticket) q.set("ticket", ticket);
    if (user) q.set("user", user);
    q.set("limit", "200");
    clearError();
    $("audit-status").textContent = "";
    try {
      const { data } = await api("GET", `audit?${q}`);
      const events = (data && data.events) || [];
      const body = $("audit-body");
      clear(body);
      for (const ev2 of events) {
        const t = ev2.target || {};
        const p = ev2.params || {};
        const where = [t.pool, t.host, t.session_id === undefined || t.session_id === null ? null : `#${t.session_id}`]
          .filter((x) => x !== null && x !== undefined)
          .join(" / ");
        body.append(
          el(
            "tr",
            { "data-event": ev2.id },
            el("td", { text: fmtTime(ev2.time) }),
            el("td", { text: (ev2.actor && ev2.actor.id) || "" }),
            el("td", { text: ev2.action }),
            el("td", { class: `outcome outcome-${ev2.outcome}`, text: ev2.outcome }),
            el("td", { text: where }),
            el("td", { text: t.user || "" }),
            el("td", { text: typeof p.ticket === "string" ? p.ticket : "" }),
            el("td", { text: typeof p.reason === "string" ? p.reason : "" }),
            el("td", { text: ev2.error_code || "" })
          )
        );
      }
      show($("audit-table"), true);
      $("audit-status").textContent = `${events.length} event${events.length === 1 ? "" : "s"}${data && data.next_cursor ? " (more exist: narrow the filter)" : ""}`;
    } catch (e) {
      showError($("app-error"), e);
    }
  }

  // ---- start ----
  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", onSignIn);
    $("signout").addEventListener("click", () => signOut("Signed out."));
    for (const [tab] of TABS) $(tab).addEventListener("click", () => selectTab(tab));
    $("search-form").addEventListener("submit", onSearch);
    $("action").addEventListener("change", updateActionForm);
    $("target").addEventListener("change", updateActionForm);
    $("action-form").addEventListener("submit", onPreview);
    $("confirm-button").addEventListener("click", onConfirm);
    $("cancel-button").addEventListener("click", () => {
      pending = null;
      show($("preview"), false);
      $("preview-button").focus();
    });
    $("jobs-refresh").addEventListener("click", loadJobs);
    $("audit-form").addEventListener("submit", onAudit);
    if (credential()) {
      signedIn();
      $("upn").focus();
    } else {
      signOut("");
    }
  });
})();
