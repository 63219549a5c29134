# -*- test-case-name: tests.web.test_statuspage -*-
"""
The status page's two static assets, served by L{ollama_proxy.web.status}:
the HTML shell (with its stylesheet inline, allowed by hash in L{CSP}) and
the script that polls C{status.json} and draws the page.

No framework, no build step, no external asset: the page must work on a
machine without internet access and under a strict C{Content-Security-
Policy}.  The script builds every element with the DOM API (never
C{innerHTML}), so text from the JSON, backend error messages included, is
never parsed as markup.
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#5b6570;--bg:#f6f7f9;--card:#fff;
--line:#d9dde3;--ok:#1a7f37;--bad:#cf222e;--warn:#9a6700;--accent:#0969da}
@media (prefers-color-scheme:dark){:root{--fg:#e6edf3;--muted:#9da7b3;--bg:#0d1117;
--card:#161b22;--line:#30363d;--ok:#3fb950;--bad:#f85149;--warn:#d29922;--accent:#58a6ff}}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.25rem 1rem;padding:1rem 1rem .5rem}
h1{font-size:1.25rem;margin:0}
h2{font-size:1rem;margin:1.25rem 0 .5rem}
main{padding:0 1rem 2rem;max-width:72rem}
.muted{color:var(--muted)}
.pill{display:inline-block;padding:.05rem .55rem;border-radius:999px;font-size:.8rem;
font-weight:600;border:1px solid currentColor}
.up{color:var(--ok)}.down{color:var(--bad)}.unknown{color:var(--warn)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(9.5rem,1fr));gap:.6rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:.6rem .8rem}
.card b{display:block;font-size:1.5rem;font-variant-numeric:tabular-nums}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(17rem,1fr));gap:.6rem}
.chart svg{display:block;width:100%;height:70px}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{text-align:left;padding:.45rem .6rem;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:.8rem;color:var(--muted);font-weight:600;white-space:nowrap}
td.num{text-align:right;white-space:nowrap}
.models{font-size:.85rem;color:var(--muted);max-width:24rem}
.models span{white-space:nowrap}.when{white-space:nowrap}
.reason{font-size:.8rem;color:var(--muted);max-width:18rem;overflow-wrap:anywhere}
#error{color:var(--bad)}
@media (max-width:40rem){body{font-size:14px}.card b{font-size:1.2rem}
th,td{padding:.35rem .4rem}}
"""

_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode("ascii")

CSP = (
    "default-src 'none'; script-src 'self'; connect-src 'self'; "
    f"style-src 'sha256-{_STYLE_HASH}'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
).encode("ascii")
"""Only this origin's script and data, and the page's own style by hash."""

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>ollama-proxy status</title>
<style>{STYLE}</style>
<script src="status.js" defer></script>
</head>
<body>
<header>
<h1>ollama-proxy</h1>
<span id="state" class="pill unknown">loading</span>
<span class="muted" id="about"></span>
<span class="muted" id="error" role="alert"></span>
</header>
<main>
<section class="cards" aria-label="totals">
<div class="card"><span class="muted">requests</span><b id="requests">–</b></div>
<div class="card"><span class="muted">errors (5xx)</span><b id="errors">–</b></div>
<div class="card"><span class="muted">streams now</span><b id="streams">–</b></div>
<div class="card"><span class="muted">uptime</span><b id="uptime">–</b></div>
<div class="card"><span class="muted">workers</span><b id="workers">–</b></div>
</section>
<h2>Last minutes</h2>
<section class="charts">
<div class="card chart"><span class="muted">requests / min</span>
<span class="muted" id="rate-now"></span><svg id="rate" viewBox="0 0 300 70" preserveAspectRatio="none"
role="img" aria-label="requests per minute"></svg></div>
<div class="card chart"><span class="muted">errors / min</span>
<span class="muted" id="errors-now"></span><svg id="error-rate" viewBox="0 0 300 70"
preserveAspectRatio="none" role="img" aria-label="errors per minute"></svg></div>
</section>
<h2>Backends</h2>
<div class="scroll">
<table>
<thead><tr><th>backend</th><th>state</th><th id="circuit-head" hidden>circuit</th>
<th>checked</th><th>latency</th><th>requests</th><th>errors</th><th>in flight</th>
<th>models</th></tr></thead>
<tbody id="backends"></tbody>
</table>
</div>
<p class="muted">Updated every 2 s from <a href="status.json">status.json</a>.
Prometheus: <code>/metrics</code>.</p>
</main>
</body>
</html>
""".encode("utf-8")

SCRIPT = b"""\
"use strict";
(function () {
  var SVG = "http://www.w3.org/2000/svg";
  var PERIOD = 2000;

  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function duration(s) {
    if (s === null || s === undefined) { return "\\u2013"; }
    if (s < 60) { return Math.round(s) + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min"; }
    return Math.floor(s / 86400) + " d " + Math.floor(s % 86400 / 3600) + " h";
  }

  function summary(values) {
    if (!values.length) { return " \u2013 (collecting)"; }
    var max = Math.max.apply(null, values);
    var now = values[values.length - 1];
    return " now " + (Math.round(now * 10) / 10) + " \u00b7 max " + (Math.round(max * 10) / 10);
  }

  function chart(svg, values, color) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var max = 1;
    values.forEach(function (v) { if (v > max) { max = v; } });
    var n = Math.max(values.length - 1, 1);
    var points = values.map(function (v, i) {
      return (i * 300 / n).toFixed(1) + "," + (66 - v / max * 60).toFixed(1);
    });
    var base = document.createElementNS(SVG, "line");
    base.setAttribute("x1", "0"); base.setAttribute("x2", "300");
    base.setAttribute("y1", "66"); base.setAttribute("y2", "66");
    base.setAttribute("stroke", "currentColor"); base.setAttribute("stroke-opacity", "0.25");
    svg.appendChild(base);
    if (values.length < 2) { return; }
    var area = document.createElementNS(SVG, "polygon");
    area.setAttribute("points", "0,66 " + points.join(" ") + " 300,66");
    area.setAttribute("fill", color); area.setAttribute("fill-opacity", "0.15");
    svg.appendChild(area);
    var line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", points.join(" "));
    line.setAttribute("fill", "none"); line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "2"); line.setAttribute("vector-effect", "non-scaling-stroke");
    svg.appendChild(line);
  }

  function stateOf(b) {
    if (b.reachable === true) { return ["up", "up"]; }
    if (b.reachable === false) { return ["down", "down"]; }
    return ["unknown", "unknown"];
  }

  function row(b, circuits) {
    var tr = el("tr");
    tr.setAttribute("data-backend", b.name);
    var name = el("td");
    name.appendChild(el("div", "", b.name));
    name.appendChild(el("div", "muted", b.host));
    tr.appendChild(name);
    var st = stateOf(b);
    var state = el("td");
    var pill = el("span", "pill " + st[0], st[1]);
    pill.setAttribute("data-state", st[0]);
    state.appendChild(pill);
    if (b.state !== "ok") { state.appendChild(el("div", "reason", b.state)); }
    tr.appendChild(state);
    if (circuits) { tr.appendChild(el("td", "", b.circuit === null ? "\\u2013" : b.circuit)); }
    tr.appendChild(el("td", "when", b.checked_seconds_ago === null ? "never"
                                     : duration(b.checked_seconds_ago) + " ago"));
    tr.appendChild(el("td", "num", b.latency_ms === null ? "\\u2013" : b.latency_ms + " ms"));
    tr.appendChild(el("td", "num", b.requests));
    tr.appendChild(el("td", "num", b.errors));
    tr.appendChild(el("td", "num", b.in_flight));
    var models = el("td", "models", b.models.length ? "" : "none");
    b.models.forEach(function (m, i) {
      models.appendChild(el("span", "", m + (i < b.models.length - 1 ? ", " : "")));
      models.appendChild(document.createTextNode(" "));
    });
    tr.appendChild(models);
    return tr;
  }

  function render(s) {
    $("error").textContent = "";
    var state = $("state");
    state.textContent = s.draining ? "draining" : (s.ready ? "ready" : "not ready");
    state.className = "pill " + (s.draining ? "unknown" : (s.ready ? "up" : "down"));
    $("about").textContent = "v" + s.version + " \\u00b7 Ollama API " + s.ollama_version +
      " \\u00b7 pid " + s.pid + " \\u00b7 since " + s.started;
    $("requests").textContent = s.totals.requests;
    $("errors").textContent = s.totals.errors;
    $("streams").textContent = s.totals.active_streams;
    $("uptime").textContent = duration(s.uptime_seconds);
    $("workers").textContent = s.workers;
    var h = s.history;
    chart($("rate"), h.requests_per_minute, "#0969da");
    chart($("error-rate"), h.errors_per_minute, "#cf222e");
    $("rate-now").textContent = summary(h.requests_per_minute);
    $("errors-now").textContent = summary(h.errors_per_minute);
    var circuits = s.backends.some(function (b) { return b.circuit !== null; });
    $("circuit-head").hidden = !circuits;
    var body = $("backends");
    while (body.firstChild) { body.removeChild(body.firstChild); }
    s.backends.forEach(function (b) { body.appendChild(row(b, circuits)); });
    document.body.setAttribute("data-updated", String(Date.now()));
  }

  function poll() {
    fetch("status.json", {cache: "no-store", credentials: "same-origin"})
      .then(function (r) {
        if (!r.ok) { throw new Error("status.json answered " + r.status); }
        return r.json();
      })
      .then(render)
      .catch(function (e) { $("error").textContent = String(e.message || e); })
      .then(function () { setTimeout(poll, PERIOD); });
  }

  poll();
})();
"""
