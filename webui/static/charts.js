// edge dashboard: small line charts on <canvas>, drawn by hand (no library, no build step).
//
// EdgeCharts.trend(canvas, samples, value, options) draws value(sample) against sample.t (seconds,
// appliance wall clock) over the last `windowS` seconds: the latest value and the range in the corner,
// gaps where a sample has no value (nobody watched, or no rate yet), and a "-N min ... now" time axis;
// with options.grid, a value axis too (round ticks, gridlines and their labels at the left).
"use strict";

window.EdgeCharts = (() => {
  /** How much the page is scaled up (dashboard.css: the root font grows on a wall): 1 at 16 px. */
  function zoom() {
    return parseFloat(getComputedStyle(document.documentElement).fontSize) / 16 || 1;
  }

  function fit(canvas) {
    // draw at the canvas's on-screen size, sharp on high-DPI screens; W and H are in units of the
    // unscaled page, so labels and margins grow with the page's zoom
    const ratio = window.devicePixelRatio || 1;
    const scale = ratio * zoom();
    const w = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const h = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== w || canvas.height !== h) {
      canvas.width = w;
      canvas.height = h;
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(scale, 0, 0, scale, 0, 0);
    return { ctx, W: w / scale, H: h / scale };
  }

  /** Round values from lo to hi for a value axis: steps of 1, 2 or 5 times a power of ten, 3 to 6 of them. */
  function niceTicks(lo, hi) {
    const span = hi - lo;
    if (!(span > 0) || !Number.isFinite(span)) return [];
    const raw = span / 4;
    const power = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 5, 10].map((f) => f * power).find((s) => span / s <= 5) || 10 * power;
    const out = [];
    for (let v = Math.floor(lo / step) * step; v <= hi + step * 0.5 && out.length < 8; v += step) {
      out.push(Number(v.toPrecision(12)));
    }
    if (out[out.length - 1] < hi) out.push(Number((out[out.length - 1] + step).toPrecision(12)));
    return out;
  }

  function trend(canvas, samples, value, options = {}) {
    const { ctx, W, H } = fit(canvas);
    const windowS = options.windowS || 600;
    const format = options.format || ((v) => v.toFixed(1));
    const colour = options.colour || "#2563eb";
    ctx.clearRect(0, 0, W, H);
    const now = options.now ?? (samples.length ? samples[samples.length - 1].t : Date.now() / 1000);
    const pts = [];
    for (const s of samples) {
      if (!(now - s.t <= windowS)) continue;
      const v = value(s);
      pts.push([s.t, v === null || v === undefined || !Number.isFinite(Number(v)) ? null : Number(v)]);
    }
    const m = { l: 4, r: 4, t: 16, b: 14 };
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#6a7383";
    ctx.strokeStyle = "#e5e7eb";
    ctx.lineWidth = 1;
    // the time axis, from the plot's left edge (after a value axis' labels: "-1 min" was drawn over
    // the lowest of them, "0.0 %", an outside probe)
    const timeAxis = () => {
      ctx.strokeStyle = "#e5e7eb";
      ctx.fillStyle = "#6a7383";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(m.l, H - m.b + 0.5);
      ctx.lineTo(W - m.r, H - m.b + 0.5);
      ctx.stroke();
      ctx.textBaseline = "bottom";
      ctx.textAlign = "left";
      ctx.fillText(`-${Math.round(windowS / 60)} min`, m.l, H);
      ctx.textAlign = "right";
      // the axis' right end: "now", or (options.endLabel) what that time is when the last sample is old
      ctx.fillText(options.endLabel || "now", W - m.r, H);
      ctx.textBaseline = "top";
    };
    canvas.dataset.endLabel = options.endLabel || "now"; // (what the axis says, for readers of the page)
    const values = pts.filter((p) => p[1] !== null).map((p) => p[1]);
    ctx.textBaseline = "top";
    if (!values.length) {
      timeAxis();
      ctx.textAlign = "center";
      ctx.fillText("no samples yet", W / 2, H / 2 - 6);
      return;
    }
    let lo = Math.min(...values, options.min ?? Infinity);
    let hi = Math.max(...values, options.max ?? -Infinity);
    if (options.floor !== undefined) lo = Math.min(lo, options.floor);
    if (hi <= lo) hi = lo + 1;
    const ticks = options.grid ? niceTicks(lo, hi) : [];
    if (ticks.length) {
      // a value axis (a chart large enough to read values off): round ticks, gridlines, labels at left
      lo = Math.min(lo, ticks[0]);
      hi = Math.max(hi, ticks[ticks.length - 1]);
      m.l = 6 + Math.max(...ticks.map((v) => ctx.measureText(format(v)).width));
    }
    const sx = (t) => m.l + (1 - (now - t) / windowS) * (W - m.l - m.r);
    const sy = (v) => H - m.b - ((v - lo) / (hi - lo)) * (H - m.t - m.b);
    if (ticks.length) {
      ctx.strokeStyle = "#eef0f4";
      ctx.fillStyle = "#5b6472";
      ctx.textAlign = "right";
      ctx.textBaseline = "middle";
      for (const v of ticks) {
        const y = Math.round(sy(v)) + 0.5;
        ctx.beginPath();
        ctx.moveTo(m.l, y);
        ctx.lineTo(W - m.r, y);
        ctx.stroke();
        ctx.fillText(format(v), m.l - 4, y);
      }
      ctx.textBaseline = "top";
    }
    timeAxis();
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    for (const [t, v] of pts) {
      if (v === null) {
        pen = false;
        continue;
      }
      if (pen) ctx.lineTo(sx(t), sy(v));
      else ctx.moveTo(sx(t), sy(v));
      pen = true;
    }
    ctx.stroke();
    // a sample with no neighbour to join is a dot (a serial run reduced in one burst after its kernels
    // loaded gave one sample, and the chart drew nothing: an outside probe)
    let dots = 0;
    ctx.fillStyle = colour;
    pts.forEach(([t, v], i) => {
      if (v === null || pts[i - 1]?.[1] != null || pts[i + 1]?.[1] != null) return;
      ctx.beginPath();
      ctx.arc(sx(t), sy(v), 2.5, 0, 2 * Math.PI);
      ctx.fill();
      dots += 1;
    });
    canvas.dataset.dots = String(dots);
    const last = values[values.length - 1];
    ctx.fillStyle = "#1d2430";
    ctx.textAlign = "left";
    ctx.fillText(`${options.lastLabel || "now"} ${format(last)}`, m.l, 1);
    canvas.dataset.lastLabel = options.lastLabel || "now"; // (what the value's label says, for readers)
    ctx.fillStyle = "#6a7383";
    ctx.textAlign = "right";
    ctx.fillText(`${format(lo)} – ${format(hi)}`, W - m.r, 1);
  }

  return { trend, fit, zoom, niceTicks };
})();
