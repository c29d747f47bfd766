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
// Which states are final (a card stops waiting, its Cancel goes): the server's list, so a new one joins by itself.
const FINAL = new Set(config.finalStates);

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
    this.canceling = false;  // a cancel request is on its way
    this.deleting = false;   // a delete request is on its way: no poll may ask for it (it is about to be a 404)
    this.gone = false;       // deleted from the service
    this.node = cardTemplate.content.firstElementChild.cloneNode(true);
    this.node.card = this;  // the poller finds the cards through the list's nodes
    this.cancelButton = this.node.querySelector(".cancel");
    this.cancelButton.addEventListener("click", () => this.cancel());
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

  // Final: nothing more to wait for or cancel. Focus on the Cancel button stays in the card, not lost to the page.
  settle() {
    this.final = true;
    const button = this.cancelButton;
    if (button.hidden) return;
    const hadFocus = document.activeElement === button;
    button.hidden = true;
    if (hadFocus) {
      this.node.tabIndex = -1;
      this.node.focus();
    }
  }

  note(text) {
    const box = this.node.querySelector(".card-note");
    box.textContent = text;
    box.hidden = !text;
  }

  fail(message) {
    this.settle();
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
    this.cancelButton.setAttribute("aria-label", `Cancel reading ${this.file.name}`);
    this.cancelButton.hidden = false;
  }

  // POST /tasks/<id>/cancel. A 409 means it finished first: the card shows the answer that won the race.
  async cancel() {
    if (this.canceling || this.final) return;
    this.canceling = true;
    this.cancelButton.setAttribute("aria-disabled", "true");
    this.note("");
    try {
      const response = await fetch(`/tasks/${encodeURIComponent(this.taskId)}/cancel`,
        { method: "POST", headers: { Accept: "application/json" } });
      if (response.ok || response.status === 409) {
        const body = await response.json();
        const doc = response.ok ? body : body.task;
        if (doc.state !== STATE.CANCELED) this.note("It finished before the cancel arrived.");
        this.update(doc);
        history.refreshSoon();
        refreshSystemSoon();
        poller.wake();  // the running poll still asks for this card: start one without it
      } else if (response.status === 404) {
        this.fail("The service no longer knows this upload.");
      } else {
        this.note(`Not canceled: ${await refusal(response)}`);
      }
    } catch (_) {
      this.note("Not canceled: the service could not be reached. Try again.");
    } finally {
      this.canceling = false;
      this.cancelButton.removeAttribute("aria-disabled");
    }
  }

  deleted() {
    this.deleting = false;
    this.gone = true;
    this.settle();
    this.setState("Deleted: the service no longer keeps this upload.", "deleted");
    this.node.querySelector(".answer").hidden = true;
    this.note("");
  }

  // Shows the status document from GET /tasks; true once the card is final.
  update(doc) {
    if (this.final) return true;  // an answer read before a cancel or delete landed changes nothing
    if (doc.state === STATE.SUCCESS) {
      this.settle();
      this.showAnswer(doc);
      return true;
    }
    if (doc.state === STATE.FAILURE) {
      this.fail(doc.error || "The image could not be read.");
      return true;
    }
    if (doc.state === STATE.CANCELED) {
      this.settle();
      this.setState("Canceled: it will not be read.", "canceled");
      return true;
    }
    if (FINAL.has(doc.state)) {  // a final state newer than this script: still final
      this.settle();
      this.setState(`Finished: ${doc.state}`, "done");
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
    history.refreshSoon();  // waiting uploads are history too: they can be deleted before they are read
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
      .filter((card) => card && card.taskId && !card.final && !card.deleting)
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
          // A card canceled or deleted meanwhile is final already: this answer is older news.
          tasks.forEach((doc, i) => { if (!batch[i].final) finished = batch[i].update(doc) || finished; });
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

// ---- Confirming a delete: "Delete …? Yes / No" in place of the button that asked ----

const confirmTemplate = $("confirm-template");
let confirmCount = 0;

const confirmer = {
  open: null,  // the confirmation on screen (one at a time): { close(answer) }

  // Resolves true for Yes, false for No, Escape or another confirmation opened instead. "No" has the focus:
  // a stray Enter keeps the data.
  ask(anchor, question, yesName, noName) {
    if (this.open) this.open.close(false);
    return new Promise((resolve) => {
      const box = confirmTemplate.content.firstElementChild.cloneNode(true);
      const label = box.querySelector(".question");
      label.id = `confirm-${(confirmCount += 1)}`;
      label.textContent = question;
      box.setAttribute("aria-labelledby", label.id);
      const yes = box.querySelector(".yes");
      const no = box.querySelector(".no");
      yes.setAttribute("aria-label", yesName);
      no.setAttribute("aria-label", noName);
      const handle = {
        close: (answer) => {
          if (this.open !== handle) return;
          this.open = null;
          const hadFocus = box.contains(document.activeElement);
          box.remove();
          anchor.hidden = false;
          if (hadFocus) anchor.focus();
          resolve(answer);
          history.resume();  // a reload that waited for the answer
        },
      };
      this.open = handle;
      yes.addEventListener("click", () => handle.close(true));
      no.addEventListener("click", () => handle.close(false));
      box.addEventListener("keydown", (event) => {
        if (event.key === "Escape") { event.preventDefault(); handle.close(false); }
      });
      anchor.hidden = true;
      anchor.after(box);
      no.focus();
    });
  },
};

// DELETE one upload or all of them. The cards concerned leave the poll first: a deleted id is a 404 to it.
async function erase(url, cards) {
  cards.forEach((card) => { card.deleting = true; });
  poller.wake();
  let response = null;
  try {
    response = await fetch(url, { method: "DELETE" });
  } catch (_) { /* reported below */ }
  if (response && response.status === 204) {
    cards.forEach((card) => card.deleted());
    return true;
  }
  cards.forEach((card) => { card.deleting = false; });
  poller.wake();
  history.say(response ? `Nothing was deleted: ${await refusal(response)}` : "Nothing was deleted: the service "
    + "could not be reached. Try again.");
  return false;
}

function cardsOf(taskIds) {  // the cards on this page of these uploads (all of them: null)
  return Array.from(cardsList.children).map((node) => node.card)
    .filter((card) => card && card.taskId && !card.gone && (taskIds === null || taskIds.includes(card.taskId)));
}

// ---- History: this visitor's uploads from the database, paged ----

function historyCell(item, column) {
  const td = document.createElement("td");
  if (column === "when") {
    td.textContent = item.created_at
      ? new Date(item.created_at).toLocaleString([], { dateStyle: "short", timeStyle: "medium" }) : "";
  } else if (column === "file") {
    td.textContent = item.filename || "";
    if (item.data_removed) {  // retention took the image's bytes; the answer stays
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "image removed";
      td.append(" ", tag);
    }
  } else if (column === "state") {
    td.textContent = item.state;
    td.className = `state-cell ${item.state.toLowerCase()}`;
  } else if (column === "digit") {
    td.textContent = item.digit ?? "";
  } else if (column === "confidence") {
    td.textContent = item.confidence == null ? "" : percent(item.confidence);
  } else if (column === "model") {
    td.textContent = item.model_version ? modelLabel(item) : "";
  }
  return td;
}

const history = {
  page: 1,
  perPage: 10,
  total: 0,
  timer: null,
  waiting: false,  // a reload came while a confirmation was open: it follows the answer

  refreshSoon() {  // many answers arrive together: one reload for all of them
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.load(), 300);
  },

  resume() {
    if (this.waiting) { this.waiting = false; this.load(); }
  },

  say(text) {
    $("history-status").textContent = text;
  },

  async load() {
    if (confirmer.open) { this.waiting = true; return; }  // never redraw the rows under an open question
    let page;
    try {
      const response = await fetch(`/predictions?page=${this.page}&per_page=${this.perPage}`);
      if (!response.ok) throw new Error(await refusal(response));
      page = await response.json();
    } catch (err) {
      $("history-page").textContent = `History unavailable: ${err.message}`;
      return;
    }
    if (confirmer.open) { this.waiting = true; return; }  // asked while this read was on its way
    const pages = Math.max(1, Math.ceil(page.total / page.per_page));
    if (this.page > pages) {  // the last rows of the last page were deleted: show the page before
      this.page = pages;
      await this.load();
      return;
    }
    this.total = page.total;
    const body = document.querySelector("#history tbody");
    // A redraw (an answer came in) keeps the keyboard where it was: on the same upload's Delete if still listed.
    const focused = body.contains(document.activeElement) ? document.activeElement.closest("tr").dataset.taskId : null;
    body.replaceChildren(...page.items.map((item) => this.row(item)));
    if (focused) {
      const again = Array.from(body.querySelectorAll("tr")).find((tr) => tr.dataset.taskId === focused);
      if (again) again.querySelector("button.delete").focus();
    }
    $("history-page").textContent = page.total ? `Page ${page.page} of ${pages} (${page.total} in all)` : "Empty";
    $("history-prev").disabled = this.page <= 1;
    $("history-next").disabled = this.page >= pages;
    $("erase").hidden = !page.total;
  },

  row(item) {
    const tr = document.createElement("tr");
    tr.dataset.taskId = item.task_id;
    ["when", "file", "state", "digit", "confidence", "model"].forEach((column) => tr.append(historyCell(item, column)));
    const actions = document.createElement("td");
    actions.className = "actions";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "small secondary danger delete";
    button.textContent = "Delete";
    const name = item.filename || "this upload";
    button.setAttribute("aria-label", `Delete ${name}`);
    button.addEventListener("click", () => this.remove(item, name, button));
    actions.append(button);
    tr.append(actions);
    return tr;
  },

  async remove(item, name, button) {
    this.say("");
    if (!await confirmer.ask(button, `Delete ${name}?`, `Yes, delete ${name}`, `No, keep ${name}`)) return;
    const rows = Array.from(document.querySelectorAll("#history tbody tr"));
    const index = rows.indexOf(button.closest("tr"));
    button.disabled = true;
    if (!await erase(`/tasks/${encodeURIComponent(item.task_id)}`, cardsOf([item.task_id]))) {
      button.disabled = false;
      button.focus();
      return;
    }
    button.closest("tr").remove();
    this.say(`Deleted ${name}.`);
    await this.load();
    // The keyboard stays in the table: on the row that took this one's place, or the heading once it is empty.
    const left = document.querySelectorAll("#history tbody button.delete");
    (left[Math.min(index, left.length - 1)] || $("history-title")).focus();
  },

  async removeAll() {
    const button = $("erase-all");
    this.say("");
    const what = this.total === 1 ? "your 1 upload" : `all ${this.total} of your uploads`;
    if (!await confirmer.ask(button, `Delete ${what}? This cannot be undone.`, `Yes, delete ${what}`,
      "No, keep them")) return;
    button.disabled = true;
    const done = await erase("/predictions", cardsOf(null));
    button.disabled = false;
    if (!done) { button.focus(); return; }
    this.say("Deleted all your uploads.");
    this.page = 1;
    await this.load();
    $("history-title").focus();
  },
};

// Paging away answers an open question with No: its row is about to leave the screen.
function turnPage(page) {
  if (confirmer.open) confirmer.open.close(false);
  history.page = Math.max(1, page);
  history.load();
}

$("history-prev").addEventListener("click", () => turnPage(history.page - 1));
$("history-next").addEventListener("click", () => turnPage(history.page + 1));
$("erase-all").addEventListener("click", () => history.removeAll());

setUpPad();
refreshSystem();
setInterval(refreshSystem, 15000);
history.load();
