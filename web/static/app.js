// The page: upload, paste or draw digits; one card per image follows it through the queue. No framework, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const errorBox = $("error");
const cardsList = $("cards");
const cardTemplate = $("card-template");

// What the page must agree on with the API, rendered by the server from the definitions: the state names
// (shared.schema.State) and the limits (settings, web/schemas.py).
const config = JSON.parse($("page-config").textContent);
const STATE = config.states;

const SLOW_AFTER_MS = 5000;   // a card still queued after this long says the queue is busy
const LONG_POLL_S = Math.min(20, config.maxWaitSeconds);  // how long the server holds a status read for us
const MAX_IDS_PER_POLL = config.maxIdsPerPoll;            // the API's limit for GET /tasks?ids=

// Until /system answers: the limits this page was rendered with.
const system = { maxUploadBytes: config.maxUploadBytes, maxFiles: config.maxFiles, queueLength: 0, workers: null };

// Which model read an answer: its architecture and version (rows from before names were kept have none).
function modelLabel(doc) {
  if (!doc.model_version) return "unknown";
  return doc.model_name ? `${doc.model_name} ${doc.model_version}` : doc.model_version;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function percent(p) {
  return `${(p * 100).toFixed(1)}%`;
}

// ---- Messages for what the API refuses ----

async function refusal(response) {
  let message = "";
  try {
    const body = await response.json();
    message = (body.error && body.error.message) || "";
  } catch (_) { /* not JSON (a proxy's page): fall back to the status below */ }
  if (response.status === 429) {
    const wait = Number(response.headers.get("Retry-After"));
    const when = wait > 0 ? `in ${wait} second${wait === 1 ? "" : "s"}` : "in a minute";
    return `Too many uploads from your address: try again ${when}.`;
  }
  if (response.status === 503) {
    return `${message || "The service is unavailable."} Nothing was kept; try again shortly.`;
  }
  if (response.status === 413 && !message) {
    return `Too large: the most this service takes is ${mib(system.maxUploadBytes)} per image.`;
  }
  return message || `The server answered ${response.status} ${response.statusText}.`;
}

function mib(bytes) {
  return `${Math.round(bytes / (1024 * 1024))} MiB`;
}

// ---- Cards ----

class Card {
  constructor(file) {
    this.file = file;
    this.taskId = null;
    this.queuedAt = 0;
    this.askedAt = 0;
    this.final = false;
    this.node = cardTemplate.content.firstElementChild.cloneNode(true);
    this.node.card = this;  // the poller finds the cards through the list's nodes
    this.thumbUrl = URL.createObjectURL(file);
    const thumb = this.node.querySelector(".thumb");
    thumb.src = this.thumbUrl;
    thumb.alt = `Thumbnail of ${file.name}`;
    // The decoded picture stays on screen: the blob can go. A file that is not an image shows none.
    thumb.addEventListener("load", () => URL.revokeObjectURL(this.thumbUrl), { once: true });
    thumb.addEventListener("error", () => { thumb.hidden = true; URL.revokeObjectURL(this.thumbUrl); }, { once: true });
    this.node.querySelector(".name").textContent = file.name;
    this.setState("Uploading…", "uploading");
  }

  setState(text, kind) {
    const line = this.node.querySelector(".state");
    if (line.textContent !== text) line.textContent = text;  // a live region: announce changes only
    this.node.dataset.state = kind;
  }

  isSlow() {
    return Date.now() - this.queuedAt > SLOW_AFTER_MS;
  }

  fail(message) {
    this.final = true;
    this.setState("Not read", "error");
    const box = this.node.querySelector(".card-error");
    box.textContent = message;
    box.hidden = false;
  }

  queued(taskId) {
    this.taskId = taskId;
    this.queuedAt = Date.now();
    this.node.dataset.taskId = taskId;
    this.setState("Queued…", "queued");
  }

  // Shows the status document from GET /tasks; true once the card is final.
  update(doc) {
    if (doc.state === STATE.SUCCESS) {
      this.final = true;
      this.showAnswer(doc);
      return true;
    }
    if (doc.state === STATE.FAILURE) {
      this.fail(doc.error || "The image could not be read.");
      return true;
    }
    if (doc.state === STATE.STARTED) {
      this.setState("Reading the digit…", "running");
    } else if (this.isSlow()) {
      const ahead = system.queueLength > 0 ? ` (${system.queueLength} waiting)` : "";
      const why = system.workers === 0 ? "no worker is running right now" : `the queue is busy${ahead}`;
      this.setState(`Still queued: ${why}. The upload is kept and will be read.`, "slow");
    }
    return false;
  }

  showAnswer(doc) {
    this.setState(`Done: ${doc.digit}, ${percent(doc.confidence)} sure`, "done");
    const answer = this.node.querySelector(".answer");
    answer.querySelector(".digit").textContent = doc.digit;
    answer.querySelector(".confidence").textContent = `${percent(doc.confidence)} sure`;
    answer.querySelector(".model").textContent = modelLabel(doc);
    const bars = answer.querySelector(".bars");
    bars.replaceChildren(...doc.probabilities.map((p, digit) => {
      const li = document.createElement("li");
      if (digit === doc.digit) li.className = "top";
      const label = document.createElement("span");
      label.textContent = digit;
      const track = document.createElement("span");
      track.className = "track";
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.max(p * 100, 0.5)}%`;  // CSSOM, which the CSP allows
      track.append(bar);
      const value = document.createElement("span");
      value.textContent = percent(p);
      li.append(label, track, value);
      return li;
    }));
    answer.hidden = false;
  }
}

// ---- Sending: one request per group of files (the batch path); a refusal is retried file by file ----

async function post(files) {
  const body = new FormData();
  files.forEach((file) => body.append("file", file, file.name));
  return fetch("/predict", { method: "POST", body });
}

async function send(cards) {
  let response;
  try {
    response = await post(cards.map((c) => c.file));
  } catch (_) {
    cards.forEach((c) => c.fail("Could not reach the service: check your connection and try again."));
    return;
  }
  if (response.status === 202) {
    let tasks;
    try {
      const accepted = await response.json();
      tasks = accepted.tasks || [accepted];
    } catch (_) {  // cut off, or a proxy's page: we cannot know the task ids
      cards.forEach((c) => c.fail("The answer to the upload was cut off; check the history, or send it again."));
      return;
    }
    tasks.forEach((task, i) => cards[i].queued(task.task_id));
    poller.wake();
    return;
  }
  const message = await refusal(response);
  // One bad file refuses the whole request: send the files alone so each card gets its own answer.
  if (cards.length > 1 && [400, 413, 415].includes(response.status)) {
    await Promise.all(cards.map((card) => send([card])));
    return;
  }
  cards.forEach((c) => c.fail(message));
}

function submitFiles(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  showError("");
  const cards = files.map((file) => new Card(file));
  cardsList.prepend(...cards.map((card) => card.node));  // newest upload on top, its files in order
  $("no-results").hidden = true;
  const ready = [];
  cards.forEach((card) => {
    const file = card.file;
    // Checked here too, so a huge file is not sent only to be refused.
    if (file.size > system.maxUploadBytes) {
      card.fail(`'${file.name}' is larger than ${mib(system.maxUploadBytes)}, the most this service takes.`);
    } else {
      ready.push(card);
    }
  });
  for (let i = 0; i < ready.length; i += system.maxFiles) send(ready.slice(i, i + system.maxFiles));
}

// ---- Waiting: one long poll for the queued cards, returning as soon as any of them is final ----

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const poller = {
  running: false,
  controller: null,

  wake() {  // new cards: the running poll does not know their ids, so end it; the loop starts another
    if (this.controller) this.controller.abort();
    if (!this.running) this.run();
  },

  pending() {  // the least recently asked first, so that more cards than one poll may ask for all get their turn
    return Array.from(cardsList.children)
      .map((node) => node.card)
      .filter((card) => card && card.taskId && !card.final)
      .sort((a, b) => a.askedAt - b.askedAt);
  },

  async run() {
    this.running = true;
    let failures = 0;
    try {
      for (;;) {
        if (this.pending().some((card) => card.isSlow())) await refreshSystem();
        const batch = this.pending().slice(0, MAX_IDS_PER_POLL);  // read after every await: cards may have come
        if (!batch.length) break;
        const slow = batch.some((card) => card.isSlow());
        // Short waits while a card may turn slow, so its message appears on time; long ones after.
        const wait = slow ? LONG_POLL_S : Math.ceil(SLOW_AFTER_MS / 1000);
        batch.forEach((card) => { card.askedAt = Date.now(); });
        this.controller = new AbortController();
        const asked = Date.now();
        try {
          const ids = batch.map((card) => card.taskId).join(",");
          const response = await fetch(`/tasks?ids=${ids}&wait=${wait}&until=any`,
            { headers: { Accept: "application/json" }, signal: this.controller.signal });
          if (response.status === 404) {
            await this.dropUnknown(batch);
            continue;
          }
          if (!response.ok) throw new Error(await refusal(response));
          const { tasks } = await response.json();
          let finished = false;
          tasks.forEach((doc, i) => { finished = batch[i].update(doc) || finished; });
          if (finished) {  // answers arrive: the history and the service line (workers, queue) have news too
            history.refreshSoon();
            refreshSystemSoon();
          }
          failures = 0;
          showError("");
          // Answered at once with nothing new: the server had no thread to hold us. Don't spin.
          if (!finished && Date.now() - asked < 1000) await pause(1000);
        } catch (err) {
          if (err.name === "AbortError") continue;
          failures += 1;
          showError(`Waiting for answers: ${err.message || "the connection failed."} Retrying…`);
          await pause(Math.min(1000 * 2 ** failures, 15000));
        } finally {
          this.controller = null;
        }
      }
    } finally {
      this.running = false;
    }
  },

  async dropUnknown(batch) {  // some id is unknown (the database was reset?): find which, stop asking for it
    await Promise.all(batch.map(async (card) => {
      const response = await fetch(`/tasks/${card.taskId}`, { headers: { Accept: "application/json" } });
      if (response.status === 404) card.fail("The service no longer knows this upload; please send it again.");
    }));
  },
};

// ---- Upload inputs: picker, drag and drop, paste ----

const input = $("file-input");
const dropZone = $("drop-zone");
input.addEventListener("change", () => { submitFiles(input.files); input.value = ""; });
["dragenter", "dragover"].forEach((type) => dropZone.addEventListener(type, (event) => {
  event.preventDefault();
  dropZone.classList.add("dragging");
}));
["dragleave", "drop"].forEach((type) => dropZone.addEventListener(type, (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
}));
dropZone.addEventListener("drop", (event) => submitFiles(event.dataTransfer.files));
// A file dropped beside the zone would make the browser open it, losing every card: take it too.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => {
  event.preventDefault();
  if (!dropZone.contains(event.target)) submitFiles(event.dataTransfer.files);
});
document.addEventListener("paste", (event) => {
  const files = Array.from(event.clipboardData ? event.clipboardData.files : []);
  if (files.length) { event.preventDefault(); submitFiles(files); }
});

// ---- Drawing pad: pointer events cover mouse, touch and pen ----

const pad = $("pad");
const ink = pad.getContext("2d");
const padPredict = $("pad-predict");
const padClear = $("pad-clear");
let drawing = null;  // the pointer drawing now: a second finger must not join its stroke
let drawn = 0;

function clearPad() {
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, pad.width, pad.height);
  drawn = 0;
  padPredict.disabled = true;
  padClear.disabled = true;
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();  // the canvas may be drawn smaller than 280 px on a phone
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

pad.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  if (drawing !== null) return;
  pad.setPointerCapture(event.pointerId);
  drawing = event.pointerId;
  const [x, y] = padPoint(event);
  ink.beginPath();
  ink.moveTo(x, y);
  ink.lineTo(x + 0.01, y);  // a tap leaves a dot
  ink.stroke();
});
pad.addEventListener("pointermove", (event) => {
  if (event.pointerId !== drawing) return;
  const [x, y] = padPoint(event);
  ink.lineTo(x, y);
  ink.stroke();
  drawn += 1;
  padPredict.disabled = false;
  padClear.disabled = false;
});
["pointerup", "pointercancel"].forEach((type) => pad.addEventListener(type, (event) => {
  if (event.pointerId === drawing) drawing = null;
}));

padClear.addEventListener("click", clearPad);
padPredict.addEventListener("click", () => {
  if (!drawn) return;
  pad.toBlob((blob) => {
    const stamp = new Date().toTimeString().slice(0, 8).replaceAll(":", "");
    submitFiles([new File([blob], `drawing-${stamp}.png`, { type: "image/png" })]);
    clearPad();
  }, "image/png");
});

function setUpPad() {
  ink.lineWidth = 22;  // about MNIST's stroke: 2.2 px of a 28 px digit
  ink.lineCap = "round";
  ink.lineJoin = "round";
  ink.strokeStyle = "#000";
  clearPad();
}

// ---- What serves uploads now ----

async function refreshSystem() {
  const line = $("system");
  try {
    const response = await fetch("/system", { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(await refusal(response));
    const info = await response.json();
    Object.assign(system, { maxUploadBytes: info.max_upload_bytes, maxFiles: info.max_files_per_request,
                            queueLength: info.queue_length, workers: info.workers });
    const waiting = info.queue_length ? `${info.queue_length} waiting in the queue` : "queue empty";
    if (!info.workers) {
      line.textContent = `No worker is running: uploads are kept and read when one starts (${waiting}).`;
      line.dataset.level = "warn";
    } else {
      const models = info.model_versions.join(", ");
      line.textContent = `Model ${models} · ${info.workers} worker${info.workers === 1 ? "" : "s"} · ${waiting}`;
      line.dataset.level = info.queue_length > 100 ? "warn" : "ok";
    }
  } catch (err) {
    line.textContent = `Service status unknown: ${err.message}`;
    line.dataset.level = "warn";
  }
}

let systemTimer = null;
function refreshSystemSoon() {  // many answers arrive together: one refresh for all of them
  clearTimeout(systemTimer);
  systemTimer = setTimeout(refreshSystem, 300);
}

// ---- History: this visitor's uploads from the database, paged ----

const history = {
  page: 1,
  perPage: 10,
  timer: null,

  refreshSoon() {  // many answers arrive together: one reload for all of them
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), 300);
  },

  async load() {
    let page;
    try {
      const response = await fetch(`/predictions?page=${this.page}&per_page=${this.perPage}`);
      if (!response.ok) throw new Error(await refusal(response));
      page = await response.json();
    } catch (err) {
      $("history-page").textContent = `History unavailable: ${err.message}`;
      return;
    }
    const pages = Math.max(1, Math.ceil(page.total / page.per_page));
    const rows = page.items.map((item) => {
      const tr = document.createElement("tr");
      [
        item.created_at ? new Date(item.created_at).toLocaleString([], { dateStyle: "short", timeStyle: "medium" }) : "",
        item.filename || "",
        item.state,
        item.digit ?? "",
        item.confidence == null ? "" : percent(item.confidence),
        item.model_version ? modelLabel(item) : "",
      ].forEach((text) => { const td = document.createElement("td"); td.textContent = text; tr.append(td); });
      return tr;
    });
    document.querySelector("#history tbody").replaceChildren(...rows);
    $("history-page").textContent = page.total ? `Page ${page.page} of ${pages} (${page.total} in all)` : "Empty";
    $("history-prev").disabled = this.page <= 1;
    $("history-next").disabled = this.page >= pages;
  },
};

$("history-prev").addEventListener("click", () => { history.page = Math.max(1, history.page - 1); history.load(); });
$("history-next").addEventListener("click", () => { history.page += 1; history.load(); });

setUpPad();
refreshSystem();
setInterval(refreshSystem, 15000);
history.load();
