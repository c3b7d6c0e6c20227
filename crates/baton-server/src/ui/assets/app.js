// Baton dashboard: the few things pages do in the browser. Everything works
// without this script except live refresh and charts.
(function () {
  'use strict';

  // Live regions refresh by polling; never while the keyboard is inside one,
  // so a refresh does not take focus away from a button being used.
  document.addEventListener('htmx:beforeRequest', function (event) {
    var target = event.detail && event.detail.elt;
    if (target && target.contains(document.activeElement) && document.activeElement !== document.body) {
      event.preventDefault();
    }
  });

  var drawn = [];

  // Charts follow their container's width (a phone turned, a window resized).
  window.addEventListener('resize', function () {
    drawn.forEach(function (d) {
      d.plot.setSize({ width: Math.max(240, d.el.clientWidth), height: 240 });
    });
  });

  function draw(id, title, series, data, opts) {
    var el = document.getElementById(id);
    if (!el || typeof uPlot === 'undefined') return;
    var width = Math.max(240, el.clientWidth || 600);
    var plot = new uPlot(Object.assign({
      title: title,
      width: width,
      height: 240,
      series: series,
      axes: [{}, { size: 70 }],
    }, opts || {}), data, el);
    drawn.push({ plot: plot, el: el });
  }

  function charts() {
    var node = document.getElementById('series-data');
    if (!node) return;
    var s = JSON.parse(node.textContent);
    var xs = s.points.map(function (p) { return Date.parse(p.at) / 1000; });
    var val = function (k) { return s.points.map(function (p) { return p[k] == null ? null : p[k]; }); };
    var flat = function (v) { return xs.map(function () { return v == null ? null : v; }); };
    var b = s.baseline || {};
    if (s.scope === 'stage') {
      draw('chart-flow', 'Arrivals and claims per minute', [
        {},
        { label: 'arrivals', stroke: '#0b57b0', width: 2 },
        { label: 'claims', stroke: '#106b2f', width: 2 },
      ], [xs, val('arrivals'), val('claims')]);
      return;
    }
    var base = b.accept_latency_ms ? b.accept_latency_ms.centre : null;
    draw('chart-latency', 'Accept latency (ms)', [
      {},
      { label: 'p50', stroke: '#0b57b0', width: 2 },
      { label: 'p95', stroke: '#b35c00', width: 2 },
      { label: 'p99', stroke: '#a1131c', width: 2 },
      { label: 'baseline mean', stroke: '#4a5361', dash: [6, 4], width: 2 },
    ], [xs, val('p50_ms'), val('p95_ms'), val('p99_ms'), flat(base)]);
    if (s.scope === 'edge') {
      var pct = function (v) { return v == null ? null : v * 100; };
      draw('chart-success', 'Success rate (%)', [
        {},
        { label: 'success %', stroke: '#106b2f', width: 2 },
        { label: 'baseline', stroke: '#4a5361', dash: [6, 4], width: 2 },
      ], [xs, val('success_rate').map(pct), flat(b.success_rate ? pct(b.success_rate.centre) : null)],
      { scales: { y: { range: [0, 100] } } });
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', charts);
  } else {
    charts();
  }
})();
