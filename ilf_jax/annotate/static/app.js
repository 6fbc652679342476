// ilf annotate: the page's logic. Every stored or user text is put into the page with
// textContent or a textarea's value, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { csrf: "", me: "", total: 0, item: null, dirty: false, leaseS: 600, filterTimer: null, busy: false };

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRF-Token"] = state.csrf;
    init.body = JSON.stringify(body || {});
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { data = { error: text }; }
  if (!response.ok) {
    const error = new Error((data && data.error) || text || response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

function say(text, kind) {
  const box = $("message");
  box.textContent = text;
  box.className = kind || "";
}

function badge(el, label, kind) {
  el.textContent = label;
  el.className = "badge " + (kind || "");
}

function yesNo(el, value, yesText, noText) {
  el.textContent = value ? yesText : noText;
  el.className = value ? "yes" : "no";
}

function setProgress(p) {
  state.total = p.total;
  $("progress").textContent = `${p.done} of ${p.total} done (${p.saved} saved, ${p.cant_fix} can't fix)`;
  $("progress-bar").max = Math.max(1, p.total);
  $("progress-bar").value = p.done;
}

async function refreshQueue() {
  const data = await api("GET", "/api/queue");
  setProgress(data.progress);
  const list = $("queue");
  list.replaceChildren();
  for (const entry of data.items) {
    const li = document.createElement("li");
    li.textContent = String(entry.task_id);
    li.dataset.taskId = String(entry.task_id);
    li.classList.add(entry.status);
    if (entry.lease_holder && !entry.mine) {
      li.classList.add("taken");
      li.title = `being annotated by ${entry.lease_holder}`;
    }
    if (state.item && entry.task_id === state.item.task_id) li.classList.add("current");
    li.addEventListener("click", () => openItem(entry.task_id));
    list.appendChild(li);
  }
}

function showFilter(f) {
  if (f.passed === null || f.passed === undefined) {
    $("f-passed").textContent = "not run on this text";
    $("f-passed").className = "";
  } else {
    yesNo($("f-passed"), f.passed, "yes", "no");
  }
  $("f-distance").textContent = `${f.distance} ${f.small_edit ? "<" : ">="} 0.5 x max length = ${f.limit}`;
  $("f-distance").className = f.small_edit ? "yes" : "no";
  yesNo($("f-kept"), f.kept, "yes", f.passed === null ? "not yet (run the tests)" : "no");
}

function showVerdict(verdict, error) {
  if (!verdict) {
    badge($("verdict"), "not run", "");
    $("run-error").textContent = "";
    return;
  }
  badge($("verdict"), verdict, verdict);
  $("run-error").textContent = error || "";
}

async function showHistory() {
  const data = await api("GET", `/api/items/${state.item.task_id}/history`);
  $("history-count").textContent = String(data.history.length);
  const list = $("history");
  list.replaceChildren();
  for (const h of data.history) {
    const li = document.createElement("li");
    const head = document.createElement("div");
    const when = new Date(h.created * 1000).toLocaleString();
    head.textContent = `v${h.version} ${h.status} by ${h.annotator} at ${when}, tests: ${h.verdict || "-"}`;
    const fb = document.createElement("div");
    fb.className = "fb";
    fb.textContent = h.feedback;
    li.append(head, fb);
    list.appendChild(li);
  }
}

function show(item) {
  state.item = item;
  state.dirty = false;
  $("empty").hidden = true;
  $("item").hidden = false;
  $("item-title").textContent = `Task ${item.task_id}` + (item.split ? ` (${item.split})` : "") +
    `, item ${item.position + 1} of ${state.total}`;
  badge($("item-status"), item.status === "cant_fix" ? "can't fix" : item.status, item.status);
  $("item-version").textContent = item.version ? `version ${item.version} by ${item.annotator}` : "";
  $("task-text").textContent = item.text || item.prompt;
  $("tests").textContent = item.test;
  $("program").textContent = item.program;
  $("error").textContent = item.error || "(no error text)";
  $("feedback").value = item.feedback;
  $("refinement").value = item.refinement;
  $("skip").textContent = item.status === "pending" ? "Skip" : "Next";
  showVerdict(item.version ? item.verdict : null, item.refinement_error);
  history.replaceState(null, "", `#${item.task_id}`);
  if (item.split === "test") {
    say("An MBPP_Test task: training leaves its annotation out unless feedback.allow_test_annotations=true.", "bad");
  }
  scheduleFilter(0);
  showHistory();
  refreshQueue();
}

function showEmpty() {
  state.item = null;
  $("item").hidden = true;
  $("empty").hidden = false;
  history.replaceState(null, "", "#");
  refreshQueue();
}

function scheduleFilter(delay) {
  clearTimeout(state.filterTimer);
  state.filterTimer = setTimeout(async () => {
    if (!state.item) return;
    const taskId = state.item.task_id;
    const data = await api("POST", `/api/items/${taskId}/filter`, { refinement: $("refinement").value });
    if (state.item && state.item.task_id === taskId) showFilter(data.filter);
  }, delay);
}

async function guarded(action) {
  if (state.busy) return;
  state.busy = true;
  for (const id of ["run", "save", "skip", "cantfix"]) $(id).disabled = true;
  try {
    await action();
  } catch (e) {
    say(e.message, "bad");
  } finally {
    state.busy = false;
    for (const id of ["run", "save", "skip", "cantfix"]) $(id).disabled = false;
  }
}

function confirmLeave() {
  return !state.dirty || window.confirm("Discard the unsaved edits on this item?");
}

async function nextItem() {
  const data = await api("POST", "/api/next");
  if (data.item) show(data.item); else showEmpty();
}

async function openItem(taskId) {
  if (state.item && state.item.task_id === taskId) return;
  if (!confirmLeave()) return;
  await guarded(async () => {
    const data = await api("POST", `/api/items/${taskId}/claim`);
    say("");
    show(data.item);
  });
}

async function runTests() {
  await guarded(async () => {
    say("running the tests...");
    const data = await api("POST", `/api/items/${state.item.task_id}/run`, { refinement: $("refinement").value });
    showVerdict(data.verdict, data.error);
    showFilter(data.filter);
    say(data.passed ? "The refinement passes the tests." : `The refinement does not pass: ${data.verdict}.`,
        data.passed ? "good" : "bad");
  });
}

async function save(status) {
  await guarded(async () => {
    const item = state.item;
    const data = await api("POST", `/api/items/${item.task_id}/save`, {
      feedback: $("feedback").value, refinement: $("refinement").value, base_version: item.version, status });
    item.version = data.version;
    item.status = status;
    item.feedback = $("feedback").value;
    item.refinement = $("refinement").value;
    item.verdict = data.verdict;
    item.annotator = state.me;
    state.dirty = false;
    setProgress(data.progress);
    showVerdict(data.verdict, data.error);
    showFilter(data.filter);
    badge($("item-status"), status === "cant_fix" ? "can't fix" : status, status);
    $("item-version").textContent = `version ${data.version} by ${state.me}`;
    $("skip").textContent = "Next";
    say(status === "cant_fix" ? `Flagged as can't fix (version ${data.version}).`
        : `Saved version ${data.version} (tests: ${data.verdict}).`, "good");
    await showHistory();
    await refreshQueue();
    if (status === "cant_fix") await nextItem();
  });
}

async function skipOrNext() {
  if (!state.item || !confirmLeave()) return;
  await guarded(async () => {
    const pending = state.item.status === "pending";
    const data = pending ? await api("POST", `/api/items/${state.item.task_id}/skip`) : await api("POST", "/api/next");
    say(pending ? `Skipped task ${state.item.task_id}.` : "");
    if (data.item) show(data.item); else showEmpty();
  });
}

async function exportAll() {
  await guarded(async () => {
    const data = await api("POST", "/api/export");
    say(`Exported ${data.rows} annotations to ${data.path}`, "good");
  });
}

async function renewLease() {
  if (!state.item) return;
  try {
    await api("POST", `/api/items/${state.item.task_id}/renew`);
  } catch (e) {
    say(`Lease lost: ${e.message}`, "bad");
  }
}

function onKey(event) {
  const ctrl = event.ctrlKey || event.metaKey;
  if (!state.item) return;
  if (ctrl && event.key === "Enter") { event.preventDefault(); runTests(); }
  else if (ctrl && (event.key === "s" || event.key === "S")) { event.preventDefault(); save("saved"); }
  else if (event.altKey && event.code === "KeyN") { event.preventDefault(); skipOrNext(); }
  else if (event.altKey && event.code === "KeyX") { event.preventDefault(); save("cant_fix"); }
  else if (event.altKey && event.code === "KeyR") { event.preventDefault(); resetRefinement(); }
  else if (event.altKey && event.code === "KeyF") { event.preventDefault(); $("feedback").focus(); }
}

function resetRefinement() {
  $("refinement").value = state.item.program;
  state.dirty = true;
  scheduleFilter(0);
}

function indentOnTab(event) {
  if (event.key !== "Tab" || event.ctrlKey || event.altKey || event.metaKey) return;
  event.preventDefault();
  const area = event.target;
  const start = area.selectionStart;
  area.setRangeText("    ", start, area.selectionEnd, "end");
  state.dirty = true;
  scheduleFilter(300);
}

async function main() {
  const session = await api("GET", "/api/session");
  state.csrf = session.csrf;
  state.me = session.annotator;
  state.leaseS = session.lease_s;
  $("who").textContent = `annotator: ${session.annotator}`;
  setProgress(session.progress);
  $("run").addEventListener("click", runTests);
  $("save").addEventListener("click", () => save("saved"));
  $("skip").addEventListener("click", skipOrNext);
  $("cantfix").addEventListener("click", () => save("cant_fix"));
  $("reset").addEventListener("click", resetRefinement);
  $("export").addEventListener("click", exportAll);
  $("feedback").addEventListener("input", () => { state.dirty = true; });
  $("refinement").addEventListener("input", () => { state.dirty = true; scheduleFilter(300); });
  $("refinement").addEventListener("keydown", indentOnTab);
  document.addEventListener("keydown", onKey);
  window.addEventListener("beforeunload", (event) => { if (state.dirty) event.preventDefault(); });
  setInterval(renewLease, Math.max(5, state.leaseS / 3) * 1000);
  const wanted = parseInt(location.hash.slice(1), 10);
  if (Number.isInteger(wanted)) {
    try {
      show((await api("POST", `/api/items/${wanted}/claim`)).item);
      return;
    } catch (e) {
      say(e.message, "bad");
    }
  }
  await nextItem();
}

main().catch((e) => say(e.message, "bad"));
