// Upload page: send the file, poll its status URL, show the digit. No framework, no CDN.
"use strict";

const form = document.getElementById("upload-form");
const input = document.getElementById("file-input");
const dropZone = document.getElementById("drop-zone");
const preview = document.getElementById("preview");
const submit = document.getElementById("submit");
const result = document.getElementById("result");
const statusLine = document.getElementById("status");
const answer = document.getElementById("answer");
const errorBox = document.getElementById("error");

let chosen = null;

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function choose(file) {
  errorBox.hidden = true;
  chosen = file || null;
  submit.disabled = !chosen;
  if (!chosen) { preview.hidden = true; return; }
  document.getElementById("drop-text").textContent = chosen.name;
  preview.src = URL.createObjectURL(chosen);
  preview.hidden = false;
}

input.addEventListener("change", () => choose(input.files[0]));
["dragenter", "dragover"].forEach((type) => dropZone.addEventListener(type, (event) => {
  event.preventDefault();
  dropZone.classList.add("dragging");
}));
["dragleave", "drop"].forEach((type) => dropZone.addEventListener(type, (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
}));
dropZone.addEventListener("drop", (event) => choose(event.dataTransfer.files[0]));

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON: fall through to the status text */ }
  return `The server answered ${response.status} ${response.statusText}.`;
}

function renderAnswer(doc) {
  document.getElementById("digit").textContent = doc.digit;
  document.getElementById("confidence").textContent = `(${(doc.confidence * 100).toFixed(1)}% sure)`;
  document.getElementById("model-version").textContent = doc.model_version || "";
  const bars = document.getElementById("bars");
  bars.replaceChildren();
  doc.probabilities.forEach((p, digit) => {
    const li = document.createElement("li");
    if (digit === doc.digit) li.className = "top";
    const label = document.createElement("span");
    label.textContent = digit;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(p * 100, 0.5)}%`;
    const value = document.createElement("span");
    value.textContent = `${(p * 100).toFixed(1)}%`;
    li.append(label, bar, value);
    bars.append(li);
  });
  answer.hidden = false;
}

const STATE_TEXT = { PENDING: "Queued…", STARTED: "Reading the digit…" };

async function poll(statusUrl) {
  let delay = 150;
  const deadline = Date.now() + 120000;
  while (Date.now() < deadline) {
    const response = await fetch(statusUrl, { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(await errorMessage(response));
    const doc = await response.json();
    if (doc.state === "SUCCESS") { statusLine.textContent = "Done."; renderAnswer(doc); return; }
    if (doc.state === "FAILURE") throw new Error(doc.error || "The image could not be read.");
    statusLine.textContent = STATE_TEXT[doc.state] || doc.state;
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 1.5, 2000);  // back off: a slow queue should not be hammered
  }
  throw new Error("No answer after two minutes; the queue may be very busy. The upload is kept: try the history later.");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!chosen) return;
  errorBox.hidden = true;
  answer.hidden = true;
  result.hidden = false;
  statusLine.textContent = "Uploading…";
  submit.disabled = true;
  try {
    const body = new FormData();
    body.append("file", chosen);
    const response = await fetch("/predict", { method: "POST", body });
    if (response.status !== 202) throw new Error(await errorMessage(response));
    const accepted = await response.json();
    await poll(accepted.status_url);
  } catch (err) {
    statusLine.textContent = "";
    showError(err.message);
  } finally {
    submit.disabled = !chosen;
    loadHistory();
  }
});

async function loadHistory() {
  const response = await fetch("/predictions?per_page=10");
  if (!response.ok) return;
  const page = await response.json();
  const rows = page.items.map((item) => {
    const tr = document.createElement("tr");
    const cells = [
      item.created_at ? new Date(item.created_at).toLocaleString() : "",
      item.filename || "",
      item.state,
      item.digit ?? "",
      item.confidence == null ? "" : `${(item.confidence * 100).toFixed(1)}%`,
    ];
    cells.forEach((text) => { const td = document.createElement("td"); td.textContent = text; tr.append(td); });
    return tr;
  });
  document.querySelector("#history tbody").replaceChildren(...rows);
}

loadHistory();
