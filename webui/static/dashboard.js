// edge dashboard: polls the appliance's REST views and draws them. No libraries, no build step.
//
// Every second: GET /api/status, and when a new frame has been reduced, /api/preview and /api/profile
// (404 before the first frame: the panels say so). Every few seconds: /api/run-summaries and the
// selected run's /api/runs/{uid} (its where-is-my-data report). When the appliance does not answer,
// a banner says so, the last values stay on screen greyed out, and polling retries every 2 s.
"use strict";

(() => {
  const POLL_MS = 1000;
  const PREVIEW_MS = 100; // the live image: asked for ten times a second, drawn when a new frame is there
  const RETRY_MS = 2000;
  const RUNS_MS = 4000;
  const FETCH_TIMEOUT_MS = 4000;
  const RATE_WINDOW_S = 5;
  const UPSTREAM_WINDOW_S = 20;

  const $ = (id) => document.getElementById(id);

  // ---- formatting ------------------------------------------------------------------------------------
  const esc = (value) =>
    String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  const num = (value) => (value === null || value === undefined || value === "" ? NaN : Number(value));
  function fmtInt(value) {
    const n = num(value);
    return Number.isFinite(n) ? Math.round(n).toLocaleString("en-US") : "–";
  }
  function fmtBytes(value) {
    let n = num(value);
    if (!Number.isFinite(n)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i += 1;
    }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + " " + units[i];
  }
  function fmtDuration(value) {
    const s = num(value);
    if (!Number.isFinite(s)) return "–";
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
    if (s < 3600) {
      const whole = Math.round(s);
      return `${Math.floor(whole / 60)} min` + (whole % 60 ? ` ${whole % 60} s` : "");
    }
    if (s < 86400) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " days";
  }
  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(epochSeconds, withDate = true) {
    const n = num(epochSeconds);
    if (!Number.isFinite(n)) return "–";
    const d = new Date(n * 1000);
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withDate ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}` : time;
  }
  const shortChecksum = (text) => (text && text.length > 22 ? `${text.slice(0, 21)}…` : text || "–");
  const shortUid = (uid) => (uid ? String(uid).slice(0, 8) : "–");
  const UNIT_LABELS = { "2th_deg": "2θ (degrees)", "q_nm^-1": "q (nm⁻¹)", "q_A^-1": "q (Å⁻¹)", r_mm: "r (mm)" };

  function setText(id, text, cls) {
    const el = $(id);
    if (!el) return;
    el.textContent = text;
    if (cls !== undefined) el.className = cls;
  }

  // ---- talking to the appliance ------------------------------------------------------------------------
  class Unreachable extends Error {}

  /** JSON from `path`; null on 404 (nothing there yet); throws Unreachable on anything else. */
  async function getJSON(path) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      let response;
      try {
        response = await fetch(path, { cache: "no-store", signal: controller.signal });
      } catch (error) {
        throw new Unreachable(controller.signal.aborted ? `no answer within ${FETCH_TIMEOUT_MS / 1000} s` : "connection failed");
      }
      if (response.status === 404) return null;
      if (!response.ok) throw new Unreachable(`${path} answered HTTP ${response.status}`);
      return await response.json();
    } finally {
      clearTimeout(timer);
    }
  }

  /** A rate from a counter's samples over the last `windowS` seconds of appliance uptime. */
  class RateMeter {
    constructor(windowS) {
      this.windowS = windowS;
      this.samples = [];
    }
    add(t, value) {
      const last = this.samples[this.samples.length - 1];
      if (!Number.isFinite(t) || !Number.isFinite(value)) return;
      if (last && (t < last.t || value < last.v)) this.samples = []; // the appliance restarted
      if (last && t === last.t) return;
      this.samples.push({ t, v: value });
      while (this.samples.length > 2 && t - this.samples[0].t > this.windowS) this.samples.shift();
    }
    rate() {
      if (this.samples.length < 2) return null;
      const a = this.samples[0];
      const b = this.samples[this.samples.length - 1];
      return b.t > a.t ? (b.v - a.v) / (b.t - a.t) : null;
    }
    reset() {
      this.samples = [];
    }
  }

  const state = {
    reachable: null,
    lastContact: null,
    lastUptime: null,
    imageKey: null,
    previewKey: null,
    previewShown: null, // the last frame drawn: its detector timestamp and when it was drawn (for latency checks)
    runsFetchedAt: 0,
    runsKey: null,
    selectedRun: null,
    currentRun: null,
    alarmsKey: "",
    profile: null,
    frameRate: new RateMeter(RATE_WINDOW_S),
    upstreamRate: new RateMeter(UPSTREAM_WINDOW_S),
  };

  // ---- colormap (viridis, interpolated from nine anchors) --------------------------------------------------
  const VIRIDIS = [
    [68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [110, 206, 88], [253, 231, 37],
  ];
  const LUT = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i += 1) {
    const x = (i / 255) * (VIRIDIS.length - 1);
    const k = Math.min(Math.floor(x), VIRIDIS.length - 2);
    const f = x - k;
    for (let c = 0; c < 3; c += 1) LUT[i * 3 + c] = VIRIDIS[k][c] + f * (VIRIDIS[k + 1][c] - VIRIDIS[k][c]);
  }

  function drawColorbar() {
    const canvas = $("colorbar");
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(256, 1);
    for (let i = 0; i < 256; i += 1) {
      img.data.set([LUT[i * 3], LUT[i * 3 + 1], LUT[i * 3 + 2], 255], i * 4);
    }
    ctx.putImageData(img, 0, 0);
  }

  // ---- live image ---------------------------------------------------------------------------------------
  function drawPreview(preview) {
    const canvas = $("preview");
    const empty = $("preview-empty");
    if (!preview || !preview.width || !preview.height || !preview.pixels_b64) {
      empty.hidden = false;
      setText("preview-caption", "");
      return;
    }
    const { width, height } = preview;
    const pixels = Uint8Array.from(atob(preview.pixels_b64), (c) => c.charCodeAt(0));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
      const scale = 256 / Math.max(width, height);
      canvas.style.width = `${Math.round(width * scale)}px`;
      canvas.style.height = `${Math.round(height * scale)}px`;
    }
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(width, height);
    const out = img.data;
    const n = Math.min(pixels.length, width * height);
    for (let i = 0; i < n; i += 1) {
      const v = pixels[i] * 3;
      out[i * 4] = LUT[v];
      out[i * 4 + 1] = LUT[v + 1];
      out[i * 4 + 2] = LUT[v + 2];
      out[i * 4 + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    empty.hidden = true;
    const when = preview.processed_at ? ` at ${fmtTime(preview.processed_at, false)}` : "";
    setText("preview-caption", `frame ${fmtInt(preview.frame)} of run ${shortUid(preview.run_uid)}${when}`);
    $("preview-caption").title = preview.run_uid || "";
  }

  // ---- profile plot ---------------------------------------------------------------------------------------
  function niceTicks(lo, hi, count) {
    const span = hi - lo;
    if (!(span > 0)) return { ticks: [lo], step: 1 };
    let step = 10 ** Math.floor(Math.log10(span / count));
    const err = (count / span) * step;
    if (err <= 0.15) step *= 10;
    else if (err <= 0.35) step *= 5;
    else if (err <= 0.75) step *= 2;
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(v);
    return { ticks, step };
  }
  function fmtTick(value, step) {
    if (Math.abs(value) < step * 1e-9) return "0";
    if (Math.abs(value) >= 1e5 || Math.abs(value) < 1e-3) return value.toExponential(1);
    return value.toFixed(Math.max(0, -Math.floor(Math.log10(step))));
  }

  function drawProfile(profile) {
    state.profile = profile;
    const svg = $("profile");
    const empty = $("profile-empty");
    if (!profile || !profile.radial || !profile.intensity) {
      empty.hidden = false;
      svg.innerHTML = "";
      setText("profile-caption", "");
      return;
    }
    const W = svg.clientWidth;
    const H = svg.clientHeight;
    if (!W || !H) return;
    const logY = $("profile-log").checked;
    const pts = [];
    const n = Math.min(profile.radial.length, profile.intensity.length);
    for (let i = 0; i < n; i += 1) {
      const x = profile.radial[i];
      const y = profile.intensity[i];
      if (!Number.isFinite(x) || !Number.isFinite(y) || (logY && y <= 0)) continue;
      pts.push([x, logY ? Math.log10(y) : y]);
    }
    if (pts.length < 2) {
      empty.textContent = "the profile has no finite values yet";
      empty.hidden = false;
      svg.innerHTML = "";
      return;
    }
    empty.hidden = true;
    const m = { l: 64, r: 14, t: 10, b: 42 };
    let xlo = Infinity, xhi = -Infinity, ylo = Infinity, yhi = -Infinity;
    for (const [x, y] of pts) {
      xlo = Math.min(xlo, x); xhi = Math.max(xhi, x);
      ylo = Math.min(ylo, y); yhi = Math.max(yhi, y);
    }
    if (!logY) ylo = Math.min(0, ylo);
    if (logY) { ylo = Math.floor(ylo); yhi = Math.max(Math.ceil(yhi), ylo + 1); }
    if (yhi <= ylo) yhi = ylo + 1;
    if (xhi <= xlo) xhi = xlo + 1;
    if (!logY) yhi += (yhi - ylo) * 0.04;
    const sx = (x) => m.l + ((x - xlo) / (xhi - xlo)) * (W - m.l - m.r);
    const sy = (y) => H - m.b - ((y - ylo) / (yhi - ylo)) * (H - m.t - m.b);
    const parts = [];
    const xt = niceTicks(xlo, xhi, Math.max(3, Math.floor((W - m.l) / 90)));
    for (const v of xt.ticks) {
      const X = sx(v).toFixed(1);
      parts.push(`<line class="gridline" x1="${X}" x2="${X}" y1="${m.t}" y2="${H - m.b}"/>`);
      parts.push(`<text x="${X}" y="${H - m.b + 15}" text-anchor="middle">${esc(fmtTick(v, xt.step))}</text>`);
    }
    const yt = logY
      ? { ticks: Array.from({ length: yhi - ylo + 1 }, (_, k) => ylo + k), step: 1 }
      : niceTicks(ylo, yhi, Math.max(3, Math.floor((H - m.b) / 45)));
    for (const v of yt.ticks) {
      const Y = sy(v).toFixed(1);
      const label = logY ? fmtTick(10 ** v, 10 ** v) : fmtTick(v, yt.step);
      parts.push(`<line class="gridline" x1="${m.l}" x2="${W - m.r}" y1="${Y}" y2="${Y}"/>`);
      parts.push(`<text x="${m.l - 6}" y="${Y}" dy="4" text-anchor="end">${esc(label)}</text>`);
    }
    parts.push(`<line class="axis" x1="${m.l}" x2="${m.l}" y1="${m.t}" y2="${H - m.b}"/>`);
    parts.push(`<line class="axis" x1="${m.l}" x2="${W - m.r}" y1="${H - m.b}" y2="${H - m.b}"/>`);
    const line = pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    parts.push(`<polyline class="trace" points="${line}"/>`);
    const xlabel = UNIT_LABELS[profile.unit] || profile.unit || "radial";
    parts.push(`<text class="label" id="profile-xlabel" x="${(m.l + W - m.r) / 2}" y="${H - 6}" text-anchor="middle">${esc(xlabel)}</text>`);
    const ylabel = logY ? "mean intensity per pixel (counts, log)" : "mean intensity per pixel (counts)";
    parts.push(`<text class="label" id="profile-ylabel" transform="translate(14 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor="middle">${esc(ylabel)}</text>`);
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.innerHTML = parts.join("");
    setText("profile-caption", `${n} bins`);
  }

  // ---- status tiles ---------------------------------------------------------------------------------------
  function setBar(id, fraction, markFraction) {
    const bar = $(id);
    const fill = bar.querySelector(".fill");
    const f = Math.max(0, Math.min(1, Number.isFinite(fraction) ? fraction : 0));
    fill.style.width = `${(f * 100).toFixed(1)}%`;
    fill.className = "fill" + (f >= 0.9 ? " bad" : f >= 0.6 ? " warn" : "");
    const mark = bar.querySelector(".mark");
    if (mark) {
      mark.hidden = !Number.isFinite(markFraction);
      if (Number.isFinite(markFraction)) mark.style.left = `calc(${(Math.min(1, markFraction) * 100).toFixed(1)}% - 1px)`;
    }
  }

  function renderStatus(s) {
    const app = s.appliance || {};
    const uptime = num(app.uptime_seconds);
    if (state.lastUptime !== null && uptime < state.lastUptime) {
      // a restarted appliance: counters began again
      state.frameRate.reset();
      state.upstreamRate.reset();
      state.imageKey = null;
      state.runsKey = null;
    }
    state.lastUptime = uptime;
    state.currentRun = app.run_uid || null;

    const pill = $("run-state");
    if (app.stopping) {
      pill.textContent = "stopping";
      pill.className = "pill";
    } else if (app.run_uid) {
      pill.textContent = `acquiring run ${shortUid(app.run_uid)}`;
      pill.title = app.run_uid;
      pill.className = "pill acquiring";
    } else {
      pill.textContent = "idle";
      pill.title = "";
      pill.className = "pill";
    }
    const pipe = s.pipeline || {};
    const degraded = (pipe.backend_degraded_from || []).length ? ` (fell back from ${pipe.backend_degraded_from.join(", ")})` : "";
    setText("backend", pipe.backend ? `kernels: ${pipe.backend}${degraded}` : "");
    setText("uptime", Number.isFinite(uptime) ? `up ${fmtDuration(uptime)}` : "");

    // frames
    const f = s.frames || {};
    state.frameRate.add(uptime, num(f.received));
    const rate = state.frameRate.rate();
    setText("frame-rate", rate === null ? "–" : rate.toFixed(rate < 10 ? 1 : 0));
    setText("frames-received", fmtInt(f.received));
    setText("frames-stored", fmtInt(f.stored));
    setText("frames-delivered", fmtInt(f.delivered));
    setText("frames-lost", fmtInt(f.lost), num(f.lost) > 0 ? "bad" : "");
    setText("frames-incomplete", fmtInt(f.incomplete), num(f.incomplete) > 0 ? "warn" : "");
    setText("frames-loss-records", fmtInt(f.loss_records), num(f.loss_records) > 0 ? "bad" : "");

    // ring
    const ring = s.ring || {};
    const slots = num(ring.slots);
    setBar("ring-bar", num(ring.fill) / slots, num(ring.max_fill) / slots);
    setText("ring-fill", `${fmtInt(ring.fill)} of ${fmtInt(ring.slots)} slots in use`);
    setText("ring-max", Number.isFinite(num(ring.max_fill)) ? `peak ${fmtInt(ring.max_fill)}` : "");
    setText("ring-policy", ring.policy ? `when full: ${ring.policy}` : "");
    setText("ring-dropped", fmtInt(ring.dropped), num(ring.dropped) > 0 ? "bad" : "");
    setText("ring-full-waits", fmtInt(ring.full_waits), num(ring.full_waits) > 0 ? "warn" : "");
    setText("pipeline-processed", fmtInt(pipe.frames_processed));
    const ratio = num(pipe.bytes_raw) / num(pipe.bytes_compressed);
    setText("pipeline-ratio", Number.isFinite(ratio) && ratio > 0 ? `${ratio.toFixed(2)}×` : "–");

    // disk and retention
    const disk = s.disk || {};
    const ret = s.retention || {};
    const diskPercent = num(disk.percent ?? ret.disk_percent);
    setBar("disk-bar", diskPercent / 100);
    setText("disk-used", Number.isFinite(diskPercent) ? `${diskPercent.toFixed(1)} % of ${fmtBytes(disk.total)} used` : "–");
    setText("disk-free", `${fmtBytes(disk.free ?? ret.disk_free_bytes)} free`);
    setText("store-bytes", `${fmtBytes(ret.store_bytes)} / ${fmtBytes(ret.capacity_bytes)}`);
    $("store-bytes").title = "bytes in the local store / the store's capacity (quota, or the disk)";
    setText("store-unverified", fmtBytes(ret.unverified_bytes), ret.alarm ? "bad" : "");
    setText("store-verified", fmtBytes(ret.verified_bytes));
    setText("store-full-in", ret.full_in_seconds == null ? "not filling" : fmtDuration(ret.full_in_seconds),
      ret.full_in_seconds != null && ret.full_in_seconds < 3600 ? "bad" : "");
    setText("store-accepting", ret.accepting_runs === false ? "REFUSED" : ret.accepting_runs ? "accepted" : "–",
      ret.accepting_runs === false ? "bad" : "good");

    // upstream
    const up = s.upstream || {};
    const ledger = s.ledger || {};
    const pending = num(ledger.bytes_pending);
    state.upstreamRate.add(uptime, num(up.bytes_sent));
    const sendRate = state.upstreamRate.rate();
    setText("upstream-pending", fmtBytes(pending));
    setText("upstream-rate", sendRate === null ? "–" : `${fmtBytes(sendRate)}/s`);
    let eta = "–";
    if (pending === 0) eta = "nothing pending";
    else if (sendRate > 0) eta = fmtDuration(pending / sendRate);
    else if (sendRate === 0) eta = `stalled: nothing sent in ${UPSTREAM_WINDOW_S} s`;
    else if (Number.isFinite(pending)) eta = "measuring…";
    setText("upstream-eta", eta, pending > 0 && sendRate === 0 ? "warn" : "");
    setText("upstream-files", fmtInt(up.files_verified));
    renderConsumers(up.consumers || [], ledger.consumers || []);

    // detector and receiver
    const det = s.detector || {};
    if (!det.enabled) {
      setText("detector-state", "not controlled (stream only)", "muted");
    } else {
      const down = det.connected === false || det.state === "Disconnected";
      setText("detector-state", `${det.state || "Unknown"}${det.prefix ? ` (${det.prefix})` : ""}`, down ? "bad" : "good");
    }
    const rx = s.receiver || {};
    setText("receiver-endpoint", rx.endpoint || "–");
    setText("receiver-messages", fmtInt(rx.messages ?? rx.packets));
    setText("receiver-series", fmtInt(rx.series_started ?? rx.series));
    const errs = Object.entries(rx.errors || {});
    setText("receiver-errors", errs.length ? errs.map(([k, v]) => `${k}: ${v}`).join(", ") : "none", errs.length ? "bad" : "");

    renderAlarms(s);
  }

  function renderConsumers(live, acked) {
    const byName = new Map();
    for (const c of acked) byName.set(c.consumer, { consumer: c.consumer, chunks_acked: c.chunks_acked });
    for (const c of live) byName.set(c.consumer, { ...(byName.get(c.consumer) || {}), ...c });
    const rows = [...byName.values()].map((c) => {
      let link = '<span class="muted">never seen</span>';
      if (c.connected === true) link = '<span class="good">connected</span>';
      else if (c.connected === false) link = `<span class="bad">gone ${esc(fmtDuration(c.seconds_since_seen))}</span>`;
      return `<tr><td>${esc(c.consumer)}</td><td>${link}</td><td class="num">${esc(fmtInt(c.credit))}</td>` +
        `<td class="num">${esc(fmtInt(c.in_flight))}</td><td class="num">${esc(fmtInt(c.chunks_acked))}</td></tr>`;
    });
    $("consumers").tBodies[0].innerHTML = rows.length ? rows.join("") : '<tr><td colspan="5" class="muted">no consumer has connected</td></tr>';
  }

  /** What needs a person's attention, worst first: [severity, text] pairs. */
  function alarmsFrom(s) {
    const out = [];
    const ret = s.retention || {};
    if (ret.alarm) out.push(["error", `Storage alarm: ${ret.alarm}`]);
    else if (ret.accepting_runs === false) out.push(["error", "The store refuses new runs"]);
    const det = s.detector || {};
    if (det.enabled && (det.connected === false || det.state === "Disconnected")) {
      out.push(["error", `Detector disconnected${det.prefix ? ` (${det.prefix})` : ""}: no frames can arrive`]);
    }
    const f = s.frames || {};
    if (num(f.lost) > 0) {
      out.push(["error", `${fmtInt(f.lost)} frames lost (${fmtInt(f.loss_records)} loss records): open a run below for the frame ranges and reasons`]);
    }
    if (num(f.incomplete) > 0) out.push(["warn", `${fmtInt(f.incomplete)} frames incomplete: kept, with the missing pixels flagged`]);
    const rec = (s.appliance || {}).recovery || {};
    const parts = [];
    if ((rec.runs_failed || []).length) parts.push(`${rec.runs_failed.length} run(s) marked failed (${rec.runs_failed.map(shortUid).join(", ")})`);
    if ((rec.salvaged || []).length) parts.push(`${rec.salvaged.length} closed file(s) salvaged`);
    if ((rec.quarantined || []).length) parts.push(`${rec.quarantined.length} half-written file(s) quarantined`);
    if (num(rec.frames_lost) > 0) parts.push(`${fmtInt(rec.frames_lost)} frames unaccounted for`);
    if (parts.length) out.push(["warn", `Recovered after a crash: ${parts.join("; ")}`]);
    const consumers = (s.upstream || {}).consumers || [];
    if (!consumers.some((c) => c.connected)) out.push(["warn", "No upstream consumer connected: data stays on the local disk until one pulls it"]);
    const errs = Object.entries((s.receiver || {}).errors || {});
    if (errs.length) out.push(["warn", `Receiver errors: ${errs.map(([k, v]) => `${k} ${v}`).join(", ")}`]);
    if ((s.appliance || {}).stopping) out.push(["warn", "The appliance is stopping"]);
    return out;
  }

  function renderAlarms(s) {
    const alarms = alarmsFrom(s);
    const key = JSON.stringify(alarms);
    if (key === state.alarmsKey) return;
    state.alarmsKey = key;
    $("alarms").innerHTML = alarms.map(([sev, text]) => `<li class="${sev}">${esc(text)}</li>`).join("");
  }

  // ---- runs and where-is-my-data ---------------------------------------------------------------------------
  function stateChips(states) {
    const order = ["acquired", "stored", "forwarded", "verified", "purgeable", "purged"];
    const entries = Object.entries(states || {}).sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]));
    return entries.map(([name, count]) => `<span class="chip ${esc(name)}">${esc(count)} ${esc(name)}</span>`).join(" ") || '<span class="muted">no files yet</span>';
  }
  function exitChip(run) {
    const status = run.exit_status || (run.ended_at ? "ended" : run.run_uid === state.currentRun ? "running" : "unfinished");
    return `<span class="chip ${esc(status)}">${esc(status)}</span>`;
  }
  function pendingEta(pending, eta) {
    if (num(pending) === 0) return ["none", "done"];
    if (!Number.isFinite(num(pending))) return ["–", "–"];
    return [fmtBytes(pending), eta == null ? "waiting" : fmtDuration(eta)];
  }

  function renderRuns(runs) {
    const body = $("runs").tBodies[0];
    if (!runs.length) {
      body.innerHTML = '<tr><td colspan="10" class="muted">no runs yet</td></tr>';
      return;
    }
    body.innerHTML = runs.map((r) => {
      const [pending, eta] = pendingEta(r.bytes_pending, r.eta_seconds);
      const lost = num(r.frames_lost);
      const lostCell = lost > 0 || num(r.loss_records) > 0
        ? `<span class="bad">${esc(fmtInt(lost))}</span> <span class="muted small">(${esc(fmtInt(r.loss_records))} rec.)</span>`
        : esc(fmtInt(lost));
      const selected = r.run_uid === state.selectedRun ? " selected" : "";
      return `<tr data-run="${esc(r.run_uid)}" class="${selected}" title="${esc(r.run_uid)}">` +
        `<td class="mono">${esc(shortUid(r.run_uid))}</td><td>${esc(fmtTime(r.started_at))}</td><td>${exitChip(r)}</td>` +
        `<td class="num">${esc(fmtInt(r.frames_stored))}</td><td class="num">${esc(fmtInt(r.frames_delivered))}</td>` +
        `<td class="num">${lostCell}</td><td class="num">${esc(fmtInt(r.files))}</td><td>${stateChips(r.states)}</td>` +
        `<td class="num">${esc(pending)}</td><td>${esc(eta)}</td></tr>`;
    }).join("");
  }

  function renderWhere(detail) {
    const card = $("where-card");
    if (!detail) {
      $("where").innerHTML = `<p class="bad">Run ${esc(state.selectedRun)} is not in the ledger.</p>`;
      return;
    }
    card.hidden = false;
    const w = detail.where || detail;
    const files = w.files || detail.files || [];
    const losses = w.losses || detail.losses || [];
    setText("where-run", w.run_uid || detail.run_uid);
    const [pending, eta] = pendingEta(w.bytes_pending, w.eta_seconds);
    const summary = [
      ["status", exitChip({ ...detail, ...w })],
      ["started", esc(fmtTime(w.started_at ?? detail.started_at))],
      ["ended", esc(fmtTime(w.ended_at ?? detail.ended_at))],
      ["frames", `${esc(fmtInt(w.frames_stored))} stored, ${esc(fmtInt(w.frames_delivered))} delivered, ` +
        `<span class="${num(w.frames_lost) > 0 ? "bad" : ""}">${esc(fmtInt(w.frames_lost))} lost</span>` +
        ` (expected ${esc(w.frames_expected == null ? "unknown" : fmtInt(w.frames_expected))})`],
      ["upstream needs", esc((w.required_consumers || []).join(", ") || "–")],
      ["pending", esc(pending)],
      ["ETA", esc(eta)],
    ].map(([k, v]) => `<span><span class="muted">${k}:</span> ${v}</span>`).join("");
    const fileRows = files.map((f) => {
      const local = f.on_local_disk === false ? '<span class="muted">(purged locally)</span> ' : "";
      const confirmed = Object.entries(f.verified_by || {});
      const by = confirmed.length
        ? confirmed.map(([c, t]) => `${esc(c)} <span class="muted small">${esc(fmtTime(t, false))}</span>`).join(", ")
        : '<span class="muted">nobody yet</span>';
      const frames = f.frames ? `${f.frames[0]}–${f.frames[1]}` : f.n_frames ? fmtInt(f.n_frames) : "metadata";
      return `<tr><td><span class="chip ${esc(f.state)}">${esc(f.state)}</span></td>` +
        `<td>${local}<span class="path">${esc(f.path)}</span></td><td class="num">${esc(fmtBytes(f.size))}</td>` +
        `<td class="num">${esc(frames)}</td><td class="mono small nowrap" title="${esc(f.checksum)}">${esc(shortChecksum(f.checksum))}</td><td>${by}</td></tr>`;
    }).join("");
    const lossRows = losses.map((r) => {
      const count = num(r.last_frame) - num(r.first_frame) + 1;
      const kind = r.partial ? "incomplete" : "LOST";
      return `<tr><td><span class="chip ${kind}">${kind}</span></td><td class="num">${esc(r.first_frame)}–${esc(r.last_frame)}</td>` +
        `<td class="num">${esc(fmtInt(count))}</td><td>${esc(r.reason)}</td><td>${esc(r.detail)}</td><td>${esc(fmtTime(r.at))}</td></tr>`;
    }).join("");
    $("where").innerHTML =
      `<div class="summary">${summary}</div>` +
      `<h3>Files (${files.length})</h3>` +
      (files.length
        ? `<table class="grid" id="where-files"><thead><tr><th>state</th><th>path</th><th>size</th><th>frames</th><th>checksum</th><th>confirmed by</th></tr></thead><tbody>${fileRows}</tbody></table>`
        : '<p class="muted">No file closed yet.</p>') +
      `<h3>Loss records (${losses.length})</h3>` +
      (losses.length
        ? `<table class="grid" id="where-losses"><thead><tr><th>kind</th><th>frames</th><th>count</th><th>reason</th><th>detail</th><th>at</th></tr></thead><tbody>${lossRows}</tbody></table>`
        : '<p class="good" id="where-no-losses">No frames lost.</p>');
  }

  async function refreshWhere() {
    if (!state.selectedRun) return;
    const uid = state.selectedRun;
    const detail = await getJSON(`/api/runs/${encodeURIComponent(uid)}`);
    if (uid === state.selectedRun) renderWhere(detail);
  }

  async function selectRun(uid) {
    state.selectedRun = uid;
    history.replaceState(null, "", uid ? `#run=${encodeURIComponent(uid)}` : location.pathname);
    for (const tr of $("runs").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.run === uid);
    if (!uid) {
      $("where-card").hidden = true;
      return;
    }
    $("where-card").hidden = false;
    setText("where-run", uid);
    $("where").innerHTML = '<p class="muted">loading…</p>';
    try {
      await refreshWhere();
    } catch (error) {
      $("where").innerHTML = `<p class="bad">Could not load the run: ${esc(error.message)}</p>`;
    }
  }

  async function refreshRuns(status, force) {
    const ledger = status.ledger || {};
    const key = JSON.stringify([ledger.files, ledger.frames_stored, ledger.loss_records, status.appliance?.run_uid]);
    const due = Date.now() - state.runsFetchedAt >= RUNS_MS;
    if (!force && !due && key === state.runsKey) return;
    state.runsKey = key;
    state.runsFetchedAt = Date.now();
    const runs = await getJSON("/api/run-summaries?limit=20");
    renderRuns(runs || []);
    await refreshWhere();
  }

  async function refreshImages(status) {
    const key = `${status.pipeline?.frames_processed}`;
    if (key === state.imageKey) return;
    const profile = await getJSON("/api/profile");
    drawProfile(profile);
    state.imageKey = profile ? key : null; // keep asking until there is one
  }

  // The live image has its own, faster loop: a frame should be on screen well within 200 ms of the
  // detector taking it. It pauses while the page is hidden or the appliance does not answer.
  async function previewTick() {
    try {
      if (document.visibilityState !== "hidden" && state.reachable !== false) {
        const preview = await getJSON("/api/preview");
        const key = preview ? `${preview.run_uid}|${preview.frame}|${preview.received_at}` : null;
        if (key !== state.previewKey) {
          drawPreview(preview);
          state.previewKey = key;
          if (preview) state.previewShown = { frame: preview.frame, detectorNs: preview.detector_timestamp_ns, shownMs: Date.now() };
        }
      }
    } catch (error) {
      if (!(error instanceof Unreachable)) console.error("dashboard preview:", error);
    }
    setTimeout(previewTick, PREVIEW_MS);
  }

  // ---- connection state and the loop ----------------------------------------------------------------------
  function setReachable(ok, error) {
    const banner = $("unreachable");
    if (ok) {
      state.lastContact = Date.now();
      banner.hidden = true;
      $("main").classList.remove("stale");
      $("link-dot").className = "dot up";
      setText("updated", `updated ${fmtTime(Date.now() / 1000, false)}`);
    } else {
      const since = state.lastContact === null ? "it has not answered since this page opened" : `last answer ${fmtDuration((Date.now() - state.lastContact) / 1000)} ago`;
      setText("unreachable-detail", `(${error ? error.message + "; " : ""}${since}.)`);
      banner.hidden = false;
      $("main").classList.add("stale");
      $("link-dot").className = "dot down";
    }
    state.reachable = ok;
  }

  async function tick() {
    let ok = true;
    try {
      const status = await getJSON("/api/status");
      if (!status) throw new Unreachable("/api/status is missing");
      setReachable(true);
      renderStatus(status);
      const results = await Promise.allSettled([refreshImages(status), refreshRuns(status, false)]);
      for (const r of results) if (r.status === "rejected") throw r.reason;
    } catch (error) {
      if (error instanceof Unreachable) {
        ok = false;
        setReachable(false, error);
      } else {
        console.error("dashboard:", error); // a bug here must not look like an outage
      }
    }
    setTimeout(tick, ok ? POLL_MS : RETRY_MS);
  }

  $("runs").tBodies[0].addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-run]");
    if (row) selectRun(row.dataset.run);
  });
  $("where-close").addEventListener("click", () => selectRun(null));
  $("profile-log").addEventListener("change", () => drawProfile(state.profile));
  window.addEventListener("resize", () => drawProfile(state.profile));
  drawColorbar();
  const fromHash = /^#run=(.+)$/.exec(location.hash);
  if (fromHash) selectRun(decodeURIComponent(fromHash[1]));
  tick();
  previewTick();
})();
