// The sample browser of a mathloop report: filters, paging, and one sample's details with math rendered by KaTeX.
// Plain JavaScript, no network: the samples are the JSON of the element #samples-data.
(function () {
  "use strict";
  var PAGE = 50;
  var data = JSON.parse(document.getElementById("samples-data").textContent);
  var sets = data.sets, questions = data.questions, samples = data.samples;
  var VERDICTS = ["correct", "incorrect", "no_answer", "ungraded"];
  var $ = function (id) { return document.getElementById(id); };
  var page = 0, visible = [];

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function option(select, value, label) {
    var o = el("option", null, label);
    o.value = value;
    select.appendChild(o);
  }

  function distinct(key) {
    var seen = {}, out = [];
    samples.forEach(function (s) { if (!(s[key] in seen)) { seen[s[key]] = 1; out.push(s[key]); } });
    return out.sort();
  }

  // ---- filters ------------------------------------------------------------------------------------------------
  var evaluations = [];
  sets.forEach(function (set, i) {
    option($("f-set"), String(i), set.label);
    if (set.evaluation) evaluations.push(i);
  });
  distinct("b").forEach(function (b) { option($("f-bench"), b, b); });
  VERDICTS.forEach(function (v, i) { option($("f-verdict"), String(i), v); });
  distinct("m").forEach(function (m) { option($("f-mode"), m, m); });
  evaluations.forEach(function (i) {
    option($("f-before"), String(i), sets[i].label);
    option($("f-after"), String(i), sets[i].label);
  });
  if (evaluations.length) {
    $("f-before").value = String(evaluations[0]);
    $("f-after").value = String(evaluations[evaluations.length - 1]);
  }
  if (evaluations.length < 2) $("change-filters").title = "needs two evaluations";

  // first-sample correctness of each problem of each evaluation: "set|benchmark|problem" -> [sample index, correct]
  var first = {};
  samples.forEach(function (s) {
    var key = s.s + "|" + s.b + "|" + s.p, seen = first[key];
    if (!seen || s.i < seen[0]) first[key] = [s.i, s.v === 0];
  });

  function changed(s, before, after, direction) {
    if (s.s !== before && s.s !== after) return false;
    var a = first[before + "|" + s.b + "|" + s.p], b = first[after + "|" + s.b + "|" + s.p];
    if (!a || !b) return false;
    return direction === "right-wrong" ? (a[1] && !b[1]) : (!a[1] && b[1]);
  }

  function number(id) {
    var text = $(id).value.trim();
    return text === "" ? null : parseFloat(text);
  }

  function apply() {
    var set = $("f-set").value, bench = $("f-bench").value, verdict = $("f-verdict").value, mode = $("f-mode").value;
    var low = number("f-rm-min"), high = number("f-rm-max"), change = $("f-change").value;
    var before = parseInt($("f-before").value, 10), after = parseInt($("f-after").value, 10);
    var text = $("f-text").value.trim().toLowerCase();
    visible = [];
    for (var k = 0; k < samples.length; k++) {
      var s = samples[k];
      if (set !== "" && s.s !== +set) continue;
      if (bench !== "" && s.b !== bench) continue;
      if (verdict !== "" && s.v !== +verdict) continue;
      if (mode !== "" && s.m !== mode) continue;
      if ((low !== null || high !== null) && (s.r === null || (low !== null && s.r < low) || (high !== null && s.r > high))) continue;
      if (change !== "" && !changed(s, before, after, change)) continue;
      if (text && s.p.toLowerCase().indexOf(text) < 0 && questions[s.q].toLowerCase().indexOf(text) < 0) continue;
      visible.push(k);
    }
    page = 0;
    render();
  }

  // ---- the table ------------------------------------------------------------------------------------------------
  function render() {
    var body = $("sample-rows");
    body.textContent = "";
    var pages = Math.max(1, Math.ceil(visible.length / PAGE));
    page = Math.min(page, pages - 1);
    visible.slice(page * PAGE, (page + 1) * PAGE).forEach(function (k) {
      var s = samples[k], tr = el("tr", "sample-row");
      tr.dataset.index = String(k);
      [sets[s.s].label, s.b, s.p, s.i, s.m].forEach(function (v) { tr.appendChild(el("td", null, v)); });
      var verdict = el("td"), badge = el("span", "verdict v" + s.v, VERDICTS[s.v]);
      verdict.appendChild(badge);
      tr.appendChild(verdict);
      tr.appendChild(el("td", "num", s.r === null ? "" : s.r.toFixed(3)));
      tr.appendChild(el("td", "answer", s.a));
      tr.appendChild(el("td", "answer", s.g));
      tr.addEventListener("click", function () { toggle(tr, s); });
      body.appendChild(tr);
    });
    $("sample-count").textContent = visible.length + " of " + samples.length + " samples";
    $("page-info").textContent = "page " + (page + 1) + " of " + pages;
    $("page-prev").disabled = page === 0;
    $("page-next").disabled = page >= pages - 1;
  }

  function toggle(tr, s) {
    var next = tr.nextSibling;
    if (next && next.classList && next.classList.contains("detail-row")) { next.remove(); return; }
    var row = el("tr", "detail-row"), cell = el("td");
    cell.colSpan = 9;
    cell.appendChild(details(s));
    row.appendChild(cell);
    tr.parentNode.insertBefore(row, tr.nextSibling);
  }

  // ---- one sample -----------------------------------------------------------------------------------------------
  function details(s) {
    var box = el("div", "sample-detail"), facts = el("dl", "facts");
    [["question", null], ["gold", s.g], ["extracted answer", s.a], ["verdict", VERDICTS[s.v]],
     ["RM score", s.r === null ? "none" : s.r.toFixed(4)], ["finish reason", s.f || ""]].forEach(function (f) {
      facts.appendChild(el("dt", null, f[0]));
      var dd = el("dd");
      if (f[0] === "question") mathText(dd, questions[s.q]);
      else if (f[0] === "gold" || f[0] === "extracted answer") answer(dd, f[1]);
      else dd.textContent = f[1] === null ? "" : String(f[1]);
      facts.appendChild(dd);
    });
    box.appendChild(facts);
    box.appendChild(el("div", "part-label", "response"));
    box.appendChild(response(s.t, s.o || []));
    return box;
  }

  // The response as text with math, code blocks, and executor output (its character spans) set apart.
  function response(text, spans) {
    var node = el("div", "response"), pos = 0;
    spans.slice().sort(function (a, b) { return a[0] - b[0]; }).forEach(function (span) {
      prose(node, text.slice(pos, span[0]).replace(/```output\s*$/, ""));
      block(node, "exec-output", "executor output", text.slice(span[0], span[1]).replace(/^\n/, "").replace(/\n?```\n?$/, ""));
      pos = span[1];
    });
    prose(node, text.slice(pos));
    return node;
  }

  function block(node, cls, label, text) {
    var wrap = el("div", "block " + cls);
    wrap.appendChild(el("div", "block-label", label));
    wrap.appendChild(el("pre", null, text));
    node.appendChild(wrap);
  }

  function prose(node, text) {
    var fence = /```(\w*)\n([\s\S]*?)(```|$)/g, pos = 0, m;
    while ((m = fence.exec(text)) !== null) {
      if (m[0].length === 0) break;
      mathText(node, trimLines(text.slice(pos, m.index)));
      var lang = m[1] || "code";
      block(node, lang === "output" ? "exec-output" : "code", lang === "output" ? "output (as written in the response)" : lang, m[2]);
      pos = m.index + m[0].length;
    }
    mathText(node, trimLines(text.slice(pos)));
  }

  // Blank lines next to a code or output block: the block is set apart already.
  function trimLines(text) {
    return text.replace(/^\s*\n/, "").replace(/\n\s*$/, "");
  }

  var MATH = /\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\]|\\\(([\s\S]+?)\\\)|\$([^$\n]+?)\$/g;

  function mathText(node, text) {
    var pos = 0, m;
    MATH.lastIndex = 0;
    while ((m = MATH.exec(text)) !== null) {
      boxed(node, text.slice(pos, m.index));
      var display = m[1] !== undefined || m[2] !== undefined;
      tex(node, m[1] || m[2] || m[3] || m[4], display, m[0]);
      pos = m.index + m[0].length;
    }
    boxed(node, text.slice(pos));
  }

  // A bare \boxed{...} outside math delimiters (models write it so) is rendered too, its braces matched.
  function boxed(node, text) {
    var pos = 0, start;
    while ((start = text.indexOf("\\boxed{", pos)) >= 0) {
      var depth = 0, end = -1;
      for (var k = start + 6; k < text.length; k++) {
        if (text[k] === "{") depth++;
        else if (text[k] === "}" && --depth === 0) { end = k + 1; break; }
      }
      if (end < 0) break;
      node.appendChild(document.createTextNode(text.slice(pos, start)));
      tex(node, text.slice(start, end), false, text.slice(start, end));
      pos = end;
    }
    node.appendChild(document.createTextNode(text.slice(pos)));
  }

  function tex(node, source, display, original) {
    var span = el("span", display ? "math display" : "math");
    if (window.katex) {
      window.katex.render(source, span, {displayMode: display, throwOnError: false, strict: "ignore", trust: false});
    } else {
      span.textContent = original;
    }
    node.appendChild(span);
  }

  // An answer (gold or extracted) is LaTeX without delimiters: render it as math when it looks like LaTeX.
  function answer(node, text) {
    if (text && /[\\^_{]/.test(text) && text.indexOf("$") < 0) tex(node, text, false, text);
    else node.appendChild(document.createTextNode(text || ""));
  }

  // ---- wiring ---------------------------------------------------------------------------------------------------
  ["f-set", "f-bench", "f-verdict", "f-mode", "f-change", "f-before", "f-after"].forEach(function (id) {
    $(id).addEventListener("change", apply);
  });
  ["f-rm-min", "f-rm-max", "f-text"].forEach(function (id) { $(id).addEventListener("input", apply); });
  $("f-reset").addEventListener("click", function () {
    ["f-set", "f-bench", "f-verdict", "f-mode", "f-change", "f-rm-min", "f-rm-max", "f-text"].forEach(function (id) {
      $(id).value = "";
    });
    apply();
  });
  $("page-prev").addEventListener("click", function () { page -= 1; render(); });
  $("page-next").addEventListener("click", function () { page += 1; render(); });
  apply();
  document.body.dataset.ready = "1";
})();
