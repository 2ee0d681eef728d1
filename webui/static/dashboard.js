// edge dashboard: live updates pushed by the appliance (Server-Sent Events, /api/events), drawn here.
// No libraries, no build step (charts.js draws the trends).
//
// The appliance pushes its status once a second and the live image when a new frame is there (at most
// ten a second, shared among the open pages); the page reconnects by itself. When pushes stop the header says "stale" within
// 3 s and "offline" when the appliance does not answer at all; the last values stay on screen, greyed.
// Pulled on demand: the runs table and a run's where-is-my-data report (when the ledger changed), the
// reduced profile and the mode's product (when a new frame was reduced; 404 = nothing yet).
// Writes (acknowledging an alarm) send the token kept in this browser's localStorage.
"use strict";

(() => {
  const STALE_MS = 3000; // no status push for this long: "stale"
  const OFFLINE_MS = 4000; // ... for this long (four missed pushes), or the stream broke and a probe failed: "offline"
  const MODE_MS = 2000; // the next run's mode is asked for again this often (GET /api/reduction)
  const RUNS_MS = 10000; // the runs table is asked for again this often, or sooner when the ledger changed,
  const RUNS_MIN_MS = 3000; // but not more often than this: each row is a where-report the daemon computes
  const RUNS_LIMIT = 50;
  const FETCH_TIMEOUT_MS = 4000;
  const PRODUCT_MS = 1000;
  const TREND_WINDOW_S = 600;
  const TOKEN_KEY = "edge.apiToken";

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
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + " " + units[i];
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
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  function fmtTime(epochSeconds, withDate = true, millis = false) {
    const n = num(epochSeconds);
    if (!Number.isFinite(n)) return "–";
    const d = new Date(n * 1000);
    let time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    if (millis) time += `.${pad(d.getMilliseconds(), 3)}`;
    return withDate ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}` : time;
  }
  function localDate(epochSeconds) {
    const d = new Date(num(epochSeconds) * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  }
  function fmtCounts(value) {
    const n = num(value);
    if (!Number.isFinite(n)) return "–";
    if (n >= 1e5) return n.toExponential(1);
    return n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(n < 10 ? 1 : 0);
  }
  /** A reconstructed value (attenuation per pixel, of either sign and any size): 3 significant digits. */
  function fmtValue(value) {
    const n = num(value);
    if (!Number.isFinite(n)) return "–";
    if (n === 0) return "0";
    return Math.abs(n) >= 1e5 || Math.abs(n) < 1e-3 ? n.toExponential(2) : String(Number(n.toPrecision(3)));
  }
  const shortChecksum = (text) => (text && text.length > 22 ? `${text.slice(0, 21)}…` : text || "–");
  // a run's name in the runs table, where runs are told apart: a UUID's first 8 characters; a name the
  // detector gave, whole up to 40 characters (it may wrap), else its first and last 18 ("plate-A-position-06"
  // and "plate-B-position-06" of one beamtime read alike cut shorter, an outside probe)
  const tableUid = (uid) => {
    if (!uid) return "–";
    const text = String(uid);
    if (/^[0-9a-f]{8}-[0-9a-f]{4}-/i.test(text)) return text.slice(0, 8);
    return text.length <= 40 ? text : `${text.slice(0, 18)}…${text.slice(-18)}`;
  };
  // a run's short name: a UUID's first 8 characters; a name the detector gave, whole up to 16
  // characters, else its head and tail ("beamtime…al-042"): two runs of one beamtime showed as one
  // "beamtime" (an outside probe). The same rule as edge.alarms.short_uid.
  const shortUid = (uid) => {
    if (!uid) return "–";
    const text = String(uid);
    if (/^[0-9a-f]{8}-[0-9a-f]{4}-/i.test(text) || text.length <= 8) return text.slice(0, 8);
    return text.length <= 16 ? text : `${text.slice(0, 8)}…${text.slice(-6)}`;
  };
  /** A long path as ".../last/two" parts; the full path goes in the title and the copy button. */
  function shortPath(path) {
    const parts = String(path || "").split("/");
    let name = parts[parts.length - 1];
    if (name.length > 28) name = `${name.slice(0, 8)}…${name.slice(-16)}`; // run uids make names long
    return parts.length > 1 ? `…/${name}` : name;
  }
  function pathCell(path) {
    if (!path) return '<span class="muted">–</span>';
    return `<span class="path" title="${esc(path)}" data-full="${esc(path)}">${esc(shortPath(path))}</span>` +
      `<button type="button" class="copy" data-copy="${esc(path)}" title="copy the full path">copy</button>`;
  }
  const UNIT_LABELS = { "2th_deg": "2θ (degrees)", "2th_rad": "2θ (radians)", "q_nm^-1": "q (nm⁻¹)", "q_A^-1": "q (Å⁻¹)" };

  function setText(id, text, cls) {
    const el = $(id);
    if (!el) return;
    if (el.textContent !== text) el.textContent = text;
    if (cls !== undefined && el.className !== cls) el.className = cls;
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

  const token = {
    get: () => localStorage.getItem(TOKEN_KEY) || "",
    set: (value) => (value ? localStorage.setItem(TOKEN_KEY, value) : localStorage.removeItem(TOKEN_KEY)),
  };

  /** A write (POST, or PUT with a JSON body) with the stored token; resolves to {ok, status, body}. */
  async function write(path, method = "POST", json = undefined) {
    const headers = {};
    if (token.get()) headers.Authorization = `Bearer ${token.get()}`;
    if (json !== undefined) headers["Content-Type"] = "application/json";
    const body = json === undefined ? undefined : JSON.stringify(json);
    const response = await fetch(path, { method, headers, body, cache: "no-store" });
    let answer = null;
    try {
      answer = await response.json();
    } catch (error) {
      answer = null;
    }
    if (token.get() && (response.ok || response.status === 401 || response.status === 403)) {
      tokenCheck.verdict = response.ok ? "accepted" : "refused";
      tokenCheck.status = response.status;
      showTokenState();
    }
    return { ok: response.ok, status: response.status, body: answer };
  }

  /** Why a write was refused, in words. */
  function refusal(result) {
    if (result.status === 401) return "refused: the token is missing or wrong (set it with the token button above)";
    if (result.status === 403) return "refused: writes are disabled on this appliance (no api.token configured)";
    return `refused: ${result.body?.detail || `HTTP ${result.status}`}`;
  }

  const state = {
    link: "connecting", // connecting | live | stale | offline
    lastStatusMs: null, // when the last status push arrived (this browser's clock)
    lastStatus: null,
    streamBroken: false,
    source: null,
    reconnectTimer: null,
    connectedAtMs: 0, // when the event stream was last (re)opened
    probeFailed: false,
    trends: [],
    previewKey: null,
    preview: null, // the frame on screen and when its push arrived
    previewShown: null,
    zoom: 1,
    imageKey: null,
    productAt: 0,
    product: null,
    runs: [],
    runsFetchedAt: 0,
    runsKey: null,
    selectedRun: null,
    currentRun: null,
    alarmsKey: "",
    alarmsOpen: new Set(), // alarms whose whole text is shown (on a wide screen it is cut at two lines)
    ackMessages: {},
    profile: null,
    daemonStarted: null, // the appliance's start time (server clock), to tell a restarted daemon
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
    for (const id of ["colorbar", "slice-colorbar"]) { // the live image's and the tomography slice's
      const ctx = $(id).getContext("2d");
      const img = ctx.createImageData(256, 1);
      for (let i = 0; i < 256; i += 1) img.data.set([LUT[i * 3], LUT[i * 3 + 1], LUT[i * 3 + 2], 255], i * 4);
      ctx.putImageData(img, 0, 0);
    }
  }

  /** 8-bit pixels (base64) drawn through the colormap onto `canvas`, sized to the image. */
  function paint(canvas, width, height, b64) {
    const pixels = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
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
  }

  // ---- live image ---------------------------------------------------------------------------------------
  function drawPreview(preview) {
    const empty = $("preview-empty");
    if (!preview || !preview.width || !preview.height || !preview.pixels_b64) {
      empty.hidden = false;
      setText("preview-caption", "");
      // the gone frame's times and flags go with it (an outside probe: after a daemon restart the caption
      // still gave the old frame's times, "45 s ago", frozen)
      for (const id of ["preview-detector-time", "preview-received", "preview-age"]) setText(id, "");
      $("preview-flags").innerHTML = "";
      return;
    }
    const { width, height } = preview;
    const canvas = $("preview");
    paint(canvas, width, height, preview.pixels_b64);
    $("preview-wrap").style.aspectRatio = `${width} / ${height}`; // the detector's shape, whatever the card's
    $("preview-wrap").style.setProperty("--preview-ratio", String(width / height)); // (its height bounded)
    empty.hidden = true;
    const caption = `frame ${fmtInt(preview.frame)} of run ${shortUid(preview.run_uid)}`;
    setText("preview-caption", caption);
    $("preview-caption").title = preview.run_uid || "";
    $("preview-flags").innerHTML = preview.incomplete
      ? '<span class="flag" id="preview-incomplete" title="packets of this frame were missing; their pixels are 0">incomplete frame</span>'
      : "";
    const ts = num(preview.detector_timestamp_ns);
    // a detector clock in epoch nanoseconds reads as a time of day; a series-relative one as seconds
    const detectorTime = ts / 1e9 > 1e9 ? `detector time ${fmtTime(ts / 1e9, false, true)}` : `detector t = ${(ts / 1e9).toFixed(3)} s`;
    setText("preview-detector-time", Number.isFinite(ts) ? `${detectorTime} ·` : "");
    $("preview-detector-time").title = "the frame's own timestamp from the detector (relative to its series)";
    setText("preview-received", `taken ${fmtTime(preview.received_at, false, true)}`);
    $("preview-received").dataset.receivedAt = String(preview.received_at ?? "");
    // colour-bar values: the image is log1p(counts) scaled so that 255 is counts_top
    const top = num(preview.counts_top);
    setText("cb-lo", "0");
    setText("cb-mid", Number.isFinite(top) ? fmtCounts(Math.expm1(Math.log1p(top) / 2)) : "");
    setText("cb-hi", Number.isFinite(top) ? `≥ ${fmtCounts(top)} counts` : "high");
    drawOverlay();
    tickAge();
  }

  /** How old the frame on screen is: its age when pushed plus the time since the push. */
  function tickAge() {
    const shown = state.preview;
    if (!shown) return;
    const age = num(shown.doc.age_seconds) + (Date.now() - shown.arrivedMs) / 1000;
    if (!Number.isFinite(age)) return;
    const running = !!state.currentRun;
    const frozen = age > 5;
    setText("preview-age", `· ${fmtDuration(age)} ago${frozen ? (running ? " — no new frame" : " — no frames coming") : ""}`, frozen ? "frozen" : "");
  }

  function setZoom(zoom) {
    state.zoom = zoom;
    $("preview-wrap").style.width = `${zoom * 100}%`;
    for (const b of document.querySelectorAll(".zoom button")) b.classList.toggle("on", Number(b.dataset.zoom) === zoom);
  }

  /** Circles of ``peaks`` ([x, y, ...] in detector pixels of a frame ``detWidth`` wide) on ``canvas``,
   * sized on screen: the canvas is often shown much smaller than it is (a 6-pixel circle drawn on a
   * 2048-pixel canvas shown 300 pixels wide was a red speck), and they grow with the page on a wall
   * (``EdgeCharts.zoom``: 2x at 3840 px, where 6-pixel circles were specks on a doubled image). */
  function circlePeaks(canvas, peaks, detWidth, detHeight) {
    const ctx = canvas.getContext("2d");
    const sx = canvas.width / (num(detWidth) || canvas.width);
    const sy = canvas.height / (num(detHeight) || canvas.height);
    const shownWidth = canvas.getBoundingClientRect().width || canvas.width;
    const perCssPixel = (canvas.width / shownWidth) * EdgeCharts.zoom();
    ctx.strokeStyle = "#ff3b30";
    ctx.lineWidth = 1.5 * perCssPixel;
    const radius = 6 * perCssPixel;
    for (const peak of peaks.slice(0, 500)) {
      const [x, y] = peak;
      ctx.beginPath();
      ctx.arc(num(x) * sx, num(y) * sy, radius, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  /** The newest hit whose pixels the appliance kept, with its own peaks circled. */
  function drawHit(canvas, hit) {
    if (!canvas || !hit.width || !hit.height) return;
    // drawn at the size it is shown (a small image blown up, or a large one shrunk), so the circles
    // are crisp lines of a pixel or two, not smears of the image's own pixels
    const source = document.createElement("canvas");
    paint(source, hit.width, hit.height, hit.pixels_b64);
    const shown = canvas.getBoundingClientRect().width || hit.width;
    const width = Math.max(1, Math.round(shown * (window.devicePixelRatio || 1)));
    canvas.width = width;
    canvas.height = Math.max(1, Math.round((width * hit.height) / hit.width));
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
    if (Array.isArray(hit.peaks)) circlePeaks(canvas, hit.peaks, hit.detector_width, hit.detector_height);
  }

  /** Peaks of the latest serial hit over the live image, while that image is the hit's own frame. */
  function drawOverlay() {
    const canvas = $("overlay");
    const preview = state.preview?.doc;
    const hit = state.product?.serial?.latest_hit;
    const ctx = canvas.getContext("2d");
    if (!preview) return;
    canvas.width = preview.width * 4;
    canvas.height = preview.height * 4;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!hit || !Array.isArray(hit.peaks)) return;
    // the hit's peaks belong to its own frame: over any other frame they would mark spots it lacks
    // (the Mode card shows the newest hit with its peaks, whatever the live image shows)
    if (num(preview.frame) !== num(hit.frame) || (state.product?.run_uid && preview.run_uid !== state.product.run_uid)) return;
    circlePeaks(canvas, hit.peaks, preview.detector_width, preview.detector_height);
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
    if (state.product?.mode && state.product.mode !== "powder") return; // the mode's product has the card
    const svg = $("profile");
    const empty = $("profile-empty");
    if (!profile || !profile.radial || !profile.intensity) {
      empty.hidden = false;
      svg.innerHTML = "";
      setText("profile-caption", "");
      return;
    }
    const zoom = window.EdgeCharts.zoom(); // drawn in the unscaled page's units; the viewBox scales it up
    const W = svg.clientWidth / zoom;
    const H = svg.clientHeight / zoom;
    if (!W || !H) return;
    const logY = $("profile-log").checked;
    const pts = [];
    const n = Math.min(profile.radial.length, profile.intensity.length);
    // a bin no pixel fell in (count 0: beyond the detector's corners, behind the beamstop, masked) has
    // no value: the trace breaks there instead of dropping to a 0 that was never measured
    const count = Array.isArray(profile.count) ? profile.count : null;
    let gaps = 0;
    for (let i = 0; i < n; i += 1) {
      const x = profile.radial[i];
      const y = profile.intensity[i];
      if (count && !(count[i] > 0)) {
        gaps += 1;
        if (pts.length && pts[pts.length - 1] !== null) pts.push(null);
        continue;
      }
      if (!Number.isFinite(x) || !Number.isFinite(y) || (logY && y <= 0)) continue;
      pts.push([x, logY ? Math.log10(y) : y]);
    }
    if (pts.length && pts[pts.length - 1] === null) pts.pop();
    const measured = pts.filter((p) => p !== null);
    if (measured.length < 2) {
      empty.textContent = "the profile has no finite values yet";
      empty.hidden = false;
      svg.innerHTML = "";
      return;
    }
    empty.hidden = true;
    const m = { l: 64, r: 14, t: 10, b: 42 };
    let xlo = Infinity, xhi = -Infinity, ylo = Infinity, yhi = -Infinity;
    for (const [x, y] of measured) {
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
    // one polyline per run of measured bins
    let run = [];
    for (const p of [...pts, null]) {
      if (p !== null) {
        run.push(`${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
        continue;
      }
      if (run.length) parts.push(`<polyline class="trace" points="${run.join(" ")}"/>`);
      run = [];
    }
    const xlabel = UNIT_LABELS[profile.unit] || profile.unit || "radial";
    parts.push(`<text class="label" id="profile-xlabel" x="${(m.l + W - m.r) / 2}" y="${H - 6}" text-anchor="middle">${esc(xlabel)}</text>`);
    const ylabel = logY ? "mean intensity per pixel (counts, log)" : "mean intensity per pixel (counts)";
    parts.push(`<text class="label" id="profile-ylabel" transform="translate(14 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor="middle">${esc(ylabel)}</text>`);
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.innerHTML = parts.join("");
    setText("profile-caption", gaps ? `${n} bins, ${gaps} with no pixel` : `${n} bins`);
  }

  // ---- the mode's product (GET /api/product; 404 until the modes land or a frame is reduced) ------------
  function renderProduct(product) {
    state.product = product;
    const body = $("product-body");
    if (!product) {
      setText("product-mode", "–", "chip");
      body.innerHTML = '<p class="muted" id="product-empty">no reduction product yet</p>';
      // the large card too: no mode's title or product left from before (a daemon restart)
      setText("profile-title", "Reduced profile");
      $("wide-hits").hidden = true;
      $("wide-slice").hidden = true;
      $("slice-scale").hidden = true;
      drawOverlay();
      return;
    }
    const mode = String(product.mode || "raw");
    setText("product-mode", mode, `chip ${mode}`);
    // the 1D profile belongs to powder runs; serial and tomo runs show their own product there, large
    // (the hit rate over time, the newest slice); a raw run's card says there is no product
    const wide = { serial: "Hit rate", tomo: "Reconstructed slice", raw: "No reduction (raw mode)" }[mode];
    setText("profile-title", wide || "Reduced profile");
    $("profile-log-label").hidden = mode !== "powder";
    $("profile").style.visibility = mode === "powder" ? "" : "hidden";
    $("wide-hits").hidden = mode !== "serial";
    $("wide-slice").hidden = !(mode === "tomo" && product.tomo?.slice?.pixels_b64);
    $("slice-scale").hidden = $("wide-slice").hidden; // its values, as the live image has its counts
    const profileEmpty = $("profile-empty");
    if (mode === "raw") {
      profileEmpty.textContent = "raw mode: frames are stored as they come, nothing reduced";
      profileEmpty.hidden = false;
    } else if (mode === "tomo" && $("wide-slice").hidden) {
      profileEmpty.textContent = "no slice reconstructed yet";
      profileEmpty.hidden = false;
    } else if (mode === "serial" || mode === "tomo") {
      profileEmpty.hidden = true;
    } else {
      profileEmpty.textContent = "waiting for the first frame…";
    }
    if (mode !== "powder") setText("profile-caption", "");
    const run = product.run_uid ? `<div class="small muted">run <span class="mono" title="${esc(product.run_uid)}">${esc(shortUid(product.run_uid))}</span></div>` : "";
    let html = "";
    if (mode === "serial" && product.serial) {
      const s = product.serial;
      const hit = s.latest_hit;
      html = `<div class="big" id="hit-rate">${esc(Number.isFinite(num(s.hit_rate)) ? (num(s.hit_rate) * 100).toFixed(1) : "–")}<span class="unit"> % hits</span></div>` +
        `<table class="kv"><tr><th>frames</th><td>${esc(fmtInt(s.frames))}</td></tr><tr><th>hits</th><td>${esc(fmtInt(s.hits))}</td></tr>` +
        `<tr><th>latest hit</th><td>${hit ? `frame ${esc(fmtInt(hit.frame))}, ${esc(fmtInt((hit.peaks || []).length))} peaks` : "none yet"}</td></tr></table>` +
        (s.hit_image?.pixels_b64
          ? `<figure class="hit-figure"><canvas id="hit-image" role="img" aria-label="hit frame ${esc(fmtInt(s.hit_image.frame))} with its ${esc(fmtInt((s.hit_image.peaks || []).length))} peaks circled"></canvas>` +
            // its own frame and count: the newest hit kept with pixels may be an earlier one than "latest hit"
            // above (an outside probe read that row's 34 peaks as the circles of frame 988)
            `<figcaption class="small muted">frame ${esc(fmtInt(s.hit_image.frame))}, its ${esc(fmtInt((s.hit_image.peaks || []).length))} peaks circled` +
            `${hit && num(hit.frame) !== num(s.hit_image.frame) ? " (the newest hit kept with its pixels)" : ""}</figcaption></figure>`
          : "") +
        '<div class="small muted">hit rate over time: the large card</div>';
    } else if (mode === "tomo" && product.tomo) {
      const t = product.tomo;
      html = `<table class="kv"><tr><th>projections</th><td>${esc(fmtInt(t.projections))}</td></tr>` +
        `<tr><th>darks / flats</th><td>${esc(fmtInt(t.darks))} / ${esc(fmtInt(t.flats))}</td></tr>` +
        // a scan resumed after a daemon restart: the part stored before it counts too
        (t.inherited
          ? `<tr><th>before the restart</th><td id="tomo-inherited">${esc(fmtInt(t.inherited.projections))} projections, ` +
            `${esc(fmtInt(t.inherited.darks))} darks, ${esc(fmtInt(t.inherited.flats))} flats of run ` +
            `${(t.inherited.runs || []).map((u) => `<span class="mono" title="${esc(u)}">${esc(shortUid(u))}</span>`).join(", ")}` +
            (num(t.inherited.files_unusable) > 0 ? ` <span class="bad">(${esc(fmtInt(t.inherited.files_unusable))} file(s) unreadable)</span>` : "") +
            "</td></tr>"
          : "") +
        // the slices written to the run's reduced file, at its end (the slice shown below is the one
        // being built while projections come: "slices done 0" beside it read as a contradiction)
        `<tr><th title="slices reconstructed from the whole scan and written to the run's reduced file, at its end">slices written</th><td id="slices-done">${esc(fmtInt(t.slices_done))}` +
        `${num(t.slices_done) > 0 ? "" : ' <span class="muted small">(at the run\'s end)</span>'}</td></tr></table>` +
        // whole sentences (an outside probe read "per pixel): the large card / about column 512.00" as one)
        (t.slice ? `<div class="small">The large card shows the slice of row ${esc(fmtInt(t.slice.row))} (values ${esc(fmtValue(t.slice.min))} to ${esc(fmtValue(t.slice.max))} per pixel).</div>` +
          (t.slice.center != null
            ? `<div class="small" id="slice-axis">rotation axis at column ${esc(num(t.slice.center).toFixed(2))} (${esc(t.slice.center_source || "–")}); ` +
              `${esc(fmtInt(t.slice.projections_in_slice))} of ${esc(fmtInt(t.slice.projections))} projections in it</div>`
            : "")
          : '<p class="muted small">no slice reconstructed yet</p>');
    } else if (mode === "powder" && product.powder) {
      const p = product.powder;
      html = `<div class="small">profile: ${esc(fmtInt((p.radial || []).length))} bins in ${esc(UNIT_LABELS[p.unit] || p.unit || "–")} (plotted alongside)</div>` +
        (p.cake ? `<div class="small">cake ${esc(p.cake.width)} × ${esc(p.cake.height)} (radial × azimuthal)</div><canvas id="powder-cake" role="img" aria-label="the newest frame's cake: radial across, azimuthal down"></canvas>` : "");
    } else {
      html = '<p class="muted small">raw mode: frames are stored as they come, nothing reduced</p>';
    }
    body.innerHTML = run + html;
    if (mode === "serial" && product.serial) {
      const samples = (product.serial.recent || []).map((r) => ({ t: num(r.t), v: num(r.hit_rate) * 100 }));
      const last = samples.length ? samples[samples.length - 1].t : 0;
      // each sample is one second's hits: its label says so (a big "now 66.7 %" beside the run's 31.8 %
      // read as the run's rate, an outside probe)
      const options = { windowS: Math.max(60, last - (samples[0]?.t ?? last)), format: (v) => `${v.toFixed(1)} %`, floor: 0, grid: true, lastLabel: "last second" };
      // the chart ends at its last sample: once that is old (the run over), the axis says how old, not
      // "now" (an outside probe: a sample 72 s old labelled "now 47.4 %" beside the run's "30.0 % hits")
      const age = serverNow() - last;
      if (samples.length && age > 10) Object.assign(options, { endLabel: `${fmtDuration(age)} ago` });
      window.EdgeCharts.trend($("wide-hits"), samples, (s) => s.v, options);
    }
    if (mode === "serial" && product.serial?.hit_image?.pixels_b64) drawHit($("hit-image"), product.serial.hit_image);
    if (mode === "tomo" && product.tomo?.slice?.pixels_b64) {
      const sl = product.tomo.slice;
      paint($("wide-slice"), sl.width, sl.height, sl.pixels_b64);
      setText("profile-caption", `row ${fmtInt(sl.row)}`);
      // scaled linearly from its lowest value (0) to its highest (255): the bar's ends are those values
      const lo = num(sl.min);
      const hi = num(sl.max);
      setText("slice-lo", fmtValue(lo));
      setText("slice-mid", Number.isFinite(lo) && Number.isFinite(hi) ? fmtValue((lo + hi) / 2) : "");
      setText("slice-hi", fmtValue(hi));
    }
    if (mode === "powder" && product.powder?.cake?.pixels_b64) {
      const cake = product.powder.cake;
      paint($("powder-cake"), cake.width, cake.height, cake.pixels_b64);
    }
    if (mode === "powder") drawProfile(state.profile || (product.powder?.radial ? product.powder : null));
    drawOverlay();
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

  /** Why upstream delivery is stalled, in a few words, in the outlook's order of causes. "no consumer
   * connected" only when none is: with hpc pulling and a second required consumer away it named no one
   * and read as the HPC link down (an outside probe). */
  function stallCause(outlook) {
    const connected = outlook.consumers_connected || [];
    const missing = (outlook.consumers_required || []).filter((name) => !connected.includes(name));
    if (/^the appliance's own disk is full/.test(outlook.reason || "")) return "appliance disk full";
    if (missing.length) return connected.length ? `${missing.join(", ")} not connected` : "no consumer connected";
    if (outlook.refusing?.length) return "consumer refusing";
    if (outlook.unanswering?.length) return `${outlook.unanswering.join(", ")} not answering`;
    return "see the alarm";
  }

  /** The one ETA (the appliance's upstream outlook), in words; every .eta element shows this text. */
  function etaText(outlook) {
    if (!outlook || !outlook.state) return "–";
    if (outlook.state === "up to date") return "nothing pending";
    if (outlook.state === "stalled") return `stalled: ${stallCause(outlook)}`;
    if (outlook.eta_seconds === null || outlook.eta_seconds === undefined) {
      // a pending file missing or changed on the local disk arrives only once restored: no ETA, said why
      // (an outside probe read "waiting for the first verified file" with files verified a moment ago)
      if (outlook.unreadable_files > 0) return `no ETA: ${outlook.unreadable_files} stored file(s) missing or changed locally`;
      return "waiting for the first verified file";
    }
    return fmtDuration(outlook.eta_seconds);
  }

  /** The appliance's clock now, from its last status (its server_time, plus the time since it came). */
  function serverNow() {
    const t = num(state.lastStatus?.server_time);
    return Number.isFinite(t) ? t + (Date.now() - state.lastStatusMs) / 1000 : Date.now() / 1000;
  }

  function renderHeader() {
    const s = state.lastStatus || {};
    const app = s.appliance || {};
    const pill = $("run-state");
    const trusted = state.link === "live";
    if (!state.lastStatus) {
      pill.textContent = "–";
      pill.className = "pill unknown";
    } else if (!trusted) {
      pill.textContent = app.run_uid ? `last seen acquiring run ${shortUid(app.run_uid)}` : "last seen idle";
      pill.className = "pill unknown";
    } else if (app.stopping) {
      pill.textContent = "stopping";
      pill.className = "pill";
    } else if (app.run_uid) {
      pill.textContent = `acquiring run ${shortUid(app.run_uid)}`;
      pill.title = app.run_uid;
      pill.className = "pill acquiring";
    } else if (s.counts?.run?.active && s.counts.run.run_uid) {
      // the detector's series is over but the run is not: its frames still in the ring (held back by a
      // full store, say); "idle" read as nothing happening (an outside probe)
      pill.textContent = `finishing run ${shortUid(s.counts.run.run_uid)}`;
      pill.title = `${s.counts.run.run_uid}: the series ended; its frames are still being written`;
      pill.className = "pill acquiring";
    } else {
      pill.textContent = "idle";
      pill.title = "";
      pill.className = "pill";
    }
    const last = state.trends[state.trends.length - 1];
    const rate = trusted && last ? num(last.frame_rate) : NaN;
    setText("frame-rate", Number.isFinite(rate) ? rate.toFixed(rate < 10 ? 1 : 0) : "–");
    const outlook = s.upstream_outlook;
    const upPill = $("head-upstream");
    upPill.className = "pill " + (!trusted ? "unknown" : outlook?.state === "stalled" ? "stalled" : outlook?.state === "delivering" || outlook?.state === "up to date" ? "live" : "");
  }

  function renderStatus(s) {
    const app = s.appliance || {};
    state.currentRun = app.run_uid || null;
    const pipe = s.pipeline || {};
    const degraded = (pipe.backend_degraded_from || []).length ? ` (fell back from ${pipe.backend_degraded_from.join(", ")})` : "";
    setText("backend", pipe.backend ? `kernels: ${pipe.backend}${degraded}` : "");
    const uptime = num(app.uptime_seconds);
    setText("uptime", Number.isFinite(uptime) ? `up ${fmtDuration(uptime)}` : "");

    // frames, each counter with its scope
    const counts = s.counts || {};
    const run = counts.run || {};
    const daemon = counts.daemon || {};
    const all = counts.all_time || {};
    const f = s.frames || {};
    const cells = {
      received: [run.frames_received ?? null, daemon.frames_received ?? f.received, null],
      stored: [run.frames_stored, daemon.frames_stored, all.frames_stored ?? f.stored],
      delivered: [run.frames_delivered, daemon.frames_delivered, all.frames_delivered ?? f.delivered],
      vetoed: [run.frames_vetoed, daemon.frames_vetoed, all.frames_vetoed ?? f.vetoed],
      lost: [run.frames_lost, daemon.frames_lost, all.frames_lost ?? f.lost],
      incomplete: [run.frames_incomplete, daemon.frames_incomplete, all.frames_incomplete ?? f.incomplete],
    };
    for (const [name, values] of Object.entries(cells)) {
      ["run", "daemon", "all"].forEach((scope, i) => {
        const v = values[i];
        const cls = name === "lost" && num(v) > 0 ? "bad" : name === "incomplete" && num(v) > 0 ? "warn" : "";
        setText(`c-${scope}-${name}`, v === null || v === undefined ? (name === "received" && scope !== "daemon" ? "n/a" : "–") : fmtInt(v), cls);
      });
    }
    // (an outside probe asked why all time's received read "–" beside stored and delivered)
    $("c-all-received").title = "not kept: the ledger records what was stored, vetoed and lost, not what was received";
    $("c-run-received").title = run.frames_received === undefined
      ? "not counted: this run was opened before the daemon started (the ledger keeps no received count per run)"
      : "frames the receiver took into this run (this daemon's count)";
    $("scope-run").innerHTML = run.run_uid
      ? `${run.active ? "this run" : "last run"}<br><span class="mono small">${esc(shortUid(run.run_uid))}</span>`
      : "this run";
    $("scope-run").title = run.run_uid || "no run yet";
    setText("scope-note", daemon.since ? `since start = since ${fmtTime(daemon.since)}` : "");

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
    // the fuller of the disk and the store's capacity (a quota): a store at its quota on a roomy disk
    // showed a bar a quarter full beside "new runs REFUSED" (an outside probe)
    const storePercent = (100 * num(ret.store_bytes)) / num(ret.capacity_bytes);
    const byStore = Number.isFinite(storePercent) && (!Number.isFinite(diskPercent) || storePercent > diskPercent);
    // the mark: where the store is full (its capacity less the headroom kept free), and the bar red
    // while new runs are refused (an outside probe: an orange 80.7 % beside "REFUSED", nothing saying
    // the store was full at 75 %)
    const fullAt = (num(ret.capacity_bytes) - num(ret.headroom_bytes)) / num(ret.capacity_bytes);
    setBar("disk-bar", (byStore ? storePercent : diskPercent) / 100, byStore && fullAt > 0 ? fullAt : NaN);
    const refused = ret.accepting_runs === false;
    if (refused) $("disk-bar").querySelector(".fill").className = "fill bad";
    $("disk-bar").title = (byStore ? "the store against its capacity (retention.quota_bytes)" : "local disk used") +
      (byStore && fullAt > 0 ? `; the mark: full at ${(100 * fullAt).toFixed(0)} % (the headroom kept free)` : "");
    setText("disk-used", (byStore
      // (a number and its unit never on two lines: a lone "%" was, an outside probe)
      ? `${storePercent.toFixed(1)}\u00a0% of the store's ${fmtBytes(ret.capacity_bytes)} used` +
        (fullAt > 0 ? `, full at ${(100 * fullAt).toFixed(0)}\u00a0%` : "")
      // the disk's percent is of what users may fill (used + free: root's reserved blocks are neither);
      // "29.4 % of 252 GiB" beside 71.7 GiB free did not add up (an outside probe)
      : Number.isFinite(diskPercent)
        ? `${diskPercent.toFixed(1)}\u00a0% used (${fmtBytes(disk.used)} of ${fmtBytes(num(disk.used) + num(disk.free))})`
        : "–") +
      (refused ? " · new runs refused" : ""));
    const fsFree = `${fmtBytes(disk.free ?? ret.disk_free_bytes)} free`;
    if (byStore) {
      // the store binds: what is left before new runs are refused (unverified data at the high-water mark
      // of what it may fill), the file system's free space behind it (outside probes read "73.2 GiB free"
      // beside a store 24 MiB from full, then "6.7 MiB left" with 2.4 MiB to the refusal, as room)
      const refuseAt = num(ret.refuse_at_bytes);
      const left = Number.isFinite(refuseAt)
        ? Math.max(0, refuseAt - num(ret.unverified_bytes))
        : Math.max(0, num(ret.capacity_bytes) - num(ret.headroom_bytes) - num(ret.store_bytes));
      setText("disk-free", refused ? "" : `${fmtBytes(left)} left before new runs are refused`);
      $("disk-free").title = `the file system has ${fsFree}; new runs are refused once the data not yet verified upstream reaches ${fmtBytes(refuseAt)}`;
    } else {
      setText("disk-free", fsFree);
      $("disk-free").title = "free on the file system holding the store";
    }
    setText("store-bytes", `${fmtBytes(ret.store_bytes)} / ${fmtBytes(ret.capacity_bytes)}`);
    $("store-bytes").title = "bytes in the local store / the store's capacity (quota, or the disk)";
    // files never forwarded (upstream.forward) apart: no consumer frees them (an outside probe read the
    // refusal "waiting for hpc" beside an outlook that said every stored file was verified)
    const local = num(ret.local_bytes);
    setText("store-unverified", local > 0
      ? `${fmtBytes(ret.unverified_bytes)} (${fmtBytes(local)} kept local)` : fmtBytes(ret.unverified_bytes),
      ret.alarm ? "bad" : "");
    $("store-unverified").title = local > 0
      ? `not deletable: ${fmtBytes(local)} never forwarded (upstream.forward), kept local by retention.unforwarded; the rest waits for the consumers' confirmation`
      : "not yet verified upstream: not deletable";
    setText("store-verified", fmtBytes(ret.verified_bytes));
    // 0: full now (it read "not filling" beside "new runs refused": an outside probe); null: not growing
    const fullIn = ret.full_in_seconds;
    setText("store-full-in", fullIn == null ? "not filling" : num(fullIn) <= 0 ? "full now" : fmtDuration(fullIn),
      fullIn != null && fullIn < 3600 ? "bad" : "");
    setText("store-accepting", ret.accepting_runs === false ? "REFUSED" : ret.accepting_runs ? "accepted" : "–",
      ret.accepting_runs === false ? "bad" : "good");

    // upstream: everything from the appliance's one outlook; "sending" only counts first sends
    const up = s.upstream || {};
    const ledger = s.ledger || {};
    const outlook = s.upstream_outlook || {};
    const stalled = outlook.state === "stalled";
    setText("upstream-state", outlook.state || "–", `chip ${String(outlook.state || "").replace(/ /g, "-")}`);
    $("upstream-state").title = outlook.reason || "";
    setText("upstream-pending", fmtBytes(outlook.bytes_pending ?? ledger.bytes_pending));
    setText("upstream-rate", stalled ? "0 B/s (stalled)" : Number.isFinite(num(outlook.verified_bytes_per_s)) ? `${fmtBytes(outlook.verified_bytes_per_s)}/s` : "–");
    const prev = state.sendSample;
    const now = { t: num(s.server_time), sent: num(outlook.bytes_sent ?? up.bytes_sent) };
    let sending = "–";
    // what goes out now, stalled or not (an outside probe read "nothing (tape not connected)" while
    // everything went to hpc); "nothing (cause)" only when nothing does
    const rate = prev && now.t > prev.t && now.sent >= prev.sent ? (now.sent - prev.sent) / (now.t - prev.t) : null;
    if (stalled && !(rate > 0)) sending = `nothing (${stallCause(outlook)})`;
    else if (rate !== null) sending = `${fmtBytes(rate)}/s`;
    state.sendSample = now;
    setText("upstream-sending", sending, stalled ? "muted" : "");
    setText("upstream-resent", fmtBytes(outlook.bytes_resent ?? up.bytes_resent ?? 0));
    setText("upstream-lag", Number.isFinite(num(outlook.lag_seconds)) ? fmtDuration(outlook.lag_seconds) : "–", num(outlook.lag_seconds) > 3600 ? "warn" : "");
    const eta = etaText(outlook);
    for (const el of document.querySelectorAll(".eta")) {
      if (el.textContent !== eta) el.textContent = eta;
      el.classList.toggle("bad", stalled);
    }
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

    renderAlarms(s.alarms || []);
  }

  function renderConsumers(live, acked) {
    const byName = new Map();
    for (const c of acked) byName.set(c.consumer, { consumer: c.consumer, chunks_acked: c.chunks_acked });
    for (const c of live) byName.set(c.consumer, { ...(byName.get(c.consumer) || {}), ...c });
    const rows = [...byName.values()].map((c) => {
      // known only from the ledger's acknowledgements: not connected since this daemon started (an
      // outside probe read "never seen" beside "107 acked all time" after a restart)
      let link = c.chunks_acked > 0
        ? '<span class="bad" title="it acknowledged chunks before this daemon started">not since start</span>'
        : '<span class="muted">never seen</span>';
      if (c.connected === true) link = '<span class="good">connected</span>';
      else if (c.unreachable === true) {
        // short: the card is narrow on wide screens (five lines pushed the acked column out, a probe)
        link = `<span class="bad" title="a send to it failed; last seen ${esc(fmtDuration(c.seconds_since_seen))} ago">unreachable</span>`;
      } else if (c.connected === false) link = `<span class="bad">gone ${esc(fmtDuration(c.seconds_since_seen))}</span>`;
      // a consumer that refused a chunk in the last minute says why (its disk is full, say)
      if (c.last_refusal && c.seconds_since_refusal != null && c.seconds_since_refusal < 60) {
        link += ` <span class="warn" title="${esc(c.last_refusal)}">refusing: ${esc(c.last_refusal)}</span>`;
      }
      return `<tr><td>${esc(c.consumer)}</td><td>${link}</td><td class="num">${esc(fmtInt(c.credit))}</td>` +
        `<td class="num">${esc(fmtInt(c.in_flight))}</td><td class="num">${esc(fmtInt(c.chunks_acked))}</td></tr>`;
    });
    const html = rows.length ? rows.join("") : '<tr><td colspan="5" class="muted">no consumer has connected</td></tr>';
    if ($("consumers").tBodies[0].innerHTML !== html) $("consumers").tBodies[0].innerHTML = html;
  }

  // ---- alarms (computed by the appliance, edge/alarms.py; acknowledged with the token) -------------------
  function scopeLabel(alarm) {
    if (alarm.scope === "run") return `run ${shortUid(alarm.run_uid)}`;
    if (alarm.scope === "daemon") return "since daemon start";
    return "condition";
  }

  function renderAlarms(alarms) {
    const key = JSON.stringify([alarms, state.ackMessages]);
    if (key === state.alarmsKey) return;
    state.alarmsKey = key;
    $("alarms").innerHTML = alarms.map((a) => {
      const sev = a.acknowledged ? "acknowledged" : a.severity === "major" ? "error" : "warn";
      const ack = a.acknowledged
        ? `<span class="ack-state">acknowledged ${esc(fmtTime(a.ack?.at, false))}</span>`
        : `<button type="button" class="ack" data-alarm="${esc(a.id)}">acknowledge</button>`;
      const msg = state.ackMessages[a.id] ? ` <span class="ack-msg small">${esc(state.ackMessages[a.id])}</span>` : "";
      // the severity in words too, not by colour alone (red and amber look alike to many)
      const word = a.severity === "major" ? "MAJOR" : "minor";
      const open = state.alarmsOpen.has(a.id) ? " open" : "";
      return `<li class="${sev}${open}" data-alarm="${esc(a.id)}" tabindex="-1"><span class="severity">${word}</span><span class="scope">${esc(scopeLabel(a))}</span>` +
        `<span class="text" title="${esc(a.message)}">${esc(a.message)}</span><span class="since muted">since ${esc(fmtTime(a.since, false))}</span>${ack}${msg}</li>`;
    }).join("");
  }

  async function acknowledge(alarmId) {
    let text;
    try {
      const result = await write(`/api/alarms/${encodeURIComponent(alarmId)}/ack`);
      if (result.ok) text = "";
      else if (result.status === 404) text = "this alarm has cleared";
      else text = refusal(result);
    } catch (error) {
      text = `could not reach the appliance: ${error.message}`;
    }
    state.ackMessages[alarmId] = text;
    if (text === "" && state.lastStatus) {
      // show it at once; the next push confirms it
      for (const a of state.lastStatus.alarms || []) if (a.id === alarmId) { a.acknowledged = true; a.ack = { at: Date.now() / 1000 }; }
    }
    state.alarmsKey = "";
    const hadFocus = document.activeElement?.closest?.("#alarms") != null;
    renderAlarms(state.lastStatus?.alarms || []);
    // the list is drawn anew: the keyboard stays on this alarm (it fell to the page's start, a probe)
    if (hadFocus || document.activeElement === document.body) {
      const item = [...$("alarms").children].find((li) => li.dataset.alarm === alarmId);
      if (item) item.focus({ preventScroll: true });
    }
  }

  // ---- the next run's reduction mode (GET/PUT /api/reduction; the PUT needs the token) ---------------
  async function refreshMode() {
    let params = null;
    try {
      params = await getJSON("/api/reduction");
    } catch (error) {
      params = null;
    }
    $("mode-form").hidden = !params;
    if (params && document.activeElement !== $("mode-select")) $("mode-select").value = params.mode;
    state.modeFetchedAt = Date.now();
  }

  async function setMode() {
    const mode = $("mode-select").value;
    let text;
    let cls = "bad small";
    try {
      const result = await write("/api/reduction", "PUT", { mode });
      if (result.ok) {
        text = `the next run reduces in ${result.body?.mode || mode} mode`;
        cls = "good small";
      } else text = refusal(result);
    } catch (error) {
      text = `could not reach the appliance: ${error.message}`;
    }
    setText("mode-msg", text, cls);
    await refreshMode();
  }

  // ---- runs and where-is-my-data ---------------------------------------------------------------------------
  function stateChips(states) {
    const order = ["acquired", "stored", "forwarded", "verified", "purgeable", "purged"];
    const entries = Object.entries(states || {}).sort((a, b) => order.indexOf(a[0]) - order.indexOf(b[0]));
    return entries.map(([name, count]) => `<span class="chip ${esc(name)}">${esc(count)} ${esc(name)}</span>`).join(" ") || '<span class="muted">no files yet</span>';
  }
  function runStatus(run) {
    return run.exit_status || (run.ended_at ? "ended" : run.run_uid === state.currentRun ? "running" : "unfinished");
  }
  function exitChip(run) {
    const status = runStatus(run);
    return `<span class="chip ${esc(status)}">${esc(status)}</span>`;
  }
  function pendingText(pending) {
    if (num(pending) === 0) return "none";
    return Number.isFinite(num(pending)) ? fmtBytes(pending) : "–";
  }

  function filters() {
    return {
      name: $("filter-name").value.trim().toLowerCase(),
      date: $("filter-date").value,
      mode: $("filter-mode").value,
      state: $("filter-state").value,
    };
  }
  function matches(run, f) {
    if (f.name && !String(run.run_uid).toLowerCase().includes(f.name) && !String(run.name || "").toLowerCase().includes(f.name)) return false;
    if (f.date && !(Number.isFinite(num(run.started_at)) && localDate(run.started_at) === f.date)) return false;
    if (f.mode && (run.mode || "raw") !== f.mode) return false;
    if (f.state === "pending") return num(run.bytes_pending) > 0;
    if (f.state === "lost") return num(run.frames_lost) > 0;
    if (f.state && runStatus(run) !== f.state) return false;
    return true;
  }

  function renderRuns() {
    const all = state.runs;
    const f = filters();
    const runs = all.filter((r) => matches(r, f));
    const body = $("runs").tBodies[0];
    const filtered = f.name || f.date || f.mode || f.state;
    const newest = all.length >= RUNS_LIMIT ? ` (the newest ${RUNS_LIMIT}; \`edge where\` finds any run)` : "";
    const plural = (n) => `${n} ${n === 1 ? "run" : "runs"}`;
    setText("runs-count", (filtered ? `${runs.length} of ${plural(all.length)}` : plural(all.length)) + newest);
    if (!runs.length) {
      body.innerHTML = `<tr><td colspan="10" class="muted">${all.length ? "no run matches the filter" : "no runs yet"}</td></tr>`;
      return;
    }
    const td = (label, html, cls = "") => `<td data-label="${label}"${cls ? ` class="${cls}"` : ""}><span class="v">${html}</span></td>`;
    // the table is rebuilt every few seconds: a keyboard user's row keeps its focus (it fell back to
    // the page's start at every refresh, an outside probe's)
    const focused = document.activeElement?.closest?.("#runs tr[data-run]")?.dataset.run;
    const html = runs.map((r) => {
      const lost = num(r.frames_lost);
      const lostCell = lost > 0 || num(r.loss_records) > 0
        ? `<span class="bad">${esc(fmtInt(lost))}</span> <span class="muted small">(${esc(fmtInt(r.loss_records))} rec.)</span>`
        : esc(fmtInt(lost));
      const selected = r.run_uid === state.selectedRun ? " selected" : "";
      // focusable and opened with Enter or Space as with a click (keyboard and screen-reader users)
      return `<tr data-run="${esc(r.run_uid)}" class="${selected}" title="${esc(r.run_uid)}" tabindex="0"` +
        ` aria-label="run ${esc(r.run_uid)}: open where its data is">` +
        td("run", esc(tableUid(r.run_uid)), "mono run-uid") + td("started", esc(fmtTime(r.started_at))) +
        td("mode", esc(r.mode || "–")) + td("status", exitChip(r)) +
        td("stored", esc(fmtInt(r.frames_stored)), "num") + td("delivered", esc(fmtInt(r.frames_delivered)), "num") +
        td("lost", lostCell, "num") + td("files", esc(fmtInt(r.files)), "num") + td("state", stateChips(r.states)) +
        td("pending", esc(pendingText(r.bytes_pending)), "num") + "</tr>";
    }).join("");
    if (body.innerHTML === html) return; // nothing changed: the rows (and the focus) stay as they are
    body.innerHTML = html;
    if (focused) [...body.rows].find((tr) => tr.dataset.run === focused)?.focus({ preventScroll: true });
  }

  // as `edge where`: a run continuing another from frame F accounts for its series' frames from F on
  function expectedText(w) {
    // (a run resumed after a restart saw no series header: its series' length is the interrupted run's)
    const total = num(w.frames_expected) || (w.resumed_at_frame ? num(w.series_frames_expected) : NaN);
    if (!total) return "expected unknown";
    if (w.resumed_at_frame) {
      return `expected frames ${fmtInt(w.resumed_at_frame)}..${fmtInt(total - 1)} of its series' ${fmtInt(total)}`;
    }
    return `expected ${fmtInt(total)}`;
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
    const notes = w.header_notes || [];
    const others = w.detector_uid_also_names || [];
    const continued = w.continued_by || [];
    const runLinks = (uids) =>
      uids.map((u) => `<a href="#run=${encodeURIComponent(u)}" data-run="${esc(u)}">${esc(u)}</a>`).join(", ");
    // a series cut by a daemon restart (or a UDP pause): the run this one continues, and those that continue it
    const series = [
      w.resumed_at_frame != null
        ? `<span class="muted">resumed after ${w.resumed_after === "pause" ? "a pause" : "a daemon restart"} at frame ${esc(fmtInt(w.resumed_at_frame))}; continues</span> ` +
          (w.resumes_run ? runLinks([w.resumes_run]) : '<span class="muted">no known run</span>')
        : "",
      continued.length ? `<span class="muted">its series continues in</span> ${runLinks(continued)}` : "",
    ].filter(Boolean);
    setText("where-run", w.run_uid || detail.run_uid);
    const outlook = state.lastStatus?.upstream_outlook;
    const summary = [
      ["status", exitChip({ ...detail, ...w })],
      ["started", esc(fmtTime(w.started_at ?? detail.started_at))],
      ["ended", esc(fmtTime(w.ended_at ?? detail.ended_at))],
      ["frames", `${esc(fmtInt(w.frames_stored))} stored, ${esc(fmtInt(w.frames_delivered))} delivered, ` +
        `<span class="${num(w.frames_lost) > 0 ? "bad" : ""}">${esc(fmtInt(w.frames_lost))} lost</span>` +
        ` (${esc(expectedText(w))})`],
      ["upstream needs", esc((w.required_consumers || []).join(", ") || "–")],
      ["pending", esc(pendingText(w.bytes_pending))],
      ["upstream ETA (all data)", `<span class="eta">${esc(etaText(outlook))}</span>`],
    ].map(([k, v]) => `<span><span class="muted">${k}:</span> ${v}</span>`).join("");
    const fileRows = files.map((f) => {
      const local = f.missing_locally
        ? '<span class="bad">(MISSING from the local disk, not purged)</span> '
        : f.retired_unforwarded ? '<span class="muted">(retired locally, never sent upstream)</span> '
        : f.on_local_disk === false ? '<span class="muted">(purged locally)</span> ' : "";
      const confirmed = Object.entries(f.verified_by || {});
      // a file never sent waits for no confirmation (kept local, or retired unforwarded): it says why
      const by = confirmed.length
        ? confirmed.map(([c, t]) => `${esc(c)} <span class="muted small">${esc(fmtTime(t, false))}</span>`).join(", ")
        : f.local_only ? '<span class="muted">nobody (never sent upstream)</span>'
        : '<span class="muted">nobody yet</span>';
      const copies = Object.entries(f.upstream_copies || {});
      const upstream = copies.length
        ? copies.map(([c, p]) => `<span class="muted small">${esc(c)}:</span> ${pathCell(p)}`).join("<br>")
        : '<span class="muted">none yet</span>';
      // a file without raw frames says what it holds instead (reduced products, the run's documents)
      const frames = f.frames ? `${f.frames[0]}–${f.frames[1]}` : f.n_frames ? fmtInt(f.n_frames)
        : f.kind && f.kind !== "data" ? f.kind : "none";
      return `<tr><td><span class="chip ${esc(f.state)}">${esc(f.state)}</span></td>` +
        `<td class="paths">${local}${pathCell(f.path)}${f.holds ? `<br><span class="muted small holds">${esc(f.holds)}</span>` : ""}` +
        // why it stays on the appliance, in words on the page (a hover title cannot be read on a phone)
        `${f.why_local ? `<br><span class="muted small why-local">${esc(f.why_local)}</span>` : ""}</td><td class="paths upstream-copy">${upstream}</td><td class="num">${esc(fmtBytes(f.size))}</td>` +
        `<td class="num">${esc(frames)}</td><td class="mono small nowrap" title="${esc(f.checksum)}">${esc(shortChecksum(f.checksum))}</td><td>${by}</td></tr>`;
    }).join("");
    const lossRows = losses.map((r) => {
      const count = num(r.last_frame) - num(r.first_frame) + 1;
      const kind = r.partial ? "incomplete" : "LOST";
      return `<tr><td><span class="chip ${kind}">${kind}</span></td><td class="num">${esc(r.first_frame)}–${esc(r.last_frame)}</td>` +
        `<td class="num">${esc(fmtInt(count))}</td><td>${esc(r.reason)}</td><td>${esc(r.detail)}</td><td>${esc(fmtTime(r.at))}</td></tr>`;
    }).join("");
    $("where").innerHTML =
      (w.summary ? `<p class="summary-line" id="where-summary">${esc(w.summary)}</p>` : "") +
      (series.length ? `<p class="also-named" id="where-series">${series.join("<br>")}</p>` : "") +
      `<div class="summary">${summary}</div>` +
      `<h3>Files (${files.length})</h3>` +
      (files.length
        ? `<div class="scroll-x"><table class="grid" id="where-files"><thead><tr><th>state</th><th>on the appliance</th><th>upstream copy</th><th>size</th><th>frames</th><th>checksum</th><th>confirmed by</th></tr></thead><tbody>${fileRows}</tbody></table></div>`
        : '<p class="muted">No file closed yet.</p>') +
      `<h3>Loss records (${losses.length})</h3>` +
      (losses.length
        ? `<div class="scroll-x"><table class="grid" id="where-losses"><thead><tr><th>kind</th><th>frames</th><th>count</th><th>reason</th><th>detail</th><th>at</th></tr></thead><tbody>${lossRows}</tbody></table></div>`
        : '<p class="good" id="where-no-losses">No frames lost.</p>') +
      // what the detector's series header said that the files do not carry as sent (edge where prints it too)
      (notes.length
        ? `<h3>Detector header (${notes.length})</h3><ul class="notes" id="where-header-notes">` +
          notes.map((n) => `<li>${esc(n)}</li>`).join("") + "</ul>"
        : "") +
      // other runs the detector's uid names (it reused the uid, or it was not a file name): one click away
      (others.length
        ? `<p class="also-named" id="where-also-named"><span class="muted">the detector's run uid ` +
          `<span class="mono">${esc(w.detector_uid)}</span> also names:</span> ${runLinks(others)}</p>`
        : "");
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
      const wasOpen = !$("where-card").hidden;
      $("where-card").hidden = true;
      // the keyboard goes back to the run it came from (it fell to the page's start, an outside probe)
      const from = state.whereFrom && document.querySelector(`#runs tr[data-run="${CSS.escape(state.whereFrom)}"]`);
      if (wasOpen && from) from.focus();
      state.whereFrom = null;
      return;
    }
    if (!state.whereFrom) state.whereFrom = uid;
    $("where-card").hidden = false;
    setText("where-run", uid);
    $("where").innerHTML = '<p class="muted">loading…</p>';
    try {
      await refreshWhere();
    } catch (error) {
      $("where").innerHTML = `<p class="bad">Could not load the run: ${esc(error.message)}</p>`;
    }
    // in view once drawn, from its top: opened from the runs table on a large screen it sat at the
    // screen's foot, its files off-screen (an outside probe)
    if (state.whereScroll && uid === state.selectedRun) $("where-card").scrollIntoView({ block: "start" });
    state.whereScroll = false;
  }

  async function refreshRuns(status, force) {
    const ledger = status.ledger || {};
    const key = JSON.stringify([ledger.files, ledger.frames_stored, ledger.loss_records, status.appliance?.run_uid]);
    const since = Date.now() - state.runsFetchedAt;
    if (!force && (since < RUNS_MIN_MS || (since < RUNS_MS && key === state.runsKey))) return;
    state.runsKey = key;
    state.runsFetchedAt = Date.now();
    state.runs = (await getJSON(`/api/run-summaries?limit=${RUNS_LIMIT}`)) || [];
    // how old the table is: it lags the live cards by up to RUNS_MS (an outside probe saw 281 stored here
    // beside 302 on the Frames card, with nothing saying the table was older)
    setText("runs-age", `· as of ${fmtTime(Date.now() / 1000, false)}`);
    renderRuns();
    await refreshWhere();
  }

  async function refreshProducts(status) {
    const processed = num(status.pipeline?.frames_processed);
    // a new run's product is asked for before its first frame is reduced: its mode's kernels may take a
    // while to load, and the old run's mode and product stayed on screen meanwhile (an outside probe)
    const run = status.pipeline?.product_run || "";
    const key = `${processed}|${run}`;
    if (key === state.imageKey || Date.now() - state.productAt < PRODUCT_MS) return;
    // nothing to ask for before this daemon's first frame or run (each ask would be a 404 in the console)
    if (!(processed > 0) && !run) return;
    state.productAt = Date.now();
    const product = await getJSON("/api/product");
    // the 1D profile is the powder mode's: asked for only when that is the product
    const profile = product?.mode === "powder" ? await getJSON("/api/profile") : null;
    drawProfile(profile);
    renderProduct(product);
    state.imageKey = profile || product ? key : null; // keep asking until there is something
  }

  /** A daemon that restarted (a new start time) has none of the old one's frame, profile or product:
   * what the page shows of those goes, rather than staying on screen as if current until a reload. */
  function noticeRestart(status) {
    const started = num(status.server_time) - num(status.appliance?.uptime_seconds);
    if (!Number.isFinite(started)) return;
    const before = state.daemonStarted;
    state.daemonStarted = started;
    if (before == null || Math.abs(started - before) < 2) return;
    state.preview = null;
    state.previewShown = null;
    state.previewKey = null;
    const canvas = $("preview");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    drawPreview(null);
    state.imageKey = null;
    state.productAt = 0;
    drawProfile(null);
    renderProduct(null);
  }

  function renderTrends() {
    const samples = state.trends;
    const C = window.EdgeCharts;
    const now = samples.length ? samples[samples.length - 1].t : undefined;
    const opts = { windowS: TREND_WINDOW_S, now };
    C.trend($("trend-rate"), samples, (s) => s.frame_rate, { ...opts, floor: 0, format: (v) => v.toFixed(v < 10 ? 1 : 0) });
    C.trend($("trend-ring"), samples, (s) => (s.ring_fill == null ? null : s.ring_fill * 100), { ...opts, floor: 0, max: 100, format: (v) => `${v.toFixed(0)} %`, colour: "#b45309" });
    C.trend($("trend-backlog"), samples, (s) => s.backlog_bytes, { ...opts, floor: 0, format: fmtBytes, colour: "#7c3aed" });
    C.trend($("trend-disk"), samples, (s) => s.disk_percent, { ...opts, format: (v) => `${v.toFixed(1)} %`, colour: "#16803c" });
  }

  // ---- the live stream, and whether the appliance is answering ------------------------------------------
  function onStatus(message) {
    const { status, trend } = message;
    state.lastStatusMs = Date.now();
    noticeRestart(status);
    state.lastStatus = status;
    state.streamBroken = false;
    state.probeFailed = false;
    if (trend) {
      state.trends.push(trend);
      const cutoff = trend.t - TREND_WINDOW_S;
      while (state.trends.length && state.trends[0].t < cutoff) state.trends.shift();
    }
    updateLink();
    renderStatus(status);
    renderHeader();
    renderTrends();
    const failed = (error) => {
      if (!(error instanceof Unreachable)) console.error("dashboard:", error);
    };
    refreshProducts(status).catch(failed);
    // (every 2 s: a change made elsewhere, another page or a REST client, showed here up to 10 s late)
    if (!state.modeFetchedAt || Date.now() - state.modeFetchedAt > MODE_MS || status.appliance?.run_uid !== state.modeRun) {
      state.modeRun = status.appliance?.run_uid;
      refreshMode();
    }
    refreshRuns(status, false).catch(failed);
  }

  function onPreview(doc) {
    state.preview = { doc, arrivedMs: Date.now() };
    drawPreview(doc);
    state.previewShown = { frame: doc.frame, detectorNs: doc.detector_timestamp_ns, shownMs: Date.now() };
  }

  function connect() {
    if (state.source) state.source.close();
    const source = new EventSource("/api/events");
    state.source = source;
    state.connectedAtMs = Date.now();
    source.addEventListener("status", (e) => onStatus(JSON.parse(e.data)));
    source.addEventListener("preview", (e) => onPreview(JSON.parse(e.data)));
    source.addEventListener("trends", (e) => {
      const history = JSON.parse(e.data);
      if (Array.isArray(history) && history.length) {
        const known = new Set(state.trends.map((s) => s.t));
        state.trends = [...state.trends, ...history.filter((s) => !known.has(s.t))].sort((a, b) => a.t - b.t);
        renderTrends();
      }
    });
    source.onerror = () => {
      state.streamBroken = true;
      probe();
      if (source.readyState === EventSource.CLOSED && !state.reconnectTimer) {
        state.reconnectTimer = setTimeout(() => {
          state.reconnectTimer = null;
          connect();
        }, 2000);
      }
      updateLink();
    };
  }

  /** After the stream broke: does the appliance answer at all? */
  async function probe() {
    try {
      await getJSON("/api/status");
      state.probeFailed = false;
    } catch (error) {
      state.probeFailed = true;
      state.probeError = error.message;
    }
    updateLink();
  }

  function updateLink() {
    const age = state.lastStatusMs === null ? Infinity : Date.now() - state.lastStatusMs;
    let link;
    if (state.lastStatusMs === null) link = state.probeFailed ? "offline" : "connecting";
    else if (age > OFFLINE_MS || (state.streamBroken && state.probeFailed)) link = "offline";
    else if (age > STALE_MS || state.streamBroken) link = "stale";
    else link = "live";
    // nothing for two offline periods, and this attempt is as old: start again. That includes an attempt
    // stuck "connecting": one accepted by an appliance that was shutting down is never answered, and the
    // browser's own retry never comes (the page stayed offline after the appliance was back)
    if (state.source && age > 2 * OFFLINE_MS && Date.now() - state.connectedAtMs > 2 * OFFLINE_MS) {
      connect();
    }
    const changed = link !== state.link;
    state.link = link;
    const text = { live: "live", stale: "stale", offline: "offline", connecting: "connecting…" }[link];
    const since = state.lastStatusMs === null ? "" : ` — last update ${fmtTime(state.lastStatusMs / 1000, false)}`;
    setText("link-state", link === "live" || link === "connecting" ? text : text + since, `pill ${link}`);
    $("link-dot").className = "dot " + (link === "live" ? "up" : link === "stale" ? "stale" : link === "offline" ? "down" : "");
    if (link === "live") setText("updated", `updated ${fmtTime(state.lastStatusMs / 1000, false)}`);
    const down = link === "offline";
    $("unreachable").hidden = !down;
    if (down) {
      const ago = state.lastStatusMs === null ? "it has not answered since this page opened" : `last answer ${fmtDuration(age / 1000)} ago`;
      setText("unreachable-detail", `(${state.probeError ? state.probeError + "; " : ""}${ago}.)`);
    }
    $("main").classList.toggle("stale", link === "stale" || link === "offline");
    if (changed) renderHeader();
    if (changed && link === "live" && tokenCheck.verdict === "unchecked") checkToken(); // answering again
  }

  // ---- the token ------------------------------------------------------------------------------------------
  // A token is checked once when the page gets it (GET /api/token changes nothing: 204, 401, or 403 when
  // writes are disabled): a wrong one showed "token ✓" until a write was refused. Unanswered (offline)
  // it stays "unchecked", shown neutral, and is checked when the appliance answers again.
  const tokenCheck = { verdict: "unchecked", status: null, pending: false }; // unchecked | accepted | refused

  async function checkToken() {
    const given = token.get();
    if (!given || tokenCheck.pending) return;
    if (!/^[\x01-\x09\x0b\x0c\x0e-\xff]*$/.test(given)) {
      // a header cannot carry it (a character beyond Latin-1, a line break): fetch would throw, as if the
      // appliance were unreachable, and the token would stay "unchecked" for good
      tokenCheck.verdict = "refused";
      tokenCheck.status = "unsendable";
      showTokenState();
      return;
    }
    tokenCheck.pending = true;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch("/api/token", {
        headers: { Authorization: `Bearer ${given}` }, cache: "no-store", signal: controller.signal,
      });
      if (token.get() !== given) return; // another token came meanwhile: its own check decides
      if (response.status === 204 || response.status === 401 || response.status === 403) {
        tokenCheck.verdict = response.status === 204 ? "accepted" : "refused";
        tokenCheck.status = response.status;
      }
    } catch (error) {
      // unreachable: the token stays unchecked (neutral) until the appliance answers
    } finally {
      clearTimeout(timer);
      tokenCheck.pending = false;
      showTokenState();
    }
  }

  function setToken(value) {
    token.set(value);
    tokenCheck.verdict = "unchecked";
    tokenCheck.status = null;
    showTokenState();
    checkToken();
  }

  function showTokenState() {
    const set = !!token.get();
    const verdict = set ? tokenCheck.verdict : "none";
    const disabled = tokenCheck.status === 403;
    const unsendable = tokenCheck.status === "unsendable";
    const why = unsendable
      ? "this token cannot be sent in an HTTP header (a character beyond Latin-1, or a line break): enter the right one"
      : null;
    const shown = {
      none: ["token", "enter the write token (api.token)", "no token stored: writes will be refused", "muted small"],
      unchecked: ["token …", "a write token is stored in this browser; the appliance has not checked it yet",
        "a token is stored in this browser; not checked yet (the appliance has not answered)", "muted small"],
      accepted: ["token ✓", "the appliance accepts the write token stored in this browser",
        "a token is stored in this browser and the appliance accepts it", "good small"],
      refused: ["token ✗ refused",
        why || (disabled ? "writes are disabled on this appliance (no api.token configured)" : "the appliance refuses the write token stored in this browser"),
        why || (disabled ? "writes are disabled on this appliance (no api.token configured)" : "the appliance refuses this token: writes will be refused; enter the right one"),
        "bad small"],
    }[verdict];
    setText("token-toggle", shown[0]);
    $("token-toggle").title = shown[1];
    $("token-toggle").classList.toggle("refused", verdict === "refused");
    setText("token-msg", shown[2], shown[3]);
  }
  // `edge demo` opens the page with #token=...; a link to a run is #run=UID. Taken at load and whenever
  // the address's #part changes in an open tab (a link pasted into it does not reload the page: the token
  // stayed in the address, unstored and unchecked, an outside probe)
  function tokenFromAddress() {
    const handed = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (!handed) return null;
    let value = handed[1];
    try { value = decodeURIComponent(value); } catch (error) { /* kept as written */ }
    history.replaceState(null, "", location.pathname + location.hash.replace(/(^#|&)token=[^&]+/, "$1").replace(/^#&?$/, ""));
    return value;
  }
  const handed = tokenFromAddress();
  if (handed !== null) token.set(handed); // checked below, with a token already stored
  $("token-toggle").addEventListener("click", () => {
    const form = $("token-form");
    form.hidden = !form.hidden;
    $("token-toggle").setAttribute("aria-expanded", String(!form.hidden));
    if (!form.hidden) $("token-input").focus();
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("token-input").value.trim());
    $("token-input").value = "";
  });
  $("token-forget").addEventListener("click", () => setToken(""));

  // ---- wiring ---------------------------------------------------------------------------------------------
  $("runs").tBodies[0].addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-run]");
    if (row) {
      state.whereFrom = row.dataset.run;
      state.whereScroll = true;
      selectRun(row.dataset.run);
    }
  });
  $("runs").tBodies[0].addEventListener("keydown", (event) => {
    const row = event.target.closest("tr[data-run]");
    if (row && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      state.whereFrom = row.dataset.run;
      state.whereScroll = true;
      selectRun(row.dataset.run);
      $("where-card").focus({ preventScroll: true }); // the card just opened is where the keyboard goes next
    }
  });
  document.addEventListener("keydown", (event) => {  // Escape closes the where panel, as a dialog's
    if (event.key === "Escape" && !$("where-card").hidden) selectRun(null);
  });
  for (const id of ["filter-name", "filter-date", "filter-mode", "filter-state"]) $(id).addEventListener("input", renderRuns);
  $("alarms").addEventListener("click", (event) => {
    const button = event.target.closest("button.ack");
    if (button) {
      acknowledge(button.dataset.alarm);
      return;
    }
    const text = event.target.closest("li .text");
    if (!text) return;
    const item = text.closest("li");
    const id = item.dataset.alarm;
    if (state.alarmsOpen.has(id)) state.alarmsOpen.delete(id);
    else state.alarmsOpen.add(id);
    item.classList.toggle("open", state.alarmsOpen.has(id));
  });
  $("where").addEventListener("click", (event) => {
    const other = event.target.closest("a[data-run]");
    if (other) {
      event.preventDefault();
      selectRun(other.dataset.run);
      return;
    }
    const button = event.target.closest("button.copy");
    if (!button) return;
    const text = button.dataset.copy;
    const done = () => { button.textContent = "copied"; setTimeout(() => { button.textContent = "copy"; }, 1500); };
    if (navigator.clipboard?.writeText) navigator.clipboard.writeText(text).then(done, () => window.prompt("copy the path", text));
    else window.prompt("copy the path", text);
  });
  for (const b of document.querySelectorAll(".zoom button")) b.addEventListener("click", () => setZoom(Number(b.dataset.zoom)));
  $("where-close").addEventListener("click", () => selectRun(null));
  $("mode-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setMode();
  });
  $("profile-log").addEventListener("change", () => drawProfile(state.profile));
  window.addEventListener("resize", () => {
    drawProfile(state.profile);
    if (state.product) renderProduct(state.product);
    renderTrends();
  });
  drawColorbar();
  showTokenState();
  checkToken();
  renderTrends();
  function runFromAddress() {
    const fromHash = /^#run=(.+)$/.exec(location.hash);
    if (!fromHash) return;
    let uid = fromHash[1];
    try { uid = decodeURIComponent(uid); } catch (error) { /* kept as written */ }
    selectRun(uid);
  }
  runFromAddress();
  window.addEventListener("hashchange", () => {
    const given = tokenFromAddress();
    if (given !== null) setToken(given);
    runFromAddress();
  });
  connect();
  setInterval(() => {
    updateLink();
    tickAge();
  }, 250);
  window.edgeDashboard = state; // for the browser tests and a curious person's console
  state.tableUid = tableUid;
  state.shortUid = shortUid; // (the browser tests hold it to edge.alarms.short_uid)
})();
