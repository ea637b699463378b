"use strict";
// The worklist page: sign-in, the ordered list (polled every 3 s), one case at a time with its heatmap.
// Every text from a result or a key goes in through textContent: nothing is ever parsed as HTML.
(() => {
  const BASE = location.pathname.replace(/\/+$/, "");
  const POLL_MS = 3000;
  const $ = (id) => document.getElementById(id);
  const state = { csrf: "", reviewer: null, items: [], key: null, caseData: null, timer: null };

  function show(view) {
    for (const id of ["signin-view", "list-view", "case-view"]) $(id).hidden = id !== view;
  }
  function notice(text) { $("notice").textContent = text || ""; }

  async function api(path, options = {}) {
    const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      headers["X-CSRF-Token"] = state.csrf;
    }
    const response = await fetch(BASE + path, {
      method: options.method || "GET", headers, credentials: "same-origin",
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
    let payload = null;
    try { payload = await response.json(); } catch (e) { payload = null; }
    if (!response.ok) {
      const error = new Error((payload && payload.error && payload.error.message) || ("HTTP " + response.status));
      error.status = response.status;
      throw error;
    }
    return payload;
  }

  function signedOut(message) {
    state.reviewer = null;
    stopPolling();
    $("who").textContent = "";
    $("signout").hidden = true;
    show("signin-view");
    $("signin-error").textContent = message || "";
    $("token").focus();
  }

  function signedIn(reviewer) {
    state.reviewer = reviewer;
    $("who").textContent = "Signed in as " + reviewer;
    $("signout").hidden = false;
    startPolling();
    route();
  }

  async function start() {
    try {
      const info = await api("/api/session");
      state.csrf = info.csrf;
      if (info.signed_in) signedIn(info.reviewer); else signedOut("");
    } catch (e) {
      signedOut("Cannot reach the worklist: " + e.message);
    }
  }

  $("signin").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("signin-error").textContent = "";
    try {
      const answer = await api("/api/session", { method: "POST", body: { token: $("token").value } });
      $("token").value = "";
      signedIn(answer.reviewer);
    } catch (e) {
      $("signin-error").textContent = "Sign-in failed: " + e.message;
    }
  });

  $("signout").addEventListener("click", async () => {
    try { await api("/api/signout", { method: "POST", body: {} }); } catch (e) { /* signed out anyway */ }
    notice("Signed out.");
    history.replaceState(null, "", location.pathname);
    signedOut("");
  });

  // -- the worklist ---------------------------------------------------------------------------------------------
  function filterQuery() {
    const params = new URLSearchParams();
    const status = $("f-status").value, label = $("f-label").value, model = $("f-model").value;
    if (status !== "all") params.set("status", status);
    if (label) params.set("label", label);
    if ($("f-assessable").checked) params.set("assessable", "false");
    if (model) params.set("model", model);
    if ($("f-date").value) params.set("date", $("f-date").value);
    const text = params.toString();
    return text ? "?" + text : "";
  }

  function waited(seconds) {
    if (seconds === null || seconds === undefined) return "unknown";
    if (seconds < 60) return Math.round(seconds) + " s";
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return minutes + " min";
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }
  function percent(p) { return typeof p === "number" ? (p * 100).toFixed(1) + " %" : "–"; }
  const GROUP_TEXT = { urgent: "URGENT", overdue: "Waiting too long", waiting: "Unreviewed", failed: "Failed",
                       reviewed: "Reviewed" };

  function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); return td; }

  function renderCounts(c) {
    const list = $("counts");
    list.replaceChildren();
    for (const [name, text] of [["urgent", "urgent"], ["overdue", "waiting too long"], ["unreviewed", "unreviewed"],
                                ["reviewed", "reviewed"], ["failed", "failed"], ["not_assessable", "not assessable"],
                                ["total", "in all"]]) {
      const li = document.createElement("li");
      li.id = "count-" + name;
      const strong = document.createElement("strong");
      strong.textContent = String(c[name] || 0);
      li.append(strong, " " + text);
      list.appendChild(li);
    }
  }

  function renderModels(models) {
    const select = $("f-model"), current = select.value;
    const wanted = ["", ...models];
    const have = Array.from(select.options).map((o) => o.value);
    if (wanted.join("\n") === have.join("\n")) return;
    select.replaceChildren();
    for (const version of wanted) {
      const option = document.createElement("option");
      option.value = version;
      option.textContent = version ? "v" + version : "any";
      select.appendChild(option);
    }
    select.value = wanted.includes(current) ? current : "";
  }

  function renderRows(items) {
    const body = $("rows");
    body.replaceChildren();
    for (const item of items) {
      const row = document.createElement("tr");
      row.className = item.group + (item.key === state.key ? " current" : "");
      row.dataset.key = item.key;
      cell(row, GROUP_TEXT[item.group] || item.group);
      const open = document.createElement("button");
      open.type = "button";
      open.className = "link open-case";
      open.textContent = item.key;
      open.addEventListener("click", () => openCase(item.key));
      const td = document.createElement("td");
      td.appendChild(open);
      row.appendChild(td);
      cell(row, item.result_status !== "ok" ? "triage failed" : (item.assessable ? item.label : "not assessable"));
      cell(row, percent(item.probability));
      cell(row, waited(item.waited_s));
      cell(row, item.model && item.model.version ? "v" + item.model.version : "–");
      cell(row, item.reviewed_by ? item.reviewed_by + " (" + item.review.label + ")" : "–");
      body.appendChild(row);
    }
  }

  async function refresh() {
    if (!state.reviewer) return;
    try {
      const data = await api("/api/worklist" + filterQuery());
      state.items = data.items;
      $("max-wait").textContent = String(data.max_wait_min);
      $("list-error").textContent = "";
      renderCounts(data.counts);
      renderModels(data.models || []);
      renderRows(data.items);
      updateNav();
    } catch (e) {
      if (e.status === 401) { signedOut("Your session ended; sign in again."); return; }
      $("list-error").textContent = "Cannot load the worklist: " + e.message;
    }
  }
  function startPolling() { stopPolling(); state.timer = setInterval(refresh, POLL_MS); }
  function stopPolling() { if (state.timer) clearInterval(state.timer); state.timer = null; }
  $("filters").addEventListener("change", refresh);
  $("filters").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });

  // -- one case -------------------------------------------------------------------------------------------------
  const other = (label) => (label === "pneumonia" ? "normal" : "pneumonia");
  function fact(list, term, value) {
    const dt = document.createElement("dt"), dd = document.createElement("dd");
    dt.textContent = term; dd.textContent = value;
    list.append(dt, dd);
  }
  function imageUrl(kind, key) { return BASE + "/api/" + kind + "?key=" + encodeURIComponent(key); }

  function indexOf(key) { return state.items.findIndex((item) => item.key === key); }
  function updateNav() {
    const i = indexOf(state.key);
    $("prev").disabled = i <= 0;
    $("next").disabled = i < 0 || i >= state.items.length - 1;
  }

  function openCase(key) {
    const hash = "#case=" + encodeURIComponent(key);
    if (location.hash !== hash) location.hash = hash; else route();
  }

  async function showCase(key) {
    state.key = key;
    show("case-view");
    $("case-error").textContent = "";
    let data;
    try {
      data = await api("/api/case?key=" + encodeURIComponent(key));
    } catch (e) {
      if (e.status === 401) { signedOut("Your session ended; sign in again."); return; }
      state.caseData = null;
      $("case-title").textContent = "Case not available";
      $("case-error").textContent = e.message;
      $("facts").replaceChildren();
      $("verdict").textContent = "";
      $("caption").textContent = "";
      $("image").removeAttribute("src");
      $("heat").hidden = true;
      $("confirm").disabled = $("correct").disabled = true;
      return;
    }
    state.caseData = data;
    $("case-title").textContent = "Case " + data.key;
    $("image").src = imageUrl("image", key);
    $("heat").hidden = !data.has_heatmap || !$("show-heat").checked;
    if (data.has_heatmap) $("heat").src = imageUrl("heatmap", key); else $("heat").removeAttribute("src");
    applyOpacity();
    const verdict = $("verdict");
    verdict.className = "verdict" + (data.urgent ? " urgent" : "");
    verdict.textContent = data.result_status !== "ok" ? "Triage failed: " + (data.error || "unknown error")
      : !data.assessable ? "Not assessable" + (data.reason ? ": " + data.reason : "")
      : data.label + " (" + percent(data.probability) + ")" + (data.urgent ? " — URGENT" : "");
    const facts = $("facts");
    facts.replaceChildren();
    fact(facts, "Probability", percent(data.probability));
    fact(facts, "Threshold", percent(data.threshold));
    fact(facts, "Model", (data.model.name || "model") + (data.model.version ? " v" + data.model.version : ""));
    fact(facts, "Since upload", waited(data.waited_s));
    fact(facts, "Upload to result", typeof data.upload_to_result_s === "number"
      ? data.upload_to_result_s.toFixed(2) + " s" : "–");
    $("caption").textContent = data.key;
    const review = data.review;
    let reviewed = review ? "Labelled " + review.label + " by " + review.reviewer : "";
    if (review && review.second_opinions.length) {
      reviewed += "; second opinions: " + review.second_opinions.map((o) => o.label + " by " + o.reviewer).join(", ");
    }
    $("reviewed").textContent = reviewed;
    const labellable = data.result_status === "ok";
    $("confirm").disabled = $("correct").disabled = !labellable;
    $("confirm").textContent = data.label ? "Confirm " + data.label + " (c)" : "Label normal (c)";
    $("correct").textContent = data.label ? "Correct to " + other(data.label) + " (x)" : "Label pneumonia (x)";
    updateNav();
    $("case-title").focus();
  }

  function applyOpacity() { $("heat").style.opacity = String(Number($("opacity").value) / 100); }
  $("opacity").addEventListener("input", applyOpacity);
  $("show-heat").addEventListener("change", () => {
    $("heat").hidden = !$("show-heat").checked || !(state.caseData && state.caseData.has_heatmap);
  });
  function toggleHeat() { $("show-heat").checked = !$("show-heat").checked; $("show-heat").dispatchEvent(new Event("change")); }

  function step(delta) {
    const i = indexOf(state.key);
    const target = state.items[i + delta];
    if (i >= 0 && target) openCase(target.key);
  }

  function nextUnreviewed(after) {
    const i = indexOf(after);
    const later = state.items.slice(i + 1).find((item) => item.status === "unreviewed" && item.key !== after);
    return later || state.items.find((item) => item.status === "unreviewed" && item.key !== after);
  }

  async function submit(which) {
    const data = state.caseData;
    if (!data || data.result_status !== "ok") return;
    const label = data.label ? (which === "confirm" ? data.label : other(data.label))
      : (which === "confirm" ? "normal" : "pneumonia");
    $("confirm").disabled = $("correct").disabled = true;
    try {
      const answer = await api("/api/label", { method: "POST", body: { key: data.key, label } });
      notice(answer.status === "second_opinion" ? answer.message : answer.message + " for " + data.key);
    } catch (e) {
      if (e.status === 401) { signedOut("Your session ended; sign in again."); return; }
      $("case-error").textContent = "Label not saved: " + e.message;
      $("confirm").disabled = $("correct").disabled = false;
      return;
    }
    await refresh();
    const next = nextUnreviewed(data.key);
    if (next) openCase(next.key); else { history.pushState(null, "", location.pathname); route(); }
  }
  $("confirm").addEventListener("click", () => submit("confirm"));
  $("correct").addEventListener("click", () => submit("correct"));
  $("back").addEventListener("click", () => { history.pushState(null, "", location.pathname); route(); });
  $("prev").addEventListener("click", () => step(-1));
  $("next").addEventListener("click", () => step(1));

  document.addEventListener("keydown", (event) => {
    if ($("case-view").hidden || event.ctrlKey || event.metaKey || event.altKey) return;
    const tag = event.target && event.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") {
      if (event.key !== "Escape") return;
    }
    const actions = { j: () => step(1), ArrowRight: () => step(1), k: () => step(-1), ArrowLeft: () => step(-1),
                      c: () => submit("confirm"), x: () => submit("correct"), h: toggleHeat,
                      Escape: () => { history.pushState(null, "", location.pathname); route(); } };
    const action = actions[event.key];
    if (action) { event.preventDefault(); action(); }
  });

  // -- which view -----------------------------------------------------------------------------------------------
  function route() {
    if (!state.reviewer) return;
    const match = /^#case=(.+)$/.exec(location.hash);
    if (match) { showCase(decodeURIComponent(match[1])); return; }
    state.key = null;
    state.caseData = null;
    show("list-view");
    refresh();
  }
  window.addEventListener("hashchange", route);
  window.addEventListener("popstate", route);
  start();
})();
