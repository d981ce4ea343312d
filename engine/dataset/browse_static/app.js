// The SABER build browser's page: filters -> /api/clips, a clip -> /api/clips/<id> (+ frames, audio, curation).
// Plain DOM, no framework; every value from the build is inserted as text, never as HTML.
"use strict";

const LABELS = {status: "Status", stage: "Stage", reason: "Reason", dataset: "Corpus", lang: "Language",
                emotion: "Emotion", relation: "Relation"};
const SCORES = ["duration_s", "width", "height", "fps", "snr_db", "asr_metric", "asr_wer", "consistency_score",
                "consistency_method", "n_frames", "decoder", "audio_offset_s", "audio_covered_s", "attempts"];
let current = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

async function getJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({error: response.statusText}));
  return {ok: response.ok, status: response.status, body};
}

function filterQuery() {
  const params = new URLSearchParams();
  for (const select of document.querySelectorAll("#filter-fields select")) {
    if (select.value) params.set(select.name, select.value);
  }
  return params;
}

async function loadSummary() {
  const {body} = await getJson("/api/summary");
  const report = body.report ? ` · report: ${body.report.input ?? "?"} in, ${body.report.kept ?? "?"} kept` : "";
  document.getElementById("build-info").textContent =
    `${body.output} · ${body.clips} clips${report} · read-only; curation marks go to ${body.curation}`;
  const initial = new URLSearchParams(location.search);
  const fields = document.getElementById("filter-fields");
  for (const name of body.filters) {
    const select = el("select", {name, id: `filter-${name}`}, el("option", {value: ""}, "any"));
    for (const [value, count] of Object.entries(body.facets[name])) {
      select.append(el("option", {value}, `${value} (${count})`));
    }
    select.value = initial.get(name) || "";
    select.addEventListener("change", loadClips);
    fields.append(el("label", {}, LABELS[name] || name, select));
  }
  document.getElementById("clear-filters").addEventListener("click", () => {
    for (const select of fields.querySelectorAll("select")) select.value = "";
    loadClips();
  });
}

async function loadClips() {
  const params = filterQuery();
  history.replaceState(null, "", params.toString() ? `?${params}` : location.pathname);
  const {body} = await getJson(`/api/clips?${params}`);
  document.getElementById("clip-count").textContent =
    body.total > body.clips.length ? `first ${body.clips.length} of ${body.total}` : body.total;
  const rows = body.clips.map((clip) => {
    const why = clip.status === "rejected" ? `${clip.stage} / ${clip.reason}` : "";
    const row = el("tr", {class: "clip", "data-clip-id": clip.clip_id, title: clip.source_uri},
      el("td", {class: "mono"}, clip.clip_id.slice(0, 8)), el("td", {class: clip.status}, clip.status),
      el("td", {class: "why"}, why), el("td", {}, clip.dataset ?? ""), el("td", {}, clip.lang ?? ""),
      el("td", {}, clip.emotion ?? ""), el("td", {}, clip.relation ?? ""),
      el("td", {}, clip.duration_s == null ? "" : clip.duration_s.toFixed(1)));
    row.addEventListener("click", () => openClip(clip.clip_id));
    if (clip.clip_id === current) row.classList.add("selected");
    return row;
  });
  document.querySelector("#clips tbody").replaceChildren(...rows);
}

async function openClip(clipId) {
  current = clipId;
  for (const row of document.querySelectorAll("#clips tr.clip")) {
    row.classList.toggle("selected", row.dataset.clipId === clipId);
  }
  const {body} = await getJson(`/api/clips/${clipId}`);
  const row = body.row;
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-title").textContent = `${clipId} — ${row.source_uri}`;
  const status = row.status === "rejected"
    ? el("div", {class: "reject-box"}, el("strong", {}, `rejected at ${row.reject_stage}: ${row.reject_reason}`),
         ` (${row.failure ?? "final"}) `, el("div", {class: "mono"}, row.reject_detail ?? ""))
    : el("div", {class: "kept-box"}, el("strong", {}, "kept"));
  document.getElementById("detail-status").replaceChildren(status);
  showCuration(body.curation);
  showTranscript(body.transcript);
  document.getElementById("annotation").replaceChildren(...Object.entries(body.annotation).flatMap(
    ([name, text]) => [el("dt", {}, name), el("dd", {}, text ?? "—")]));
  document.getElementById("description").textContent = row.description ?? "—";
  document.getElementById("scores").replaceChildren(...SCORES.filter((k) => row[k] != null).map(
    (k) => el("tr", {}, el("td", {}, k), el("td", {class: "mono"}, shortNumber(row[k])))));
  const relation = body.relation;
  document.getElementById("relation").textContent = relation
    ? (relation.verdict === "ok"
      ? `${relation.av_relation}, intensity ${relation.av_intensity}: ${relation.av_reason ?? ""} (${relation.judge})`
      : `judge failed: ${relation.fail_reason} ${relation.fail_detail ?? ""} (${relation.judge})`)
    : "not judged";
  document.getElementById("provenance").textContent = JSON.stringify(
    {provenance: body.provenance, asr_model: row.asr_model, annotation_source: row.annotation_source,
     run_id: row.run_id, processed_at: row.processed_at, corpus_extras: body.corpus_extras}, null, 2);
  document.getElementById("row").textContent = JSON.stringify(row, null, 2);
  await showMedia(clipId);
}

function shortNumber(value) {
  return typeof value === "number" && !Number.isInteger(value) ? Number(value.toPrecision(4)) : value;
}

function showTranscript(transcript) {
  const box = document.getElementById("transcript");
  if (!transcript) { box.textContent = "no ASR transcript"; return; }
  const ref = el("div", {class: "line"}, el("span", {class: "label"}, "annotated"));
  const hyp = el("div", {class: "line"}, el("span", {class: "label"}, "ASR"));
  for (const op of transcript.ops) {
    const cls = {equal: ["", ""], delete: ["del", ""], insert: ["", "ins"], replace: ["rep-ref", "rep-hyp"]}[op.op];
    if (op.ref) ref.append(el("span", {class: cls[0]}, op.ref), " ");
    if (op.hyp) hyp.append(el("span", {class: cls[1]}, op.hyp), " ");
  }
  const verdict = el("div", {}, transcript.equal ? "identical after normalisation" : "differences highlighted");
  box.replaceChildren(ref, hyp, verdict);
}

async function showMedia(clipId) {
  const frames = document.getElementById("frames");
  const info = document.getElementById("frames-info");
  const audio = document.getElementById("audio");
  frames.replaceChildren(el("span", {}, "decoding..."));
  info.textContent = "";
  document.getElementById("audio-info").textContent = "decoding...";
  audio.removeAttribute("src");
  audio.load();  // drop the previous clip's sound: a stale player would lie about this clip
  audio.hidden = true;
  const {ok, body} = await getJson(`/api/clips/${clipId}/frames`);
  if (clipId !== current) return;
  if (!ok) {
    frames.replaceChildren(el("span", {class: "error"}, `media not decodable: ${body.error} ${body.detail ?? ""}`));
    document.getElementById("audio-info").textContent = "no audio: the media could not be decoded";
    return;
  }
  info.textContent = `decoded now from the source by ${body.decoder}: video ${body.video_duration_s.toFixed(2)} s, ` +
    `audio ${body.audio_duration_s.toFixed(2)} s (offset ${body.audio_offset_s.toFixed(2)} s)`;
  frames.replaceChildren(...body.times.map((t, i) => el("figure", {},
    el("img", {src: `/api/clips/${clipId}/frames/${i}.jpg`, alt: `frame at ${t} s`}), el("figcaption", {}, `${t} s`))));
  audio.src = `/api/clips/${clipId}/audio.wav`;
  audio.hidden = false;
  document.getElementById("audio-info").textContent = "16 kHz mono, on the video's clock, as the build's stages heard it";
}

function showCuration(curation) {
  const state = document.getElementById("curation-state");
  if (!curation) { state.textContent = "not marked"; return; }
  const notes = curation.notes.length ? ` · notes: ${curation.notes.join(" | ")}` : "";
  state.textContent = `${curation.action ?? "no decision"}${notes}`;
}

async function mark(action) {
  const note = document.getElementById("note");
  const {ok, body} = await getJson(`/api/clips/${current}/curation`, {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({action, note: note.value})});
  document.getElementById("curation-error").textContent = ok ? "" : body.error;
  if (ok) { showCuration(body.curation); note.value = ""; }
}

document.getElementById("mark-keep").addEventListener("click", () => mark("keep"));
document.getElementById("mark-drop").addEventListener("click", () => mark("drop"));
document.getElementById("mark-note").addEventListener("click", () => mark("note"));
loadSummary().then(loadClips);
