"""The console's one stylesheet and one script, served by the exporter itself (``/static/...``):
no external asset, so the pages work offline and under a strict Content-Security-Policy."""

from __future__ import annotations

import hashlib

# Colours: text on every background here has a contrast of at least 4.5:1 (WCAG AA), and a
# result is never told by colour alone (the badge says OK / FAILED).
CSS = """
:root { --fg:#1b1f24; --muted:#57606a; --bg:#fff; --line:#d0d7de; --head:#f6f8fa; --ok:#116329; --ok-bg:#dafbe1;
  --bad:#a40e26; --bad-bg:#ffebe9; --warn:#7d4e00; --warn-bg:#fff8c5; --link:#0550ae; --smtp:#0969da;
  --mailbox:#1a7f37; --wait:#8c959f; }
@media (prefers-color-scheme: dark) {
  :root { --fg:#e6edf3; --muted:#9198a1; --bg:#0d1117; --line:#30363d; --head:#161b22; --ok:#56d364; --ok-bg:#12261e;
    --bad:#ff7b72; --bad-bg:#2d1214; --warn:#e3b341; --warn-bg:#2b2111; --link:#79c0ff; --smtp:#58a6ff;
    --mailbox:#3fb950; --wait:#6e7681; }
}
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color:var(--fg);
  background:var(--bg); }
header { display:flex; gap:1em; align-items:baseline; padding:.6em 1.2em; border-bottom:1px solid var(--line);
  background:var(--head); }
header nav { margin-left:auto; display:flex; gap:1.2em; }
main { padding:0 1.2em; }
a { color:var(--link); }
h1 { font-size:1.4em; margin:.6em 0; } h2 { font-size:1.15em; margin:1.2em 0 .4em; } h3 { font-size:1em; }
.muted { color:var(--muted); }
.sr { position:absolute; width:1px; height:1px; overflow:hidden; clip:rect(0 0 0 0); }
.badge { display:inline-block; padding:0 .5em; border-radius:1em; font-size:.85em; font-weight:600; }
.badge.ok { color:var(--ok); background:var(--ok-bg); } .badge.bad { color:var(--bad); background:var(--bad-bg); }
.badge.pending { color:var(--muted); background:var(--head); }
.bad { color:var(--bad); } .warn { color:var(--warn); }
.banner { margin:1em 0; padding:.6em 1em; border:1px solid var(--bad); border-left-width:6px;
  background:var(--bad-bg); }
.banner h2 { margin:.2em 0; color:var(--bad); } .banner code { white-space:pre-wrap; word-break:break-word; }
.counts { display:flex; gap:.8em; margin:1em 0; flex-wrap:wrap; }
.count { border:1px solid var(--line); border-radius:6px; padding:.3em .9em; min-width:7em; }
.count dt { color:var(--muted); font-size:.85em; } .count dd { margin:0; font-size:1.6em; font-weight:600; }
.count.bad { border-color:var(--bad); background:var(--bad-bg); } .count.bad dd { color:var(--bad); }
.count.warn dd { color:var(--warn); }
.filter { margin:1em 0 .6em; } .filter input { font:inherit; padding:.3em .5em; width:28em; max-width:70vw;
  color:var(--fg); background:var(--bg); border:1px solid var(--line); border-radius:4px; }
table { border-collapse:collapse; }
#tasks { width:100%; table-layout:auto; }
#tasks th, #tasks td { text-align:left; padding:.35em .6em; border-bottom:1px solid var(--line); white-space:nowrap;
  vertical-align:top; }
#tasks thead th { background:var(--head); position:sticky; top:0; }
#tasks tr.failing { background:var(--bad-bg); }
#tasks td.error { white-space:normal; min-width:18em; max-width:40em; }
#tasks td.error span { display:-webkit-box; -webkit-line-clamp:2; -webkit-box-orient:vertical; overflow:hidden; }
.num { text-align:right; font-variant-numeric:tabular-nums; }
.facts th { text-align:left; color:var(--muted); font-weight:normal; padding:.15em 1em .15em 0; vertical-align:top; }
.facts td { padding:.15em 0; } dl.about { display:grid; grid-template-columns:max-content 1fr; gap:.2em 1.2em; }
dl.about dt { color:var(--muted); } dl.about dd { margin:0; }
.error-text { color:var(--bad); word-break:break-word; }
details { border:1px solid var(--line); border-radius:6px; margin:.4em 0; padding:.3em .8em; }
details > summary { cursor:pointer; }
.probe-body { display:flex; flex-wrap:wrap; gap:1em 2em; align-items:flex-start; margin:.6em 0; }
.fresh { border:2px solid var(--link); border-radius:6px; padding:0 1em .6em; }
.probe-now button { font:inherit; font-weight:600; padding:.35em 1.1em; border-radius:6px; border:1px solid var(--link);
  color:#fff; background:#0550ae; cursor:pointer; } .probe-now button:disabled { opacity:.7; cursor:progress; }
table.transcript td { padding:.05em .6em .05em 0; vertical-align:top; }
table.transcript th { text-align:left; color:var(--muted); font-weight:normal; }
table.transcript tr.sent code { color:var(--smtp); }
table.transcript code { white-space:pre-wrap; word-break:break-all; }
pre.letter { background:var(--head); padding:.5em; overflow-x:auto; }
svg text { fill:var(--fg); font-size:11px; } svg text.axis, svg text.value { fill:var(--muted); }
svg rect.smtp { fill:var(--smtp); } svg rect.mailbox { fill:var(--mailbox); } svg rect.wait { fill:var(--wait); }
svg rect.failed { fill:var(--bad); } svg line.tick { stroke:var(--line); }
svg polyline.spark { fill:none; stroke:var(--smtp); stroke-width:1.5; } svg circle.spark { fill:var(--smtp); }
.rendered { margin-top:1.5em; font-size:.85em; }
.spark-row { display:flex; gap:1em; align-items:center; } table.transcript td.num { white-space:nowrap; }
"""

JS = """
'use strict';
(function () {
  // Times: "2025-01-01 10:00:00Z" gains how long ago it was.
  function ago(seconds) {
    var s = Math.max(0, Math.round(seconds));
    if (s < 90) return s + ' s ago';
    if (s < 5400) return Math.round(s / 60) + ' min ago';
    if (s < 172800) return (s / 3600).toFixed(1) + ' h ago';
    return Math.round(s / 86400) + ' days ago';
  }
  function ages(root) {
    var now = Date.now() / 1000;
    root.querySelectorAll('time[data-ago]').forEach(function (t) {
      if (!t.dataset.abs) t.dataset.abs = t.textContent;
      var since = ago(now - Number(t.getAttribute('datetime')));
      if (t.dataset.ago === 'short') { t.textContent = since; t.title = t.dataset.abs; }
      else t.textContent = t.dataset.abs + ' (' + since + ')';
    });
  }
  // The filter: rows whose device, task, reason or hosts contain what was typed; kept in the URL.
  var input = document.getElementById('filter');
  function filter() {
    if (!input) return;
    var q = input.value.trim().toLowerCase(), shown = 0, rows = document.querySelectorAll('#tasks tbody tr');
    rows.forEach(function (row) {
      var hit = !q || (row.dataset.search || '').indexOf(q) >= 0;
      row.hidden = !hit; if (hit) shown++;
    });
    var out = document.getElementById('shown');
    if (out) out.textContent = shown + ' of ' + rows.length + ' shown';
  }
  function url() {
    var u = new URL(location.href);
    if (input && input.value) u.searchParams.set('q', input.value); else u.searchParams.delete('q');
    return u;
  }
  if (input) {
    input.addEventListener('input', function () { filter(); history.replaceState(null, '', url()); });
    input.form.addEventListener('submit', function (e) { e.preventDefault(); });
  }
  // Refresh: fetch the page again and swap the live part; the filter box (outside it) keeps focus.
  var every = Number(document.body.dataset.refresh || 0);
  function refresh() {
    fetch(url(), {credentials: 'same-origin', cache: 'no-store'}).then(function (r) {
      if (!r.ok) throw new Error('HTTP ' + r.status);
      return r.text();
    }).then(function (text) {
      var fresh = new DOMParser().parseFromString(text, 'text/html');
      document.querySelectorAll('[data-live]').forEach(function (old) {
        var now = fresh.getElementById(old.id);
        if (now) old.replaceWith(document.adoptNode(now));
      });
      filter(); ages(document);
      var state = document.getElementById('refresh-state');
      if (state) { state.className = ''; state.textContent = ''; }
    }).catch(function (e) {
      var state = document.getElementById('refresh-state');
      if (state) { state.className = 'bad'; state.textContent = 'refresh failed at ' +
        new Date().toISOString().slice(11, 19) + 'Z (' + e.message + '): this page may be stale'; }
    });
  }
  if (every > 0) setInterval(function () { if (!document.hidden) refresh(); }, every * 1000);
  // Probe now: say that it runs (it may take until the email timeout).
  document.querySelectorAll('form.probe-now').forEach(function (form) {
    form.addEventListener('submit', function () {
      var button = form.querySelector('button');
      setTimeout(function () { button.disabled = true; button.textContent = button.dataset.busy; }, 0);
    });
  });
  filter(); ages(document);
})();
"""

# An envelope, so that the browser does not ask for /favicon.ico (outside a route prefix).
FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><rect x="1" y="3" width="14" height="10" rx="1" '
    'fill="#0969da"/><path d="M1 4l7 5 7-5" fill="none" stroke="#fff" stroke-width="1.5"/></svg>'
)

ASSET_VERSION = hashlib.sha256((CSS + JS + FAVICON).encode()).hexdigest()[
    :12
]  # in the URLs: a new release is fetched anew
