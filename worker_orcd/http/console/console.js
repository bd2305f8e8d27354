// The worker's browser console: one job at a time, streamed over fetch().
// EventSource cannot POST, so the SSE stream of POST /execute is read from the
// response body and parsed here. Text from the worker is only ever put in the
// page as text (textContent), never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "worker-orcd.token";
  const JOBS_SHOWN = 20;
  const $ = (id) => document.getElementById(id);

  // The job in flight: {jobId, terminal, tokens, sentAt, cancelSent}.
  let current = null;

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

  function setText(id, value) {
    $(id).textContent = value === null || value === undefined || value === "" ? "—" : String(value);
  }

  function ms(value) {
    return typeof value === "number" ? `${Math.round(value * 10) / 10} ms` : null;
  }

  function setState(state) {
    const el = $("state");
    el.textContent = state;
    el.className = `state state-${state}`;
  }

  function showError(id, text) {
    const el = $(id);
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

  // --- one job ---------------------------------------------------------------

  function resetJobView(jobId) {
    setText("job-id", jobId);
    setState("submitting");
    setText("tokens", 0);
    setText("ttft", null);
    setText("ended", null);
    setText("stop-ms", null);
    setText("cancel-ms", null);
    $("note").textContent = "";
    showError("error", "");
    $("output").textContent = "";
  }

  function setRunning(running) {
    $("stream").disabled = running;
    $("cancel").disabled = !running;
  }

  function showLatencies(record) {
    if ("stop_ms" in record) setText("stop-ms", ms(record.stop_ms));
    if ("cancel_ms" in record) setText("cancel-ms", ms(record.cancel_ms));
  }

  function onEvent(job, name, raw) {
    let data;
    try {
      data = JSON.parse(raw);
    } catch (_) {
      return;
    }
    if (name === "started") {
      setState("running");
      $("note").textContent = `model ${data.model}, ${data.prompt_tokens} prompt tokens, seed ${data.seed}`;
    } else if (name === "token") {
      if (job.tokens === 0) setText("ttft", ms(performance.now() - job.sentAt));
      job.tokens += 1;
      $("output").append(data.t);
      setText("tokens", job.tokens);
    } else if (name === "end") {
      job.terminal = true;
      setState("completed");
      setText("tokens", data.tokens_out);
      setText("ended", data.stop_reason);
    } else if (name === "error") {
      job.terminal = true;
      setState(data.code === "CANCELLED" ? "cancelled" : "failed");
      setText("ended", data.forced ? `${data.code} (forced)` : data.code);
      if (typeof data.tokens_out === "number") setText("tokens", data.tokens_out);
      showLatencies(data);
      if (data.code !== "CANCELLED") showError("error", `${data.code}: ${data.message}`);
    }
  }

  async function streamJob() {
    const jobId = newJobId();
    let body;
    try {
      body = requestBody(jobId);
    } catch (err) {
      showError("error", err.message);
      return;
    }
    const job = { jobId, terminal: false, tokens: 0, sentAt: performance.now(), cancelSent: false };
    current = job;
    resetJobView(jobId);
    setRunning(true);
    try {
      const response = await fetch("execute", {
        method: "POST",
        headers: withAuth({ "Content-Type": "application/json" }),
        body,
      });
      if (!response.ok) {
        if (response.status === 401) showAuth();
        setState("rejected");
        showError("error", await errorText(response));
        return;
      }
      if (!job.terminal && $("state").textContent === "submitting") setState("queued");
      const parse = sseParser((name, data) => onEvent(job, name, data));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parse(value);
      }
      if (!job.terminal) showError("error", "the stream ended before the job's terminal event");
    } catch (err) {
      showError("error", `connection to the worker failed: ${err.message}`);
    } finally {
      current = null;
      setRunning(false);
    }
    await loadRecord(jobId);
    await refreshJobs();
  }

  // The job's record: its latencies as the worker recorded them.
  async function loadRecord(jobId) {
    try {
      const response = await fetch(`jobs/${encodeURIComponent(jobId)}`, { headers: withAuth() });
      if (!response.ok) return;
      const record = await response.json();
      if (record.state) setState(record.state);
      showLatencies(record);
      if (record.cancel_reason) $("note").textContent = `cancelled by ${record.cancel_reason}`;
    } catch (_) {
      // The stream already showed what it could.
    }
  }

  async function cancelJob() {
    const job = current;
    if (!job || job.cancelSent) return;
    job.cancelSent = true;
    $("cancel").disabled = true;
    const sent = performance.now();
    try {
      const response = await fetch("cancel", {
        method: "POST",
        headers: withAuth({ "Content-Type": "application/json" }),
        body: JSON.stringify({ job_id: job.jobId }),
      });
      if (response.status === 202) {
        if (!job.terminal) $("note").textContent = `cancel accepted in ${ms(performance.now() - sent)}`;
      } else {
        showError("error", `cancel: ${await errorText(response)}`);
      }
    } catch (err) {
      showError("error", `cancel failed: ${err.message}`);
    }
  }

  // --- recent jobs -----------------------------------------------------------

  function cell(row, value, className) {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
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
    try {
      const anonymous = await (await fetch("health")).json();
      if (!("model" in anonymous)) showAuth();
      const health = token() ? await (await fetch("health", { headers: withAuth() })).json() : anonymous;
      const parts = [health.status, health.ready ? "ready" : "not ready"];
      if (health.model) parts.unshift(`${health.model} on ${health.backend}`);
      $("worker-info").textContent = parts.join(" · ");
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
    $("cancel").addEventListener("click", cancelJob);
    $("refresh").addEventListener("click", refreshJobs);
    loadHealth();
    refreshJobs();
  }

  start();
})();
