// The worker's browser console: jobs streamed over fetch(), several at once, each
// on its own card, and the worker's slots read from /health while they run.
// EventSource cannot POST, so the SSE stream of POST /execute is read from the
// response body and parsed here. Text from the worker is only ever put in the
// page as text (textContent), never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "worker-orcd.token";
  const JOBS_SHOWN = 20;
  const CARDS_KEPT = 8; // past this, the oldest finished card goes
  const SLOTS_EVERY_MS = 500;
  // Readings after the page's last job ended while /health still shows one of its
  // jobs in a slot (the stream's end can come just before the slot is let go).
  const SLOTS_LINGER = 6;
  const $ = (id) => document.getElementById(id);

  // The page's jobs whose streams are open: {jobId, card, terminal, tokens, sentAt, cancelSent}.
  const live = new Set();
  // Every job id this page made, to tell its jobs in the slots from others'.
  const made = new Set();

  // --- token (sessionStorage: this tab only, gone when it closes) -----------

  function token() {
    return $("token").value.trim();
  }

  function withAuth(headers = {}) {
    const value = token();
    return value ? { ...headers, Authorization: `Bearer ${value}` } : headers;
  }

  function showAuth() {
    $("auth").hidden = false;
  }

  // --- small helpers ---------------------------------------------------------

  function shown(value) {
    return value === null || value === undefined || value === "" ? "—" : String(value);
  }

  function setText(id, value) {
    $(id).textContent = shown(value);
  }

  function ms(value) {
    return typeof value === "number" ? `${Math.round(value * 10) / 10} ms` : null;
  }

  function showError(id, text) {
    putError($(id), text);
  }

  function putError(el, text) {
    el.textContent = text || "";
    el.hidden = !text;
  }

  // The worker's JSON error body, as one line: "CODE: message (field: reason, …)".
  async function errorText(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      return `HTTP ${response.status}`;
    }
    const error = body && body.error;
    if (!error) return `HTTP ${response.status}`;
    let text = `${error.code}: ${error.message}`;
    if (Array.isArray(error.details) && error.details.length > 1) {
      text += ` (${error.details.map((d) => `${d.field}: ${d.reason}`).join("; ")})`;
    }
    return text;
  }

  // crypto.randomUUID exists only in secure contexts (https, localhost); a worker
  // reached over plain http by another name still gets a random id.
  function newJobId() {
    if (typeof crypto.randomUUID === "function") return `console-${crypto.randomUUID()}`;
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return `console-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
  }

  // --- SSE parsing -------------------------------------------------------------

  // Lines "event: x" and "data: y", a blank line ends an event, ":" starts a
  // comment (the worker's keep-alive pings). Chunks may split lines anywhere.
  function sseParser(onEvent) {
    let buffer = "";
    let name = "";
    let data = [];
    return (chunk) => {
      buffer += chunk;
      const lines = buffer.split("\n");
      buffer = lines.pop();
      for (let line of lines) {
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (data.length) onEvent(name || "message", data.join("\n"));
          name = "";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") name = value;
        else if (field === "data") data.push(value);
      }
    };
  }

  // --- the request -----------------------------------------------------------

  const CHATML = (text) => `<|im_start|>user\n${text}<|im_end|>\n<|im_start|>assistant\n`;

  function numberField(id, body, integer) {
    const raw = $(id).value.trim();
    if (raw === "") return;
    const value = Number(raw);
    if (!Number.isFinite(value) || (integer && !Number.isInteger(value))) {
      throw new Error(`${id}: ${raw} is not ${integer ? "an integer" : "a number"}`);
    }
    body[id] = value;
  }

  // The body's JSON text. A seed may exceed what a JS number holds exactly
  // (up to 2^64 − 1), so its digits are written into the JSON as typed.
  function requestBody(jobId) {
    const text = $("prompt").value;
    const body = { job_id: jobId, prompt: $("chat").checked ? CHATML(text) : text };
    numberField("max_tokens", body, true);
    numberField("temperature", body, false);
    numberField("top_p", body, false);
    const stop = $("stop")
      .value.split("\n")
      .filter((line) => line !== "")
      .map((line) => line.replaceAll("\\n", "\n"));
    if (stop.length) body.stop = stop;
    let json = JSON.stringify(body);
    const seed = $("seed").value.trim();
    if (seed !== "") {
      if (!/^[0-9]{1,20}$/.test(seed)) throw new Error(`seed: ${seed} is not a whole number`);
      json = `${json.slice(0, -1)},"seed":${seed}}`;
    }
    return json;
  }

  // --- a job's card -----------------------------------------------------------

  function put(job, cls, value) {
    job.card.querySelector(`.${cls}`).textContent = shown(value);
  }

  function setState(job, state) {
    const el = job.card.querySelector(".state");
    el.textContent = state;
    el.className = `state state-${state}`;
  }

  function cardError(job, text) {
    putError(job.card.querySelector(".error"), text);
  }

  function note(job, text) {
    job.card.querySelector(".note").textContent = text;
  }

  function newCard(jobId) {
    const card = $("card-template").content.firstElementChild.cloneNode(true);
    card.dataset.jobId = jobId;
    card.setAttribute("aria-label", `job ${jobId}`);
    const job = { jobId, card, terminal: false, tokens: 0, sentAt: performance.now(), cancelSent: false };
    put(job, "job-id", jobId);
    card.querySelector(".job-id").title = jobId;
    card.querySelector(".cancel").addEventListener("click", () => cancelJob(job));
    card.querySelector(".dismiss").addEventListener("click", () => card.remove());
    $("cards").prepend(card);
    pruneCards();
    return job;
  }

  // Running cards always stay; finished ones go oldest first (the newest is on top).
  function pruneCards() {
    const cards = Array.from($("cards").children);
    let excess = cards.length - CARDS_KEPT;
    for (let i = cards.length - 1; i >= 0 && excess > 0; i--) {
      if (cards[i].dataset.finished === "1") {
        cards[i].remove();
        excess -= 1;
      }
    }
  }

  function finishCard(job) {
    job.card.dataset.finished = "1";
    job.card.querySelector(".cancel").disabled = true;
    job.card.querySelector(".dismiss").disabled = false;
    pruneCards();
  }

  function showLatencies(job, record) {
    if ("stop_ms" in record) put(job, "stop-ms", ms(record.stop_ms));
    if ("cancel_ms" in record) put(job, "cancel-ms", ms(record.cancel_ms));
  }

  function onEvent(job, name, raw) {
    let data;
    try {
      data = JSON.parse(raw);
    } catch (_) {
      return;
    }
    if (name === "started") {
      setState(job, "running");
      note(job, `model ${data.model}, ${data.prompt_tokens} prompt tokens, seed ${data.seed}`);
    } else if (name === "token") {
      if (job.tokens === 0) put(job, "ttft", ms(performance.now() - job.sentAt));
      job.tokens += 1;
      job.card.querySelector(".output").append(data.t);
      put(job, "tokens", job.tokens);
    } else if (name === "end") {
      job.terminal = true;
      setState(job, "completed");
      put(job, "tokens", data.tokens_out);
      put(job, "ended", data.stop_reason);
    } else if (name === "error") {
      job.terminal = true;
      setState(job, data.code === "CANCELLED" ? "cancelled" : "failed");
      put(job, "ended", data.forced ? `${data.code} (forced)` : data.code);
      if (typeof data.tokens_out === "number") put(job, "tokens", data.tokens_out);
      showLatencies(job, data);
      if (data.code !== "CANCELLED") cardError(job, `${data.code}: ${data.message}`);
    }
  }

  // One press of Stream: one more job, streamed while the others go on.
  async function streamJob() {
    const jobId = newJobId();
    let body;
    try {
      body = requestBody(jobId);
    } catch (err) {
      showError("request-error", err.message);
      return;
    }
    showError("request-error", "");
    made.add(jobId);
    const job = newCard(jobId);
    live.add(job);
    pollSlots();
    try {
      const response = await fetch("execute", {
        method: "POST",
        headers: withAuth({ "Content-Type": "application/json" }),
        body,
      });
      if (!response.ok) {
        if (response.status === 401) showAuth();
        setState(job, "rejected");
        cardError(job, await errorText(response));
        return;
      }
      if (!job.terminal && job.card.querySelector(".state").textContent === "submitting") setState(job, "queued");
      const parse = sseParser((name, data) => onEvent(job, name, data));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parse(value);
      }
      if (!job.terminal) cardError(job, "the stream ended before the job's terminal event");
    } catch (err) {
      cardError(job, `connection to the worker failed: ${err.message}`);
    } finally {
      live.delete(job);
      finishCard(job);
      pollSlots(); // one more reading, now that it has ended
    }
    await loadRecord(job);
    await refreshJobs();
  }

  // The job's record: its latencies as the worker recorded them.
  async function loadRecord(job) {
    try {
      const response = await fetch(`jobs/${encodeURIComponent(job.jobId)}`, { headers: withAuth() });
      if (!response.ok) return;
      const record = await response.json();
      if (record.state) setState(job, record.state);
      showLatencies(job, record);
      if (record.cancel_reason) note(job, `cancelled by ${record.cancel_reason}`);
    } catch (_) {
      // The stream already showed what it could.
    }
  }

  // Cancels this card's job only; the page's other jobs stream on.
  async function cancelJob(job) {
    if (job.cancelSent || job.terminal) return;
    job.cancelSent = true;
    job.card.querySelector(".cancel").disabled = true;
    const sent = performance.now();
    try {
      const response = await fetch("cancel", {
        method: "POST",
        headers: withAuth({ "Content-Type": "application/json" }),
        body: JSON.stringify({ job_id: job.jobId }),
      });
      if (response.status === 202) {
        if (!job.terminal) note(job, `cancel accepted in ${ms(performance.now() - sent)}`);
      } else {
        cardError(job, `cancel: ${await errorText(response)}`);
      }
    } catch (err) {
      cardError(job, `cancel failed: ${err.message}`);
    }
  }

  // --- slots -------------------------------------------------------------------

  let pollTimer = null; // set while the polling loop runs (between readings, or in one)
  let lingering = 0;
  let readings = 0; // readings asked for and shown, so a late answer never hides a newer one
  let readingShown = 0;
  let heldByPage = false; // the last reading showed a job of this page in a slot

  // Reads /health while a job of this page runs, and stops when none does.
  function pollSlots() {
    if (pollTimer !== null) return;
    const tick = async () => {
      await refreshSlots();
      if (live.size) lingering = 0;
      const again = live.size > 0 || (heldByPage && ++lingering <= SLOTS_LINGER);
      if (again) {
        pollTimer = setTimeout(tick, SLOTS_EVERY_MS);
      } else {
        pollTimer = null;
        lingering = 0;
      }
    };
    pollTimer = setTimeout(tick, 0);
  }

  async function refreshSlots() {
    const reading = ++readings;
    let health;
    try {
      health = await (await fetch("health", { headers: withAuth() })).json();
    } catch (_) {
      return; // the next reading tries again; the worker line says if it is gone
    }
    if (reading < readingShown) return;
    readingShown = reading;
    renderSlots(health);
  }

  function renderSlots(health) {
    setText("slots-parallel", health.parallel);
    setText("slots-busy", health.slots_busy);
    setText("slots-kv", typeof health.kv_cells === "number" ? health.kv_cells : null);
    const slots = Array.isArray(health.slots) ? health.slots : [];
    heldByPage = slots.some((s) => s.job_id && made.has(s.job_id));
    const rows = slots.map((s) => {
      const row = document.createElement("tr");
      row.dataset.slot = s.slot;
      if (s.job_id) row.dataset.jobId = s.job_id;
      cell(row, s.slot, "num");
      const job = cell(row, s.job_id || "another tenant's job", s.job_id ? "id" : "other");
      if (s.job_id) job.title = s.job_id;
      if (s.job_id && made.has(s.job_id)) row.className = "mine";
      cell(row, s.phase);
      cell(row, s.tokens_out, "num");
      cell(row, s.kv_cells, "num cells"); // null with one slot, shown as a dash
      return row;
    });
    $("slots-body").replaceChildren(...rows);
    // Each card keeps the slot its job was last seen in.
    for (const s of slots) {
      if (!s.job_id) continue;
      const card = $("cards").querySelector(`.card[data-job-id="${CSS.escape(s.job_id)}"]`);
      if (card) card.querySelector(".slot").textContent = String(s.slot);
    }
  }

  // --- recent jobs -----------------------------------------------------------

  function cell(row, value, className) {
    const td = document.createElement("td");
    td.textContent = shown(value);
    if (className) td.className = className;
    row.append(td);
    return td;
  }

  function timeOf(stamp) {
    if (!stamp) return null;
    const date = new Date(stamp);
    return Number.isNaN(date.getTime()) ? stamp : date.toLocaleTimeString();
  }

  async function refreshJobs() {
    let response;
    try {
      response = await fetch(`jobs?limit=${JOBS_SHOWN}`, { headers: withAuth() });
    } catch (err) {
      showError("jobs-error", `connection to the worker failed: ${err.message}`);
      return;
    }
    if (!response.ok) {
      if (response.status === 401) showAuth();
      showError("jobs-error", await errorText(response));
      $("jobs-body").replaceChildren();
      return;
    }
    showError("jobs-error", "");
    const { jobs } = await response.json();
    const rows = jobs.map((job) => {
      const row = document.createElement("tr");
      row.dataset.jobId = job.job_id;
      const id = cell(row, job.job_id, "id");
      id.title = job.job_id;
      const state = document.createElement("span");
      state.className = `state state-${job.state}`;
      state.textContent = job.state;
      cell(row, "").replaceChildren(state);
      cell(row, job.tokens_out, "num");
      cell(row, job.stop_reason || (job.error && job.error.code));
      cell(row, ms(job.stop_ms), "num");
      cell(row, ms(job.cancel_ms), "num");
      cell(row, timeOf(job.queued_at));
      return row;
    });
    $("jobs-body").replaceChildren(...rows);
  }

  // --- the worker ------------------------------------------------------------

  // On a worker with keys, a caller without a valid token learns only
  // {status, ready} from /health: that is how the page knows to ask for one.
  async function loadHealth() {
    const reading = ++readings;
    try {
      const anonymous = await (await fetch("health")).json();
      if (!("model" in anonymous)) showAuth();
      const health = token() ? await (await fetch("health", { headers: withAuth() })).json() : anonymous;
      const parts = [health.status, health.ready ? "ready" : "not ready"];
      if (health.model) parts.unshift(`${health.model} on ${health.backend}`);
      $("worker-info").textContent = parts.join(" · ");
      if ("parallel" in health && reading >= readingShown) {
        readingShown = reading;
        renderSlots(health);
      }
    } catch (err) {
      $("worker-info").textContent = `worker unreachable: ${err.message}`;
    }
  }

  function start() {
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      $("token").value = saved;
      showAuth();
    }
    $("token").addEventListener("input", () => {
      const value = token();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    });
    $("token").addEventListener("change", () => {
      loadHealth();
      refreshJobs();
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      $("token").value = "";
      refreshJobs();
    });
    $("stream").addEventListener("click", streamJob);
    $("refresh").addEventListener("click", refreshJobs);
    loadHealth();
    refreshJobs();
  }

  start();
})();
