/* align-chains eval report. Plain JavaScript, no network. Every text from the data reaches the page
   through textContent / createTextNode (never innerHTML): answers are data, not markup. */
"use strict";
(function () {
  const core = JSON.parse(document.getElementById("report-data").textContent);
  let detailsDoc = null;
  const RUN_NAMES = ["A", "B"];
  const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7f7f7f", "#F0E442", "#332288", "#117733"];
  const SHAPES = ["circle", "square", "triangle", "diamond", "down", "circle", "square", "triangle", "diamond", "down"];
  const COMPUTE = { generated_tokens: "generated tokens per prompt", seconds: "seconds per prompt",
    reward_calls: "reward calls per prompt", reward_items: "reward items per prompt", forward_passes: "forward passes per prompt" };
  const SUMMARY_VALUES = { reward: "optimised reward", holdout: "held-out reward", win_rate: "win rate vs plain",
    holdout_win_rate: "held-out win rate vs plain", success_rate: "success rate", constraint_rate: "constraint met", fluent_rate: "fluent" };
  const runs = core.runs;
  const prompts = core.prompts;
  const state = { run: 0, view: "0", metric: null, sort: "order", reversed: false, filter: "all", search: "", page: 0, pageSize: 50,
    pairRun: 0, pairA: 0, pairB: 1, pairMetric: null, curveY: "reward", curveX: "generated_tokens", focus: { row: 0, col: 0 }, lastFocus: null };

  // ---------------------------------------------------------------- helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children) add(node, child);
    return node;
  }
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    setAttrs(node, attrs);
    for (const child of children) add(node, child);
    return node;
  }
  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") node.textContent = String(v);
      else if (k === "class") node.setAttribute("class", v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
  }
  function add(node, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { for (const c of child) add(node, c); return; }
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  function keyNode(key) {  // a setting key that may wrap after its ':' and ',' (never inside a value)
    const span = el("span", { class: "key" });
    String(key).split(/(?<=[:,])/).forEach((part, i) => { if (i) span.appendChild(el("wbr")); span.appendChild(document.createTextNode(part)); });
    return span;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  const $ = (id) => document.getElementById(id);
  function isNum(x) { return typeof x === "number" && isFinite(x); }
  function fmt(x, digits) {
    if (!isNum(x)) return "n/a";
    if (digits === undefined) digits = Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 3;
    return x.toFixed(digits);
  }
  function fmtSigned(x, digits) { return isNum(x) ? (x > 0 ? "+" : x < 0 ? "−" : "±") + fmt(Math.abs(x), digits === undefined ? 3 : digits) : "n/a"; }
  function fmtP(p) { return !isNum(p) ? "n/a" : p < 0.001 ? "< 0.001" : p.toFixed(3); }
  function short(text, n) { const t = String(text).replace(/\s+/g, " ").trim(); return t.length > n ? t.slice(0, n - 1) + "…" : t; }
  function details(run, k) {
    if (detailsDoc === null) detailsDoc = JSON.parse($("report-details").textContent);
    return detailsDoc[run][k] || {};
  }
  function lastUser(prompt) {
    const users = prompt.messages.filter((m) => m.role === "user");
    return (users.length ? users[users.length - 1] : prompt.messages[prompt.messages.length - 1] || { content: "" }).content;
  }
  function settingName(run, s) { return runs[run].settings[s].key; }
  function metricName(m) { return core.metric_names[m] || m; }
  function statText(stat) {
    if (!stat) return ["n/a"];
    return [fmt(stat.mean), " ", el("span", { class: "ci", text: "[" + fmt(stat.low) + ", " + fmt(stat.high) + "]" })];
  }

  // cell lookup: index[run][p * S + s] -> index into runs[run].cells, or -1
  const lookup = runs.map((run) => {
    const S = run.settings.length;
    const table = new Int32Array(prompts.length * S).fill(-1);
    run.cells.forEach((c, k) => { table[c.p * S + c.s] = k; });
    return table;
  });
  function cellAt(run, p, s) {
    const k = lookup[run][p * runs[run].settings.length + s];
    return k < 0 ? null : runs[run].cells[k];
  }
  function cellIndex(run, p, s) { return lookup[run][p * runs[run].settings.length + s]; }
  function value(cell, metric) {
    if (!cell) return null;
    const v = cell[metric];
    if (metric === "success") return v === null || v === undefined ? null : (v ? 1 : 0);
    return isNum(v) ? v : null;
  }
  const plainIndex = runs.map((run) => run.settings.findIndex((s) => s.key === "plain"));
  const hasField = (field) => runs.some((r) => r.cells.some((c) => c[field] !== null && c[field] !== undefined));

  // colour scale per (run, metric): 5th..95th percentile of the values -> orange..blue, translucent
  const scales = {};
  function scale(run, metric) {
    const key = run + ":" + metric;
    if (!scales[key]) {
      const vals = runs[run].cells.map((c) => value(c, metric)).filter(isNum).sort((a, b) => a - b);
      const q = (f) => vals.length ? vals[Math.min(vals.length - 1, Math.floor(f * (vals.length - 1)))] : 0;
      scales[key] = [q(0.05), q(0.95)];
    }
    return scales[key];
  }
  function colour(t) {
    if (!isNum(t)) return "";
    t = Math.max(0, Math.min(1, t));
    const hue = t < 0.5 ? 28 : 212;
    const alpha = (Math.abs(t - 0.5) * 2 * 0.42).toFixed(3);
    return "hsla(" + hue + ", 85%, 50%, " + alpha + ")";
  }
  function cellColour(run, metric, v) {
    if (!isNum(v)) return "";
    const [lo, hi] = scale(run, metric);
    return colour(hi > lo ? (v - lo) / (hi - lo) : 0.5);
  }
  function deltaColour(d, span) { return isNum(d) && span > 0 ? colour(0.5 + 0.5 * Math.max(-1, Math.min(1, d / span))) : ""; }

  // ---------------------------------------------------------------- header
  function renderHeader() {
    const box = clear($("runinfo"));
    runs.forEach((run, r) => {
      const c = run.config;
      const done = run.cells.length;
      const complete = done >= run.expected;
      const line = el("div", { class: "run", "data-run": r },
        runs.length > 1 ? el("strong", { text: "Run " + RUN_NAMES[r] + ": " }) : null,
        el("code", { text: run.name }), " · policy ", String(c.policy), " · optimised reward ", String(c.reward),
        " · held-out ", String(c.holdout), " · ", String(c.max_tokens), " max tokens · seed ", String(c.seed), " · ",
        el("span", { class: complete ? "status" : "status warn", id: "status-" + r,
          text: complete ? done + " answers (complete)" : done + " of " + run.expected + " answers: a run in progress, cut off, or with failed settings" }));
      box.appendChild(line);
      if (run.errors.length) {
        box.appendChild(el("div", { class: "warn" }, run.errors.length + " failed batch(es): ",
          run.errors.slice(0, 5).map((e, i) => [i ? "; " : "", String(e.key), " on ", (e.prompts || []).join(", "), ": ", short(String(e.error), 160)])));
      }
      if (run.dropped) box.appendChild(el("div", { text: run.dropped + " answers belong to prompts not in this file's prompt list (an earlier, longer run): not shown." }));
    });
    if (core.changed_prompts.length) box.appendChild(el("div", { class: "warn", text: "Prompts whose text differs between the runs (not compared): " + core.changed_prompts.join(", ") }));
    box.appendChild(el("div", { text: "Written by " + core.tool + "." }));
  }

  // ---------------------------------------------------------------- summary
  function renderSummary() {
    const box = clear($("summary-body"));
    runs.forEach((run, r) => {
      const rows = run.summary;
      const has = (k) => rows.some((row) => row && row[k]);
      const cols = [["reward", "Optimised reward"], ["holdout", "Held-out reward"]];
      for (const [k, label] of [["success_rate", "Success"], ["constraint_rate", "Constraint met"], ["fluent_rate", "Fluent"]]) if (has(k)) cols.push([k, label]);
      cols.push(["win_rate", "Win vs plain"]);
      if (runs.length > 1) box.appendChild(el("h3", { text: "Run " + RUN_NAMES[r] + ": " + run.name }));
      const head = el("tr", {}, el("th", { scope: "col", text: "Setting" }), el("th", { scope: "col", class: "num", text: "Prompts" }),
        cols.map(([, label]) => el("th", { scope: "col", class: "num", text: label + " [95% CI]" })),
        el("th", { scope: "col", class: "num", text: "Generated tokens" }), el("th", { scope: "col", class: "num", text: "Reward calls" }),
        el("th", { scope: "col", class: "num", text: "Seconds" }));
      const body = el("tbody");
      run.settings.forEach((setting, s) => {
        const row = rows[s];
        const tr = el("tr", { "data-key": setting.key, class: setting.key === "plain" ? "baseline" : null },
          el("th", { scope: "row" }, keyNode(setting.key)));
        if (!row) {
          tr.appendChild(el("td", { colspan: cols.length + 4, class: "missing", text: "no answers yet" }));
        } else {
          tr.appendChild(el("td", { class: "num", "data-field": "prompts", "data-value": row.prompts, text: row.prompts }));
          for (const [k] of cols) tr.appendChild(el("td", { class: "num", "data-field": k, "data-value": row[k] ? row[k].mean : null }, statText(row[k])));
          for (const k of ["generated_tokens", "reward_calls", "seconds"]) {
            const v = row.compute[k];
            tr.appendChild(el("td", { class: "num", "data-field": k, "data-value": v, text: fmt(v, k === "generated_tokens" ? 1 : 2) }));
          }
        }
        body.appendChild(tr);
      });
      box.appendChild(el("div", { class: "table-scroll" }, el("table", { class: "summary", id: "summary-" + r }, el("thead", {}, head), body)));
    });
  }

  // ---------------------------------------------------------------- curves
  function curvePoints() {
    const pts = [];
    runs.forEach((run, r) => run.settings.forEach((setting, s) => {
      const row = run.summary[s];
      if (!row || !row[state.curveY] || !isNum(row.compute[state.curveX])) return;
      pts.push({ run: r, s, setting, row, x: row.compute[state.curveX], y: row[state.curveY].mean,
        lo: row[state.curveY].low, hi: row[state.curveY].high });
    }));
    return pts;
  }
  function pareto(pts) {
    const front = new Set();
    runs.forEach((_, r) => {
      const own = pts.filter((p) => p.run === r).sort((a, b) => a.x - b.x || b.y - a.y);
      let best = -Infinity;
      for (const p of own) if (p.y > best) { front.add(p); best = p.y; }
    });
    return front;
  }
  function marker(shape, x, y, size, fill, stroke) {
    const a = { fill, stroke, "stroke-width": 1.5 };
    if (shape === "square") return svg("rect", { ...a, x: x - size, y: y - size, width: 2 * size, height: 2 * size });
    if (shape === "triangle") return svg("polygon", { ...a, points: [x, y - size * 1.2, x - size * 1.1, y + size * 0.9, x + size * 1.1, y + size * 0.9].join(" ") });
    if (shape === "down") return svg("polygon", { ...a, points: [x, y + size * 1.2, x - size * 1.1, y - size * 0.9, x + size * 1.1, y - size * 0.9].join(" ") });
    if (shape === "diamond") return svg("polygon", { ...a, points: [x, y - size * 1.3, x - size * 1.1, y, x, y + size * 1.3, x + size * 1.1, y].join(" ") });
    return svg("circle", { ...a, cx: x, cy: y, r: size });
  }
  function renderCurves() {
    const box = clear($("curve-box"));
    const pts = curvePoints();
    if (!pts.length) { box.appendChild(el("p", { class: "help", text: "No setting has this value yet." })); return; }
    const W = 900, H = 430, L = 70, R = 20, T = 16, B = 52;
    const xs = pts.map((p) => Math.max(p.x, 1e-3));
    const logx = Math.max(...xs) / Math.min(...xs) > 20;
    const tx = logx ? (v) => Math.log10(Math.max(v, 1e-3)) : (v) => v;
    let x0 = Math.min(...xs.map(tx)), x1 = Math.max(...xs.map(tx));
    if (x1 - x0 < 1e-9) { x0 -= 1; x1 += 1; }
    const pad = (x1 - x0) * 0.06; x0 -= pad; x1 += pad;
    const ys = pts.flatMap((p) => [p.y, p.lo, p.hi]).filter(isNum);
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const ypad = (y1 - y0) * 0.08; y0 -= ypad; y1 += ypad;
    const X = (v) => L + (tx(Math.max(v, 1e-3)) - x0) / (x1 - x0) * (W - L - R);
    const Y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "group", "aria-label": "Reward per compute chart", id: "curve-svg" });
    const yticks = niceTicks(y0, y1);
    for (const yv of yticks) {
      chart.appendChild(svg("line", { class: "grid", x1: L, x2: W - R, y1: Y(yv), y2: Y(yv) }));
      chart.appendChild(svg("text", { x: L - 6, y: Y(yv) + 4, "text-anchor": "end", text: tickText(yv, yticks.step) }));
    }
    const xticks = logx ? logTicks(Math.pow(10, x0), Math.pow(10, x1)) : niceTicks(x0, x1);
    for (const xv of xticks) {
      const px = L + (tx(xv) - x0) / (x1 - x0) * (W - L - R);
      chart.appendChild(svg("line", { class: "grid", x1: px, x2: px, y1: T, y2: H - B }));
      chart.appendChild(svg("text", { x: px, y: H - B + 18, "text-anchor": "middle", text: tickText(xv, logx ? xv : xticks.step) }));
    }
    chart.appendChild(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    chart.appendChild(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    chart.appendChild(svg("text", { x: (L + W - R) / 2, y: H - 10, "text-anchor": "middle", text: COMPUTE[state.curveX] + (logx ? " (log scale)" : "") }));
    chart.appendChild(svg("text", { x: 14, y: (T + H - B) / 2, "text-anchor": "middle", transform: "rotate(-90 14 " + (T + H - B) / 2 + ")", text: SUMMARY_VALUES[state.curveY] }));
    const strategies = [...new Set(pts.map((p) => p.setting.strategy))];
    const front = pareto(pts);
    for (const r of runs.keys()) {
      const own = [...front].filter((p) => p.run === r).sort((a, b) => a.x - b.x);
      if (own.length > 1) {
        let d = "M" + X(own[0].x) + " " + Y(own[0].y);
        for (let i = 1; i < own.length; i++) d += " H" + X(own[i].x) + " V" + Y(own[i].y);
        chart.appendChild(svg("path", { class: "front", d, "stroke-dasharray": "2 3", opacity: 0.7 }));
      }
    }
    strategies.forEach((name, i) => runs.forEach((_, r) => {
      const own = pts.filter((p) => p.run === r && p.setting.strategy === name).sort((a, b) => a.x - b.x);
      if (own.length > 1) chart.appendChild(svg("polyline", { fill: "none", stroke: PALETTE[i % 10], "stroke-width": 2,
        "stroke-dasharray": r ? "6 4" : null, points: own.map((p) => X(p.x) + "," + Y(p.y)).join(" ") }));
    }));
    for (const p of pts) {
      const i = strategies.indexOf(p.setting.strategy);
      const g = svg("g", { class: "point", tabindex: 0, role: "img", "data-key": p.setting.key, "data-run": p.run });
      const text = pointText(p, front.has(p));
      g.setAttribute("aria-label", text.replace(/\n/g, "; "));
      if (isNum(p.lo) && isNum(p.hi)) g.appendChild(svg("line", { x1: X(p.x), x2: X(p.x), y1: Y(p.lo), y2: Y(p.hi), stroke: PALETTE[i % 10], "stroke-width": 1.5 }));
      if (front.has(p)) g.appendChild(svg("circle", { cx: X(p.x), cy: Y(p.y), r: 10, fill: "none", stroke: "currentColor", "stroke-width": 1.5, class: "front-ring" }));
      g.appendChild(marker(SHAPES[i % 10], X(p.x), Y(p.y), 5.5, p.run ? "var(--bg)" : PALETTE[i % 10], PALETTE[i % 10]));
      const show = (ev) => showTip(text, ev, g);
      g.addEventListener("mouseenter", show); g.addEventListener("mousemove", show); g.addEventListener("focus", show);
      g.addEventListener("mouseleave", hideTip); g.addEventListener("blur", hideTip);
      chart.appendChild(g);
    }
    box.appendChild(chart);
    box.appendChild(el("div", { class: "legend" }, strategies.map((name, i) => el("span", {},
      svgLegend(SHAPES[i % 10], PALETTE[i % 10]), name)),
      el("span", {}, "◯ ring: Pareto front (dotted)"), runs.length > 1 ? el("span", {}, "run A solid, run B dashed / hollow") : null));
  }
  function niceTicks(lo, hi) {
    const raw = (hi - lo) / 5, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((st) => st >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    out.step = step;
    return out;
  }
  function logTicks(lo, hi) {
    const out = [];
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      for (const f of [1, 2, 5]) { const v = f * Math.pow(10, e); if (v >= lo && v <= hi) out.push(v); }
    }
    return out;
  }
  function tickText(v, step) {
    if (Math.abs(v) >= 10000 && step >= 1000) return (v / 1000).toFixed(0) + "k";
    const decimals = Math.max(0, Math.ceil(-Math.log10(step) - 1e-9) + (Math.abs(step / Math.pow(10, Math.floor(Math.log10(step))) - 2.5) < 1e-9 ? 1 : 0));
    return v.toFixed(Math.min(decimals, 6));
  }
  function svgLegend(shape, col) {
    const s = svg("svg", { width: 26, height: 14, viewBox: "0 0 26 14", "aria-hidden": "true", style: "display:inline-block;vertical-align:middle;margin-right:4px" });
    s.appendChild(svg("line", { x1: 0, x2: 26, y1: 7, y2: 7, stroke: col, "stroke-width": 2 }));
    s.appendChild(marker(shape, 13, 7, 4.5, col, col));
    return s;
  }
  function pointText(p, onFront) {
    const row = p.row, c = row.compute;
    return (runs.length > 1 ? "Run " + RUN_NAMES[p.run] + ": " : "") + p.setting.key + "\n" +
      SUMMARY_VALUES[state.curveY] + " " + fmt(p.y) + " [" + fmt(p.lo) + ", " + fmt(p.hi) + "]\n" +
      "optimised " + fmt(row.reward && row.reward.mean) + " · held-out " + fmt(row.holdout && row.holdout.mean) + "\n" +
      fmt(c.generated_tokens, 1) + " generated tokens · " + fmt(c.reward_calls, 2) + " reward calls · " + fmt(c.seconds, 2) + " s per prompt" +
      (onFront ? "\non the Pareto front" : "");
  }
  const tip = $("tooltip");
  function showTip(text, ev, target) {
    tip.textContent = text; tip.hidden = false;
    let x, y;
    if (ev && ev.type !== "focus" && ev.clientX !== undefined) { x = ev.clientX; y = ev.clientY; }
    else { const b = target.getBoundingClientRect(); x = b.right; y = b.top; }
    tip.style.left = Math.min(x + 14, window.innerWidth - 300) + "px";
    tip.style.top = Math.max(4, y - 10) + "px";
  }
  function hideTip() { tip.hidden = true; }

  // ---------------------------------------------------------------- paired comparison
  function pairStats(run, a, b, metric) {
    const list = (runs[run].pairs[metric] || []);
    for (const [i, j, st] of list) {
      if (i === a && j === b) return st;
      if (i === b && j === a) return { n: st.n, wins: st.losses, losses: st.wins, ties: st.ties, mean: -st.mean, low: -st.high, high: -st.low, p: st.p };
    }
    return null;
  }
  function renderPair() {
    const run = state.pairRun, a = state.pairA, b = state.pairB, m = state.pairMetric;
    const box = clear($("pair-text")), chart = clear($("pair-box"));
    if (a === b) { box.textContent = "Choose two different settings."; return; }
    const st = m ? pairStats(run, a, b, m) : null;
    if (!st) { box.textContent = "These two settings share no prompt with a value yet."; return; }
    const A = settingName(run, a), B = settingName(run, b);
    const num = (id, v, text) => el("strong", { id, "data-value": v, text });
    const verdict = st.p < 0.05 ? (st.mean > 0 ? A : B) + " is higher, unlikely to be chance (p < 0.05)" : "the prompts cannot tell them apart at the 5% level";
    add(box, [el("strong", { text: A }), " beats ", el("strong", { text: B }), " on ", num("pair-wins", st.wins, String(st.wins)), " of ",
      num("pair-n", st.n, String(st.n)), " prompts (", String(st.losses), " lose, ", String(st.ties), " tie) on the ", metricName(m), "; mean difference ",
      num("pair-mean", st.mean, fmtSigned(st.mean)), " [", num("pair-low", st.low, fmt(st.low)), ", ", num("pair-high", st.high, fmt(st.high)),
      "] (95% paired bootstrap); sign-flip permutation test p = ", num("pair-p", st.p, fmtP(st.p)), ": ", verdict, "."]);
    const diffs = [];
    for (let p = 0; p < prompts.length; p++) {
      const x = value(cellAt(run, p, a), m), y = value(cellAt(run, p, b), m);
      if (isNum(x) && isNum(y)) diffs.push({ p, d: x - y });
    }
    diffs.sort((u, v) => v.d - u.d);
    const W = 900, H = 170, L = 60, T = 10, Bm = 26;
    const span = Math.max(1e-9, ...diffs.map((x) => Math.abs(x.d)));
    const Y = (v) => T + (1 - (v + span) / (2 * span)) * (H - T - Bm);
    const bw = Math.min(40, (W - L - 10) / diffs.length);
    const s = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Per-prompt differences " + A + " minus " + B + ", sorted: " + st.wins + " above zero, " + st.losses + " below" });
    s.appendChild(svg("line", { class: "axis", x1: L, x2: W - 10, y1: Y(0), y2: Y(0) }));
    s.appendChild(svg("text", { x: L - 6, y: Y(span) + 8, "text-anchor": "end", text: fmtSigned(span, 2) }));
    s.appendChild(svg("text", { x: L - 6, y: Y(0) + 4, "text-anchor": "end", text: "0" }));
    s.appendChild(svg("text", { x: L - 6, y: Y(-span), "text-anchor": "end", text: fmtSigned(-span, 2) }));
    diffs.forEach((x, i) => {
      const rect = svg("rect", { x: L + i * bw + bw * 0.1, width: Math.max(bw * 0.8, 0.5), y: Math.min(Y(x.d), Y(0)), height: Math.max(Math.abs(Y(x.d) - Y(0)), 0.5),
        fill: x.d > 0 ? "var(--good)" : "var(--bad)" });
      rect.appendChild(svg("title", { text: prompts[x.p].id + ": " + fmtSigned(x.d) }));
      s.appendChild(rect);
    });
    s.appendChild(svg("text", { x: (L + W) / 2, y: H - 6, "text-anchor": "middle", class: "muted", text: "per-prompt difference " + A + " − " + B + ", sorted (" + metricName(m) + ")" }));
    chart.appendChild(s);
  }
  function fillPairControls() {
    const run = runs[state.pairRun];
    for (const [id, key] of [["pair-a", "pairA"], ["pair-b", "pairB"]]) {
      const sel = clear($(id));
      run.settings.forEach((s, i) => sel.appendChild(el("option", { value: i, text: (runs.length > 1 ? RUN_NAMES[state.pairRun] + ": " : "") + s.key, selected: i === state[key] })));
    }
    const ms = clear($("pair-metric"));
    for (const m of run.metrics) ms.appendChild(el("option", { value: m, text: metricName(m), selected: m === state.pairMetric }));
  }

  // ---------------------------------------------------------------- run comparison
  function renderRuns() {
    const cmp = core.comparison;
    if (!cmp) return;
    $("runs").hidden = false; $("nav-runs").hidden = false;
    const box = clear($("runs-body"));
    if (!cmp.settings.length) { box.appendChild(el("p", { text: "The two runs share no setting." })); return; }
    const body = el("tbody");
    for (const [key, m, st] of cmp.stats) {
      if (!st) { body.appendChild(el("tr", { "data-key": key, "data-metric": m }, el("th", { scope: "row", text: key }), el("td", { text: metricName(m) }), el("td", { colspan: 4, class: "missing", text: "no shared prompt" }))); continue; }
      body.appendChild(el("tr", { "data-key": key, "data-metric": m }, el("th", { scope: "row", text: key }), el("td", { text: metricName(m) }),
        el("td", { class: "num " + (st.low > 0 ? "delta-pos" : st.high < 0 ? "delta-neg" : ""), "data-field": "mean", "data-value": st.mean }, fmtSigned(st.mean), " ", el("span", { class: "ci", text: "[" + fmt(st.low) + ", " + fmt(st.high) + "]" })),
        el("td", { class: "num", "data-field": "wins", "data-value": st.wins, text: st.wins + " of " + st.n + " (" + st.losses + " lower, " + st.ties + " tied)" }),
        el("td", { class: "num", "data-field": "p", "data-value": st.p, text: fmtP(st.p) })));
    }
    box.appendChild(el("table", { class: "summary", id: "runs-table" }, el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Setting" }), el("th", { scope: "col", text: "Value" }),
      el("th", { scope: "col", class: "num", text: "B − A [95% CI]" }), el("th", { scope: "col", class: "num", text: "B higher on" }), el("th", { scope: "col", class: "num", text: "p (sign flip)" }))), body));
    box.appendChild(el("p", { class: "help", text: "Per-prompt deltas: choose “B − A” under Answers below." }));
  }

  // ---------------------------------------------------------------- matrix: rows, filters, sorting
  function deltaView() { return state.view === "delta"; }
  function viewRun() { return deltaView() ? 1 : Number(state.view); }
  function columns() {
    if (!deltaView()) return runs[viewRun()].settings.map((setting, i) => ({ key: setting.key, s: i }));
    return core.comparison.settings.map((key) => ({ key, a: runs[0].settings.findIndex((t) => t.key === key), b: runs[1].settings.findIndex((t) => t.key === key) }));
  }
  function rowPrompts() {
    if (!deltaView()) return runs[viewRun()].prompts;
    const inB = new Set(runs[1].comparable);
    return runs[0].comparable.filter((p) => inB.has(p));
  }
  function colValue(p, col, metric) {
    if (!deltaView()) return value(cellAt(viewRun(), p, col.s), metric);
    const a = value(cellAt(0, p, col.a), metric), b = value(cellAt(1, p, col.b), metric);
    return isNum(a) && isNum(b) ? b - a : null;
  }
  function disagrees(p) {
    const run = viewRun(), S = runs[run].settings.length;
    const cells = []; for (let s = 0; s < S; s++) { const c = cellAt(run, p, s); if (c) cells.push([s, c]); }
    const withSuccess = cells.filter(([, c]) => c.success !== null && c.success !== undefined);
    if (withSuccess.length) return new Set(withSuccess.map(([, c]) => !!c.success)).size > 1;
    const base = plainIndex[run] >= 0 ? value(cellAt(run, p, plainIndex[run]), state.metric) : null;
    if (!isNum(base)) return false;
    const verdicts = new Set();
    for (const [s, c] of cells) { if (s === plainIndex[run]) continue; const v = value(c, state.metric); if (isNum(v) && v !== base) verdicts.add(v > base); }
    return verdicts.size > 1;
  }
  function aBeatsB(p) {
    if (state.pairRun !== viewRun()) return false;
    const x = value(cellAt(viewRun(), p, state.pairA), state.pairMetric), y = value(cellAt(viewRun(), p, state.pairB), state.pairMetric);
    return isNum(x) && isNum(y) && x > y;
  }
  function anyFalse(p, field) {
    const run = viewRun();
    for (let s = 0; s < runs[run].settings.length; s++) { const c = cellAt(run, p, s); if (c && c[field] === false) return true; }
    return false;
  }
  const FILTERS = [
    ["all", "All prompts", () => true],
    ["disagree", "Settings disagree", disagrees],
    ["abeatsb", "A beats B", aBeatsB],
    ["constraint", "Constraint failed", (p) => anyFalse(p, "constraint_met")],
    ["fluency", "Fluency gate failed", (p) => anyFalse(p, "fluent")],
  ];
  function filterAvailable(id) {
    if (deltaView()) return id === "all" ? "" : "filters apply to one run's answers; choose run A or B";
    if (id === "constraint" && !hasField("constraint_met")) return "nothing to filter: no answer in this file has a constraint test";
    if (id === "fluency" && !hasField("fluent")) return "nothing to filter: no answer in this file went through the fluency gate";
    if (id === "disagree" && plainIndex[viewRun()] < 0 && !hasField("success")) return "nothing to compare against: this run has no plain sample";
    return "";
  }
  function matches(p, needle) {
    if (!needle) return true;
    const prompt = prompts[p];
    if (prompt.id.toLowerCase().includes(needle)) return true;
    for (const m of prompt.messages) if (m.content.toLowerCase().includes(needle)) return true;
    const rs = deltaView() ? [0, 1] : [viewRun()];
    for (const r of rs) for (let s = 0; s < runs[r].settings.length; s++) { const c = cellAt(r, p, s); if (c && c.text.toLowerCase().includes(needle)) return true; }
    return false;
  }
  function visibleRows() {
    const test = FILTERS.find((f) => f[0] === state.filter)[2];
    const needle = state.search.trim().toLowerCase();
    let rows = rowPrompts().filter((p) => (filterAvailable(state.filter) ? true : test(p)) && matches(p, needle));
    const cols = columns();
    let key = null;
    if (state.sort === "id") rows = rows.slice().sort((a, b) => prompts[a].id.localeCompare(prompts[b].id));
    else if (state.sort.startsWith("col:")) { const col = cols[Number(state.sort.slice(4))]; if (col) key = (p) => colValue(p, col, state.metric); }
    else if (state.sort === "diff" && !deltaView()) key = (p) => { const x = value(cellAt(viewRun(), p, state.pairA), state.pairMetric), y = value(cellAt(viewRun(), p, state.pairB), state.pairMetric); return isNum(x) && isNum(y) ? x - y : null; };
    if (key) {  // highest first; prompts without a value always last
      const k = new Map(rows.map((p) => [p, key(p)]));
      const have = rows.filter((p) => isNum(k.get(p))).sort((a, b) => k.get(b) - k.get(a) || a - b);
      if (state.reversed) have.reverse();
      rows = have.concat(rows.filter((p) => !isNum(k.get(p))));
    } else if (state.reversed) rows = rows.slice().reverse();
    return rows;
  }

  // ---------------------------------------------------------------- matrix: rendering
  let current = [];
  function renderMatrix() {
    const rows = visibleRows();
    current = rows;
    const pages = Math.max(1, Math.ceil(rows.length / state.pageSize));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * state.pageSize, pageRows = rows.slice(start, start + state.pageSize);
    const total = rowPrompts().length;
    const note = filterAvailable(state.filter);
    $("filter-note").textContent = (note ? "“" + FILTERS.find((f) => f[0] === state.filter)[1] + "”: " + note + ". " : "") +
      "Showing " + rows.length + " of " + total + " prompts.";
    const cols = columns();
    const grid = clear($("grid"));
    const head = el("tr", {}, el("th", { class: "prompt-h", scope: "col", text: "Prompt" }));
    cols.forEach((col, i) => {
      const pressed = state.sort === "col:" + i;
      head.appendChild(el("th", { scope: "col", "data-key": col.key }, el("button", { type: "button", "aria-pressed": pressed ? "true" : "false",
        title: "Sort by this column's " + metricName(state.metric) + " (again: reverse)",
        onclick: () => { if (state.sort === "col:" + i) state.reversed = !state.reversed; else { state.sort = "col:" + i; state.reversed = false; } syncSort(); renderMatrix(); } },
        deltaView() ? "Δ " : "", keyNode(col.key), pressed ? (state.reversed ? " ↑" : " ↓") : "")));
    });
    const body = el("tbody");
    pageRows.forEach((p, r) => body.appendChild(matrixRow(p, r, cols)));
    grid.appendChild(el("thead", {}, head));
    grid.appendChild(body);
    for (const id of ["pager-top", "pager-bottom"]) renderPager($(id), rows.length, pages);
    if (!pageRows.length) body.appendChild(el("tr", {}, el("td", { colspan: cols.length + 1, class: "missing", text: "No prompt matches." })));
    state.focus.row = Math.min(state.focus.row, Math.max(0, pageRows.length - 1));
    state.focus.col = Math.min(state.focus.col, Math.max(0, cols.length - 1));
    const f = gridCell(state.focus.row, state.focus.col);
    if (f) f.tabIndex = 0;
  }
  function matrixRow(p, r, cols) {
    const prompt = prompts[p];
    const tr = el("tr", { "data-prompt": prompt.id },
      el("td", { class: "prompt", title: lastUser(prompt) }, el("div", { class: "pid", text: prompt.id + (prompt.split ? " · " + prompt.split : "") + (prompt.task ? " · " + prompt.task.family : "") }),
        el("div", { class: "answer", text: short(lastUser(prompt), 180) })));
    cols.forEach((col, c) => tr.appendChild(deltaView() ? deltaCell(p, col, r, c) : answerCell(p, col.s, r, c)));
    return tr;
  }
  function badges(cell) {
    const out = [];
    if (cell.success !== null && cell.success !== undefined) out.push(el("span", { class: "badge " + (cell.success ? "ok" : "no"), text: cell.success ? "✓ success" : "✗ fail" }));
    if (cell.constraint_met === false) out.push(el("span", { class: "badge no", text: "constraint ✗" }));
    if (cell.fluent === false) out.push(el("span", { class: "badge no", text: "not fluent" }));
    return out;
  }
  function numbers(cell) {
    return el("div", { class: "nums" }, el("span", { text: "r " + fmt(cell.reward) }), el("span", { text: "h " + fmt(cell.holdout) }),
      isNum(cell.task_reward) ? el("span", { text: "task " + fmt(cell.task_reward) }) : null, el("span", { text: fmt(cell.gen, 0) + " tok" }));
  }
  function answerCell(p, s, r, c) {
    const run = viewRun(), cell = cellAt(run, p, s);
    const attrs = { role: "gridcell", tabindex: -1, "data-row": r, "data-col": c, "data-key": runs[run].settings[s].key, class: "cell" };
    if (!cell) return el("td", { ...attrs, class: "cell missing", text: "not run yet" });
    const v = value(cell, state.metric);
    attrs.style = "background:" + cellColour(run, state.metric, v);
    attrs["aria-label"] = runs[run].settings[s].key + ", " + metricName(state.metric) + " " + fmt(v) + ": " + short(cell.text, 120);
    attrs.onclick = () => openPanel(p, s, r, c);
    return el("td", attrs, badges(cell), el("div", { class: "answer", text: short(cell.text, 200) || "(empty answer)" }), numbers(cell));
  }
  function deltaCell(p, col, r, c) {
    const a = cellAt(0, p, col.a), b = cellAt(1, p, col.b);
    const attrs = { role: "gridcell", tabindex: -1, "data-row": r, "data-col": c, "data-key": col.key, class: "cell" };
    if (!a || !b) return el("td", { ...attrs, class: "cell missing", text: !a ? "not in run A" : "not in run B" });
    const d = colValue(p, col, state.metric);
    const span = deltaSpan(state.metric);
    attrs.style = "background:" + deltaColour(d, span);
    attrs["data-delta"] = d;
    attrs["aria-label"] = col.key + ", B minus A " + fmtSigned(d);
    attrs.onclick = () => openPanel(p, col, r, c);
    return el("td", attrs, el("div", { class: "nums" }, el("strong", { class: "delta", text: "Δ " + fmtSigned(d) }), " ",
      el("span", { text: "A " + fmt(value(a, state.metric)) + " → B " + fmt(value(b, state.metric)) })),
      el("div", { class: "answer", text: "B: " + short(b.text, 160) }));
  }
  const spans = {};
  function deltaSpan(metric) {  // the 90th percentile of |B − A| over every shared cell: the colour scale
    if (spans[metric] === undefined) {
      const all = [];
      for (const p of rowPrompts()) for (const col of columns()) { const d = colValue(p, col, metric); if (isNum(d)) all.push(Math.abs(d)); }
      all.sort((a, b) => a - b);
      spans[metric] = Math.max(1e-9, all.length ? all[Math.floor(0.9 * (all.length - 1))] : 1);
    }
    return spans[metric];
  }
  function renderPager(box, n, pages) {
    clear(box);
    const go = (page) => { state.page = page; renderMatrix(); };
    box.appendChild(el("button", { type: "button", disabled: state.page === 0, onclick: () => go(state.page - 1), text: "← Previous" }));
    box.appendChild(el("span", { text: n ? "Prompts " + (state.page * state.pageSize + 1) + "–" + Math.min(n, (state.page + 1) * state.pageSize) + " of " + n + " · page " + (state.page + 1) + " of " + pages : "No prompts" }));
    box.appendChild(el("button", { type: "button", disabled: state.page >= pages - 1, onclick: () => go(state.page + 1), text: "Next →" }));
    const size = el("select", { "aria-label": "Prompts per page", onchange: (e) => { state.pageSize = Number(e.target.value); state.page = 0; renderMatrix(); } });
    for (const k of [25, 50, 100, 200]) size.appendChild(el("option", { value: k, text: k + " per page", selected: k === state.pageSize }));
    box.appendChild(size);
  }
  function gridCell(r, c) { return $("grid").querySelector('td[data-row="' + r + '"][data-col="' + c + '"]'); }
  function moveFocus(r, c) {
    const rowsOnPage = $("grid").querySelectorAll("tbody tr").length, cols = columns().length;
    r = Math.max(0, Math.min(rowsOnPage - 1, r)); c = Math.max(0, Math.min(cols - 1, c));
    const old = gridCell(state.focus.row, state.focus.col); if (old) old.tabIndex = -1;
    state.focus = { row: r, col: c };
    const cell = gridCell(r, c); if (cell) { cell.tabIndex = 0; cell.focus(); }
  }
  $("grid").addEventListener("keydown", (ev) => {
    const td = ev.target.closest("td[data-row]");
    if (!td) return;
    const r = Number(td.dataset.row), c = Number(td.dataset.col);
    const moves = { ArrowDown: [1, 0], ArrowUp: [-1, 0], ArrowRight: [0, 1], ArrowLeft: [0, -1] };
    if (moves[ev.key]) { ev.preventDefault(); moveFocus(r + moves[ev.key][0], c + moves[ev.key][1]); }
    else if (ev.key === "Home") { ev.preventDefault(); moveFocus(r, 0); }
    else if (ev.key === "End") { ev.preventDefault(); moveFocus(r, columns().length - 1); }
    else if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); td.click(); }
  });
  $("grid").addEventListener("focusin", (ev) => {
    const td = ev.target.closest("td[data-row]");
    if (td) { const old = gridCell(state.focus.row, state.focus.col); if (old && old !== td) old.tabIndex = -1; state.focus = { row: Number(td.dataset.row), col: Number(td.dataset.col) }; td.tabIndex = 0; }
  });

  // ---------------------------------------------------------------- details panel
  function openPanel(p, col, r, c) {
    state.lastFocus = { row: r, col: c };
    const body = clear($("panel-body"));
    const prompt = prompts[p];
    if (deltaView()) {
      $("panel-h").textContent = col.key + " on " + prompt.id + ": run B − run A";
      body.appendChild(promptBlock(prompt));
      body.appendChild(el("div", { class: "twocol" }, [[0, col.a], [1, col.b]].map(([run, s]) => el("div", { class: "run-answer", "data-run": run },
        el("h3", { text: "Run " + RUN_NAMES[run] + " (" + runs[run].name + ")" }), answerBlock(run, p, s)))));
    } else {
      const run = viewRun();
      $("panel-h").textContent = settingName(run, col) + " on " + prompt.id;
      body.appendChild(promptBlock(prompt));
      body.appendChild(answerBlock(run, p, col));
      const cell = cellAt(run, p, col);
      if (cell) {
        const d = details(run, cellIndex(run, p, col));
        body.appendChild(candidatesBlock(cell, d));
        body.appendChild(traceBlock(d));
      }
    }
    const panel = $("panel");
    panel.hidden = false;
    $("panel-close").focus();
  }
  function closePanel() {
    $("panel").hidden = true;
    if (state.lastFocus) moveFocus(state.lastFocus.row, state.lastFocus.col);
  }
  $("panel-close").addEventListener("click", closePanel);
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !$("panel").hidden) { ev.preventDefault(); closePanel(); } });
  function promptBlock(prompt) {
    return el("div", {}, el("h3", { text: "Prompt" }), prompt.task ? el("p", { class: "help", text: "Task: " + prompt.task.family + " " + JSON.stringify(prompt.task.params || {}) + (prompt.split ? " · split " + prompt.split : "") }) : null,
      prompt.messages.map((m) => el("div", { class: "msg" }, el("div", { class: "role", text: m.role }), el("div", { text: m.content }))));
  }
  function kv(pairs) {
    const dl = el("dl", { class: "kv" });
    for (const [k, v] of pairs) if (v !== undefined) { dl.appendChild(el("dt", { text: k })); dl.appendChild(el("dd", { text: v })); }
    return dl;
  }
  const yesNo = (v) => v === null || v === undefined ? undefined : v ? "yes" : "no";
  function answerBlock(run, p, s) {
    const cell = cellAt(run, p, s);
    if (!cell) return el("p", { class: "missing", text: "Not run yet." });
    const d = details(run, cellIndex(run, p, s));
    const per = d.per_prompt || {}, comp = d.compute || {};
    return el("div", {}, el("h3", { text: "Chosen answer" }), el("div", { class: "chosen-box", id: "chosen-answer", text: cell.text || "(empty answer)" }),
      kv([["optimised reward", fmt(cell.reward)], ["held-out reward", fmt(cell.holdout)],
        ["strategy's own reward", isNum(cell.strategy_reward) ? fmt(cell.strategy_reward) : undefined],
        ["task reward", isNum(cell.task_reward) ? fmt(cell.task_reward) : undefined],
        ["constraint met", yesNo(cell.constraint_met)], ["fluent", yesNo(cell.fluent)], ["success", yesNo(cell.success)],
        ["finish reason", cell.finish || undefined],
        ["generated tokens (this prompt)", fmt(per.generated_tokens, 0)], ["forward passes (share)", fmt(per.forward_passes, 1)],
        ["reward calls (share)", fmt(per.reward_calls, 2)], ["reward items", fmt(per.reward_items, 0)], ["seconds (share)", fmt(per.seconds, 2)],
        ["prompts in its batched run", comp.batch_size !== undefined ? String(comp.batch_size) : undefined]]));
  }
  function candidatesBlock(cell, d) {
    const box = el("div", { id: "candidates" });
    const cands = d.candidates;
    if (!cands) { box.appendChild(el("p", { class: "help", text: "This file keeps no candidates (written before align-chains kept them)." })); return box; }
    const total = d.candidates_total || cands.length;
    box.appendChild(el("h3", { text: "Candidates: " + total }));
    if (total > cands.length) box.appendChild(el("p", { class: "help", id: "candidates-cut", text: (total - cands.length) + " more candidates not kept (the cell keeps the chosen one and the " + (cands.length - 1) + " best by reward; every reward is in the chart)." }));
    const chosen = cands.find((x) => x.chosen);
    const rewards = (d.candidate_rewards || cands.map((x) => x.reward)).filter(isNum);
    if (chosen) {
      const max = rewards.length ? Math.max(...rewards) : null;
      const why = !isNum(chosen.reward) ? "it is the strategy's answer (its reward is unknown)"
        : isNum(max) && chosen.reward >= max ? "it has the highest reward of the " + rewards.length + " scored candidates (ties go to the earliest)"
        : "not the highest reward: the strategy's own rule chose it" + (chosen.meta && chosen.meta.kind ? " (" + chosen.meta.kind + ")" : "") + "; see its details below";
      box.appendChild(el("p", { id: "chosen-why" }, "Chosen: candidate ", el("strong", { text: "#" + chosen.index }), ", because " + why + "."));
    }
    if (rewards.length > 1) box.appendChild(rewardStrip(d.candidate_rewards || [], chosen ? chosen.index : -1));
    const body = el("tbody");
    for (const x of cands) {
      body.appendChild(el("tr", { class: x.chosen ? "chosen" : null, "data-index": x.index, "data-chosen": x.chosen ? "true" : "false" },
        el("td", { class: "num", text: "#" + x.index + (x.chosen ? " ✓ chosen" : "") }), el("td", { class: "num", text: fmt(x.reward) }),
        el("td", { class: "num", text: String(x.tokens) }), el("td", { text: x.finish_reason }),
        el("td", { class: "text", text: x.text + (x.text_chars ? " … (" + x.text_chars + " characters, cut)" : "") }),
        el("td", { class: "text", text: x.meta ? short(Object.entries(x.meta).map(([k, v]) => k.replace(/_/g, " ") + ": " + (typeof v === "object" && v !== null ? JSON.stringify(v) : String(v))).join(" · "), 240) : "" })));
    }
    box.appendChild(el("div", { class: "table-scroll" }, el("table", { class: "plain", id: "candidate-table" }, el("thead", {}, el("tr", {},
      ["#", "reward", "tokens", "finish", "text", "notes"].map((h) => el("th", { scope: "col", text: h })))), body)));
    return box;
  }
  function rewardStrip(rewards, chosenIndex) {
    const W = 760, H = 64, L = 10, R = 10;
    const vals = rewards.filter(isNum);
    const lo = Math.min(...vals), hi = Math.max(...vals), span = hi - lo || 1;
    const X = (v) => L + (v - lo) / span * (W - L - R);
    const s = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": "Candidate rewards from " + fmt(lo) + " to " + fmt(hi) + "; the chosen one is marked" });
    s.appendChild(svg("line", { class: "axis", x1: L, x2: W - R, y1: 34, y2: 34 }));
    rewards.forEach((v, i) => { if (isNum(v)) s.appendChild(svg("circle", { cx: X(v), cy: 34, r: i === chosenIndex ? 7 : 4, fill: i === chosenIndex ? "var(--good)" : "var(--accent)", "fill-opacity": i === chosenIndex ? 1 : 0.5 })); });
    s.appendChild(svg("text", { x: L, y: 58, text: fmt(lo) })); s.appendChild(svg("text", { x: W - R, y: 58, "text-anchor": "end", text: fmt(hi) }));
    if (chosenIndex >= 0 && isNum(rewards[chosenIndex])) {
      const x = X(rewards[chosenIndex]);
      s.appendChild(svg("text", { x, y: 16, "text-anchor": x > W - 80 ? "end" : x < 80 ? "start" : "middle", text: "chosen " + fmt(rewards[chosenIndex]) }));
    }
    return s;
  }

  // ---------------------------------------------------------------- strategy traces
  function traceBlock(d) {
    const box = el("div", { id: "trace" });
    const trace = d.trace || [];
    const info = Object.assign({}, d.details || {}, d.flags || {});
    box.appendChild(el("h3", { text: "The strategy's own record" }));
    const events = new Set(trace.map((t) => t.event));
    if (events.has("mutation") || events.has("seed") || info.archive) box.appendChild(darwinTrace(trace, info));
    else if (trace.some((t) => "iteration" in t && "chain" in t)) box.appendChild(seaTrace(trace));
    else if (events.has("decision")) box.appendChild(rejectionTrace(trace, info));
    else if ("exploration_samples" in info) box.appendChild(adaptiveTrace(trace, info));
    const plainInfo = Object.entries(info).filter(([k]) => k !== "archive");
    if (plainInfo.length) box.appendChild(kv(plainInfo.map(([k, v]) => [k.replace(/_/g, " "), typeof v === "object" && v !== null ? short(JSON.stringify(v), 400) : String(v)])));
    if (trace.length) {
      const det = el("details", {}, el("summary", { text: "All trace records (" + trace.length + (d.trace_total > trace.length ? " of " + d.trace_total + " kept" : "") + ")" }));
      det.appendChild(recordTable(trace.slice(0, 200)));
      box.appendChild(det);
    } else if (!plainInfo.length) box.appendChild(el("p", { class: "help", text: "No trace in this file for this answer." }));
    return box;
  }
  function recordTable(records) {
    const keys = [...new Set(records.flatMap((r) => Object.keys(r)))].filter((k) => k !== "prompt");
    const body = el("tbody");
    for (const r of records) body.appendChild(el("tr", {}, keys.map((k) => el("td", { class: typeof r[k] === "number" ? "num" : "text",
      text: r[k] === undefined || r[k] === null ? "" : typeof r[k] === "number" ? (Number.isInteger(r[k]) ? String(r[k]) : fmt(r[k])) : typeof r[k] === "object" ? short(JSON.stringify(r[k]), 120) : short(String(r[k]), 160) }))));
    return el("div", { class: "table-scroll" }, el("table", { class: "plain" }, el("thead", {}, el("tr", {}, keys.map((k) => el("th", { scope: "col", text: k })))), body));
  }
  function lineChart(series, xLabel, yLabel, label) {
    const W = 760, H = 220, L = 56, R = 14, T = 12, B = 40;
    const all = series.flatMap((s) => s.points).filter((p) => isNum(p[0]) && isNum(p[1]));
    if (!all.length) return el("p", { class: "help", text: "No values to chart." });
    let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
    let y0 = Math.min(...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
    if (x1 === x0) { x0 -= 1; x1 += 1; } if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
    const X = (v) => L + (v - x0) / (x1 - x0) * (W - L - R), Y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
    const s = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": label });
    s.appendChild(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    s.appendChild(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    for (const v of [y0, (y0 + y1) / 2, y1]) s.appendChild(svg("text", { x: L - 5, y: Y(v) + 4, "text-anchor": "end", text: fmt(v, 2) }));
    for (const v of [x0, x1]) s.appendChild(svg("text", { x: X(v), y: H - B + 16, "text-anchor": "middle", text: fmt(v, 0) }));
    s.appendChild(svg("text", { x: (L + W) / 2, y: H - 6, "text-anchor": "middle", class: "muted", text: xLabel }));
    s.appendChild(svg("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", class: "muted", transform: "rotate(-90 12 " + (T + H - B) / 2 + ")", text: yLabel }));
    series.forEach((ser, i) => {
      const pts = ser.points.filter((p) => isNum(p[0]) && isNum(p[1]));
      const col = PALETTE[i % 10];
      if (pts.length > 1) s.appendChild(svg("polyline", { fill: "none", stroke: col, "stroke-width": 2, "stroke-dasharray": ser.dashed ? "5 4" : null, points: pts.map((p) => X(p[0]) + "," + Y(p[1])).join(" ") }));
      for (const p of pts) { const m = marker(SHAPES[i % 10], X(p[0]), Y(p[1]), 4, col, col); m.appendChild(svg("title", { text: ser.name + ": " + fmt(p[1]) + " at " + xLabel + " " + fmt(p[0], 0) })); s.appendChild(m); }
    });
    return el("div", {}, s, el("div", { class: "legend" }, series.map((ser, i) => el("span", {}, svgLegend(SHAPES[i % 10], PALETTE[i % 10]), ser.name))));
  }
  function darwinTrace(trace, info) {
    const box = el("div", { class: "darwin" });
    if (info.archive) {
      box.appendChild(el("h3", { text: "Archive of instructions (" + info.archive.length + ")" }));
      const body = el("tbody");
      for (const a of info.archive) body.appendChild(el("tr", {}, el("td", { class: "num", text: fmt(a.reward) }), el("td", { class: "text", text: a.instruction })));
      box.appendChild(el("table", { class: "plain", id: "darwin-archive" }, el("thead", {}, el("tr", {}, el("th", { text: "reward" }), el("th", { text: "instruction" }))), body));
    }
    const mutations = trace.filter((t) => t.event === "mutation");
    if (mutations.length) box.appendChild(el("details", {}, el("summary", { text: "Mutated instructions (" + mutations.length + ")" }),
      recordTable(mutations.map((m) => ({ cycle: m.cycle, mutation: m.mutation, parsed: String(m.parsed), instruction: m.instruction })))));
    const scores = trace.filter((t) => t.event === "score");
    if (scores.length) {
      const bySeg = new Map();
      for (const sc of scores) { const k = sc.cycle * 1000 + sc.segment; bySeg.set(k, Math.max(bySeg.has(k) ? bySeg.get(k) : -Infinity, isNum(sc.reward) ? sc.reward : -Infinity)); }
      const keys = [...bySeg.keys()].sort((a, b) => a - b);
      box.appendChild(el("h3", { text: "Best candidate reward at each scoring" }));
      box.appendChild(lineChart([{ name: "best reward", points: keys.map((k, i) => [i + 1, bySeg.get(k)]).filter((p) => isFinite(p[1])) }], "scoring (every m tokens, cycles in order)", "reward", "DARWIN best reward per scoring"));
    }
    const repl = trace.filter((t) => t.event === "replace");
    box.appendChild(el("h3", { text: "Replacements (" + repl.length + ")" }));
    if (repl.length) box.appendChild(recordTable(repl.map((t) => ({ cycle: t.cycle, segment: t.segment, row: t.row, "copied from row": t.source, "reward before": t.reward, "source reward": t.source_reward }))));
    else box.appendChild(el("p", { class: "help", text: "No candidate was replaced." }));
    const ends = trace.filter((t) => t.event === "cycle_end");
    if (ends.length) box.appendChild(kv(ends.map((t) => ["cycle " + t.cycle, "best this cycle " + fmt(t.reward) + " · best so far " + fmt(t.best_reward)])));
    return box;
  }
  function seaTrace(trace) {
    const box = el("div", { class: "sea" });
    const chains = [...new Set(trace.map((t) => t.chain))].sort((a, b) => a - b);
    const series = [];
    for (const c of chains) {
      const own = trace.filter((t) => t.chain === c).sort((a, b) => a.iteration - b.iteration);
      series.push({ name: "chain " + c + " reward", points: own.map((t) => [t.iteration, t.hard_reward]) });
      if (own.some((t) => isNum(t.soft_reward))) series.push({ name: "chain " + c + " soft reward", dashed: true, points: own.map((t) => [t.iteration, t.soft_reward]) });
    }
    box.appendChild(el("h3", { text: "Reward per iteration" }));
    box.appendChild(lineChart(series, "iteration", "reward", "SEA reward per iteration"));
    const guarded = trace.filter((t) => t.guard);
    box.appendChild(el("p", { class: "help", text: guarded.length + " of " + trace.length + " iterates were excluded by the fluency guard." }));
    return box;
  }
  function rejectionTrace(trace, info) {
    const box = el("div", { class: "rejection" });
    const decisions = trace.filter((t) => t.event === "decision");
    box.appendChild(el("h3", { text: "Early rejection: " + decisions.length + " decision(s), " + (info.rejected !== undefined ? info.rejected + " of " + info.started + " candidates dropped" : "") }));
    box.appendChild(recordTable(decisions.map((t) => ({ "after tokens": t.step, candidates: t.rows, kept: t.kept, dropped: t.rows - t.kept, "kept if partial ≥": t.threshold, "best partial": t.best_partial }))));
    if (decisions.length) box.appendChild(lineChart([{ name: "candidates alive", points: [[0, decisions[0].rows], ...decisions.map((t) => [t.step, t.kept])] }], "tokens decoded", "candidates", "Candidates alive after each decision"));
    return box;
  }
  function adaptiveTrace(trace, info) {
    const box = el("div", { class: "adaptive" });
    box.appendChild(el("h3", { text: "Adaptive allocation" }));
    box.appendChild(el("p", { text: "Explored " + info.exploration_samples + " sample(s) (rewards " + (info.exploration_rewards || []).map((v) => fmt(v)).join(", ") +
      "), then allocated " + info.extra_samples + " more to this prompt." }));
    const stage = (k) => trace.filter((t) => t.stage === k).map((t, i) => [i + 1, t.reward]);
    if (trace.some((t) => "stage" in t)) box.appendChild(lineChart([{ name: "exploration rewards", points: stage(1) }, { name: "allocated samples' rewards", points: stage(2) }], "sample", "reward", "Adaptive Best-of-N rewards by stage"));
    return box;
  }

  // ---------------------------------------------------------------- controls
  function option(sel, val, text, selected) { sel.appendChild(el("option", { value: val, text, selected })); }
  function fillControls() {
    const y = $("curve-y");
    const available = Object.keys(SUMMARY_VALUES).filter((k) => runs.some((r) => r.summary.some((row) => row && row[k])));
    if (!available.includes(state.curveY)) state.curveY = available[0] || "reward";
    for (const k of available) option(y, k, SUMMARY_VALUES[k], k === state.curveY);
    for (const [k, label] of Object.entries(COMPUTE)) option($("curve-x"), k, label, k === state.curveX);
    if (runs.length > 1) {
      $("view-label").hidden = false;
      runs.forEach((run, r) => option($("view"), String(r), "Run " + RUN_NAMES[r] + ": " + run.name, r === 0));
      if (core.comparison && core.comparison.settings.length) option($("view"), "delta", "B − A per prompt (shared settings)", false);
      const pr = el("label", {}, "Run ", el("select", { id: "pair-run", onchange: (e) => { state.pairRun = Number(e.target.value); resetPair(); fillPairControls(); renderPair(); refreshFilters(); renderMatrix(); } },
        runs.map((run, r) => el("option", { value: r, text: RUN_NAMES[r] + ": " + run.name }))));
      $("pair").querySelector(".controls").prepend(pr);
    }
    resetPair();
    fillPairControls();
    const metrics = runs[0].metrics.length ? runs[0].metrics : ["reward"];
    state.metric = metrics[0];
    for (const m of metrics) option($("metric"), m, metricName(m), m === state.metric);
    syncSort();
    const fs = $("filters");
    for (const [id, label] of FILTERS) {
      fs.appendChild(el("label", { "data-filter": id }, el("input", { type: "radio", name: "filter", value: id, checked: id === state.filter,
        onchange: () => { state.filter = id; state.page = 0; renderMatrix(); } }), " ", el("span", { class: "flabel", text: label })));
    }
    refreshFilters();
  }
  function resetPair() {
    const run = runs[state.pairRun];
    const plain = run.settings.findIndex((s) => s.key === "plain");
    state.pairB = plain >= 0 ? plain : Math.min(1, run.settings.length - 1);
    state.pairA = run.settings.length - 1 === state.pairB ? 0 : run.settings.length - 1;
    if (!run.metrics.includes(state.pairMetric)) state.pairMetric = run.metrics[0] || null;
  }
  function refreshFilters() {
    for (const label of $("filters").querySelectorAll("label")) {
      const id = label.dataset.filter, why = filterAvailable(id);
      label.classList.toggle("disabled", !!why);
      label.title = why;
      if (id === "abeatsb") label.querySelector(".flabel").textContent = settingName(state.pairRun, state.pairA) + " beats " + settingName(state.pairRun, state.pairB) + " (" + metricName(state.pairMetric) + ")";
    }
  }
  function syncSort() {
    const sel = clear($("sort"));
    option(sel, "order", "prompt order", state.sort === "order");
    option(sel, "id", "prompt id", state.sort === "id");
    columns().forEach((col, i) => option(sel, "col:" + i, (deltaView() ? "Δ of " : "") + col.key, state.sort === "col:" + i));
    if (!deltaView()) option(sel, "diff", "difference A − B (paired comparison's settings)", state.sort === "diff");
    $("sort-dir").setAttribute("aria-pressed", state.reversed ? "true" : "false");
  }
  $("curve-y").addEventListener("change", (e) => { state.curveY = e.target.value; renderCurves(); });
  $("curve-x").addEventListener("change", (e) => { state.curveX = e.target.value; renderCurves(); });
  $("pair-a").addEventListener("change", (e) => { state.pairA = Number(e.target.value); renderPair(); refreshFilters(); renderMatrix(); });
  $("pair-b").addEventListener("change", (e) => { state.pairB = Number(e.target.value); renderPair(); refreshFilters(); renderMatrix(); });
  $("pair-metric").addEventListener("change", (e) => { state.pairMetric = e.target.value; renderPair(); refreshFilters(); renderMatrix(); });
  $("view").addEventListener("change", (e) => { state.view = e.target.value; state.sort = "order"; state.page = 0; syncSort(); refreshFilters(); renderMatrix(); });
  $("metric").addEventListener("change", (e) => { state.metric = e.target.value; renderMatrix(); });
  $("sort").addEventListener("change", (e) => { state.sort = e.target.value; state.page = 0; renderMatrix(); });
  $("sort-dir").addEventListener("click", () => { state.reversed = !state.reversed; syncSort(); renderMatrix(); });
  let searchTimer = null;
  $("search").addEventListener("input", (e) => { clearTimeout(searchTimer); searchTimer = setTimeout(() => { state.search = e.target.value; state.page = 0; renderMatrix(); }, 120); });

  renderHeader();
  fillControls();
  renderSummary();
  renderCurves();
  renderPair();
  renderRuns();
  renderMatrix();
  document.documentElement.dataset.ready = "1";
  window.reportReadyAt = performance.now();
})();
