// aiops web UI: the write token, feedback, action approval, dead-letter retry, the chart.
// The token is typed once and kept in this tab's sessionStorage; it is sent only as an
// Authorization header to this origin's /api/v1. No page text is ever inserted as HTML.
"use strict";
(function () {
  const TOKEN_KEY = "aiops.token";
  const OPERATOR_KEY = "aiops.operator";

  function say(el, text, ok) {
    if (!el) return;
    el.textContent = text;
    el.classList.remove("ok", "bad");
    el.classList.add(ok ? "ok" : "bad");
  }

  function statusIn(el) {
    const box = el.closest(".feedback, .actions, td, form");
    return box ? box.querySelector(".status") : null;
  }

  async function post(url, body) {
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    let resp;
    try {
      resp = await fetch(url, { method: "POST", headers: headers, body: JSON.stringify(body || {}), credentials: "same-origin" });
    } catch (err) {
      return { ok: false, status: 0, message: "the service did not answer: " + err };
    }
    let data = null;
    try { data = await resp.json(); } catch (err) { data = null; }
    let message = data && data.error ? data.error : resp.status + " " + resp.statusText;
    if (resp.status === 401) message += " (type the write token at the top and keep it for this tab)";
    if (resp.status === 404 && !(data && data.error)) message = "this aiops does not offer " + url + " (404)";
    return { ok: resp.ok, status: resp.status, data: data, message: message };
  }

  function operator() {
    return (sessionStorage.getItem(OPERATOR_KEY) || "").trim();
  }

  async function sendFeedback(button) {
    const box = button.closest(".feedback");
    const verdict = button.dataset.verdict;
    const body = { verdict: verdict };
    if (verdict === "edit") {
      const text = box.querySelector("textarea").value.trim();
      if (!text) { say(statusIn(button), "write the corrected text first", false); return; }
      body.text = text;
    }
    if (operator()) body.author = operator();
    button.disabled = true;
    const r = await post("/api/v1/explanations/" + encodeURIComponent(box.dataset.explanation) + "/feedback", body);
    button.disabled = false;
    say(statusIn(button), r.ok ? "recorded: " + verdict : "not recorded: " + r.message, r.ok);
  }

  async function approve(button) {
    const who = operator();
    if (!who) { say(statusIn(button), "type your name in 'operator' at the top first: every run records who approved it", false); return; }
    const what = button.dataset.action + " on watch " + button.dataset.watch + " for event #" + button.dataset.event;
    if (!window.confirm("Run " + what + " now, approved by " + who + "?")) return;
    button.disabled = true;
    const url = "/api/v1/actions/" + encodeURIComponent(button.dataset.watch) + "/" + encodeURIComponent(button.dataset.action) + "/runs";
    const r = await post(url, { event_id: Number(button.dataset.event), approved_by: who });
    button.disabled = false;
    say(statusIn(button), r.ok ? "ran " + button.dataset.action + ", approved by " + who : "not run: " + r.message, r.ok);
  }

  async function retry(button) {
    button.disabled = true;
    const r = await post("/api/v1/dead-letters/" + encodeURIComponent(button.dataset.id) + "/retry", {});
    say(statusIn(button), r.ok ? "queued again" : "not queued: " + r.message, r.ok);
    if (!r.ok) button.disabled = false;
  }

  function setUpCredentials() {
    const form = document.getElementById("credentials");
    if (!form) return;
    const token = document.getElementById("token");
    const who = document.getElementById("operator");
    const status = document.getElementById("credentials-status");
    who.value = operator();
    if (sessionStorage.getItem(TOKEN_KEY)) token.placeholder = "kept for this tab";
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (token.value) sessionStorage.setItem(TOKEN_KEY, token.value);
      sessionStorage.setItem(OPERATOR_KEY, who.value.trim());
      token.value = "";
      token.placeholder = sessionStorage.getItem(TOKEN_KEY) ? "kept for this tab" : "not set";
      say(status, "kept for this tab", true);
    });
    document.getElementById("forget").addEventListener("click", function () {
      sessionStorage.removeItem(TOKEN_KEY);
      sessionStorage.removeItem(OPERATOR_KEY);
      token.value = ""; who.value = ""; token.placeholder = "not set";
      say(status, "forgotten", true);
    });
  }

  function drawChart() {
    const holder = document.getElementById("figure-data");
    const target = document.getElementById("chart");
    if (!holder || !target) return;
    if (!window.Plotly) { say(target, "plotly.js did not load; the chart cannot be drawn", false); return; }
    const fig = JSON.parse(holder.textContent);
    window.Plotly.newPlot(target, fig.data, fig.layout, { responsive: true, displaylogo: false });
  }

  document.addEventListener("click", function (ev) {
    const button = ev.target.closest("button");
    if (!button) return;
    if (button.classList.contains("fb")) sendFeedback(button);
    else if (button.classList.contains("approve")) approve(button);
    else if (button.classList.contains("retry")) retry(button);
  });
  setUpCredentials();
  drawChart();
})();
