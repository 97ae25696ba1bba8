// The continuation browser of report.html: reads the JSON block #cb-data, renders one page of
// prompts at a time (each prompt a table: samples down, cells across). Model text only ever
// goes through textContent, never the HTML parser. Runs under a CSP that allows this script alone.
(function () {
  "use strict";
  var PAGE = 20;
  var root = document.getElementById("cb");
  var source = document.getElementById("cb-data");
  if (!root || !source) { return; }
  var data = JSON.parse(source.textContent);
  var nScores = data.scores.length;
  var byPrompt = data.prompts.map(function () { return []; });
  data.rows.forEach(function (r) { byPrompt[r[0]].push(r); });
  var $ = function (id) { return document.getElementById(id); };
  var state = { page: 0, started: false, timer: null };

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function fmt(v, digits) { return v === null ? "–" : v.toFixed(digits); }

  function cellBoxes() {
    var box = $("cb-cells");
    data.cells.forEach(function (c, i) {
      var label = el("label", "cb-cell cb-" + c.experiment);
      var input = el("input");
      input.type = "checkbox"; input.checked = true; input.value = String(i);
      input.addEventListener("change", function () { state.page = 0; render(); });
      label.appendChild(input);
      label.appendChild(document.createTextNode(" " + c.label));
      box.appendChild(label);
    });
  }

  function options() {
    var checked = Array.prototype.filter.call(
      document.querySelectorAll("#cb-cells input"), function (i) { return i.checked; });
    var cells = checked.map(function (i) { return Number(i.value); });
    var lo = parseFloat($("cb-min").value), hi = parseFloat($("cb-max").value);
    return { q: $("cb-q").value.trim().toLowerCase(), subset: $("cb-subset").value,
             cells: cells, score: Number($("cb-score").value), sort: $("cb-sort").value,
             lo: isNaN(lo) ? null : lo, hi: isNaN(hi) ? null : hi };
  }

  function passes(row, o) {
    if (o.lo === null && o.hi === null) { return true; }
    var v = row[4 + o.score];
    if (v === null) { return false; }
    return (o.lo === null || v >= o.lo) && (o.hi === null || v <= o.hi);
  }

  // The prompts that match, each with its continuations in the chosen cells and score range.
  function select(o) {
    var visible = {};
    o.cells.forEach(function (c) { visible[c] = true; });
    var out = [];
    data.prompts.forEach(function (p, i) {
      if (o.subset && p[1] !== o.subset) { return; }
      if (o.q && (p[2].toLowerCase().indexOf(o.q) < 0 && p[0].toLowerCase().indexOf(o.q) < 0)) {
        return;
      }
      var rows = byPrompt[i].filter(function (r) { return visible[r[1]] && passes(r, o); });
      if (!rows.length) { return; }
      var sums = {}, counts = {}, total = 0, n = 0;
      rows.forEach(function (r) {
        var v = r[4 + o.score];
        if (v === null) { return; }
        sums[r[1]] = (sums[r[1]] || 0) + v; counts[r[1]] = (counts[r[1]] || 0) + 1;
        total += v; n += 1;
      });
      var means = Object.keys(sums).map(function (c) { return sums[c] / counts[c]; });
      out.push({ index: i, prompt: p, rows: rows, mean: n ? total / n : null,
                 spread: means.length ? Math.max.apply(null, means) - Math.min.apply(null, means)
                                      : null });
    });
    var key = { "score-desc": "mean", "score-asc": "mean", "spread-desc": "spread" }[o.sort];
    if (key) {
      var sign = o.sort === "score-asc" ? 1 : -1;
      out.sort(function (a, b) {
        if (a[key] === null) { return 1; }
        if (b[key] === null) { return -1; }
        return sign * (a[key] - b[key]) || a.index - b.index;
      });
    }
    return out;
  }

  function promptBlock(item, o) {
    var box = el("div", "cb-prompt");
    box.dataset.promptId = item.prompt[0];
    box.dataset.mean = item.mean === null ? "" : String(item.mean);
    var head = el("div", "prompt");
    head.appendChild(el("span", "label", item.prompt[1] + " · " + item.prompt[0]));
    head.appendChild(el("span", "cb-prompt-text", item.prompt[2]));
    head.appendChild(el("span", "cb-mean", " mean " + data.scores[o.score][1] + " " +
                        fmt(item.mean, 3)));
    box.appendChild(head);
    var cells = o.cells.filter(function (c) {
      return item.rows.some(function (r) { return r[1] === c; });
    });
    var grid = {}, samples = [];
    item.rows.forEach(function (r) {
      if (!grid[r[2]]) { grid[r[2]] = {}; samples.push(r[2]); }
      grid[r[2]][r[1]] = r;
    });
    samples.sort(function (a, b) { return a - b; });
    var wrap = el("div", "cb-scroll");
    var table = el("table");
    var tr = el("tr");
    tr.appendChild(el("th", "num", "sample"));
    cells.forEach(function (c) { tr.appendChild(el("th", "", data.cells[c].label)); });
    table.appendChild(el("thead")).appendChild(tr);
    var body = el("tbody");
    samples.forEach(function (s) {
      var row = el("tr");
      row.appendChild(el("td", "num", String(s)));
      cells.forEach(function (c) {
        var td = el("td", "cb-c");
        var r = grid[s][c];
        if (r) {
          td.dataset.cell = data.cells[c].label;
          var text = el("div", r[3].trim() ? "cb-text" : "cb-text cb-empty",
                        r[3].trim() ? r[3] : "(empty)");
          td.appendChild(text);
          var parts = data.scores.map(function (sc, k) {
            return sc[1] + " " + fmt(r[4 + k], k === nScores - 1 ? 2 : 3);
          });
          var scores = el("div", "cb-scores", parts.join(" · "));
          scores.dataset.score = r[4 + o.score] === null ? "" : String(r[4 + o.score]);
          td.appendChild(scores);
        } else {
          td.appendChild(el("span", "cb-out", "–"));
        }
        row.appendChild(td);
      });
      body.appendChild(row);
    });
    table.appendChild(body);
    wrap.appendChild(table);
    box.appendChild(wrap);
    return box;
  }

  function render() {
    clearTimeout(state.timer);  // a render reads every control: a pending one is moot
    var o = options();
    var items = select(o);
    var pages = Math.max(1, Math.ceil(items.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    var shown = items.slice(state.page * PAGE, (state.page + 1) * PAGE);
    var out = $("cb-results");
    out.replaceChildren();
    shown.forEach(function (item) { out.appendChild(promptBlock(item, o)); });
    var n = items.reduce(function (a, it) { return a + it.rows.length; }, 0);
    $("cb-count").textContent = items.length + " prompt(s), " + n + " continuation(s) match";
    $("cb-page").textContent = "page " + (state.page + 1) + " of " + pages;
    $("cb-prev").disabled = state.page === 0;
    $("cb-next").disabled = state.page >= pages - 1;
    delete root.dataset.busy;
  }

  function start() {
    if (state.started) { return; }
    state.started = true;
    var score = $("cb-score");
    data.scores.forEach(function (s, i) {
      var opt = el("option", "", s[1]); opt.value = String(i); score.appendChild(opt);
    });
    var subsets = {};
    data.prompts.forEach(function (p) { subsets[p[1]] = true; });
    Object.keys(subsets).sort().forEach(function (s) {
      var opt = el("option", "", s); opt.value = s; $("cb-subset").appendChild(opt);
    });
    cellBoxes();
    // Typing waits for a pause: a large run re-filters some 100,000 rows per render.
    ["cb-q", "cb-min", "cb-max"].forEach(function (id) {
      $(id).addEventListener("input", function () {
        clearTimeout(state.timer);
        root.dataset.busy = "1";  // until the next render: what tests wait for
        state.timer = setTimeout(function () { state.page = 0; render(); }, 150);
      });
    });
    ["cb-subset", "cb-score", "cb-sort"].forEach(function (id) {
      $(id).addEventListener("change", function () { state.page = 0; render(); });
    });
    $("cb-all").addEventListener("click", function () { tick(true); });
    $("cb-none").addEventListener("click", function () { tick(false); });
    $("cb-prev").addEventListener("click", function () { state.page -= 1; render(); });
    $("cb-next").addEventListener("click", function () { state.page += 1; render(); });
    render();
  }

  function tick(on) {
    document.querySelectorAll("#cb-cells input").forEach(function (i) { i.checked = on; });
    state.page = 0; render();
  }

  // Nothing is drawn until the reader opens the content warning.
  var details = root.closest("details");
  if (!details || details.open) { start(); }
  else { details.addEventListener("toggle", function () { if (details.open) { start(); } }); }
}());
