/* allocscope report: flame-graph zoom and search, sortable tables.
 * Inlined once into every report; the page is complete without it (static SVG with <title>
 * tooltips), this only adds interaction. No network, no libraries.
 * Markers for tests: <html data-js-ready="1"> after init, data-js-error on any error, and
 * with the URL fragment #selftest a JSON summary in <pre id="selftest-out">. */
(function () {
  "use strict";
  var CHAR_W = 6.7; /* must match flamegraph.CHAR_W */
  var root = document.documentElement;

  window.addEventListener("error", function (ev) {
    root.setAttribute("data-js-error", String(ev.message || ev));
    var bar = document.createElement("div");
    bar.className = "js-error";
    bar.textContent = "report script error: " + (ev.message || ev);
    document.body.insertBefore(bar, document.body.firstChild);
  });

  function clip(name, px) {
    var n = Math.floor((px - 6) / CHAR_W);
    if (n < 3) return "";
    return name.length <= n ? name : name.slice(0, n - 2) + "..";
  }

  function Flame(wrap) {
    var svg = wrap.querySelector("svg.flame");
    var ctl = wrap.querySelector(".flame-ctl");
    var vb = svg.viewBox.baseVal;
    var pad = +svg.getAttribute("data-pad");
    var inner = vb.width - 2 * pad;
    var total = +svg.getAttribute("data-total");
    var unit = svg.getAttribute("data-unit") || "";
    var frames = Array.prototype.map.call(svg.querySelectorAll("g.f"), function (g) {
      return { g: g, x: +g.getAttribute("data-x"), w: +g.getAttribute("data-w"),
               d: +g.getAttribute("data-d"), n: g.getAttribute("data-n"),
               rect: g.querySelector("rect"), text: g.querySelector("text") };
    });
    var search = ctl.querySelector(".fg-search");
    var matchOut = ctl.querySelector(".fg-match");
    var self = this;
    this.svg = svg;
    this.frames = frames;
    this.inner = inner;

    function place(f, nx, nw) {
      var x = pad + nx * inner, w = nw * inner;
      f.rect.setAttribute("x", x.toFixed(2));
      f.rect.setAttribute("width", Math.max(w - 0.5, 0.1).toFixed(2));
      f.text.setAttribute("x", (x + 3).toFixed(2));
      f.text.textContent = clip(f.n, w);
    }

    this.zoom = function (target) {
      var eps = 1e-9;
      frames.forEach(function (f) {
        f.g.classList.remove("hide", "anc");
        if (f.d < target.d) {
          if (f.x <= target.x + eps && f.x + f.w >= target.x + target.w - eps) {
            f.g.classList.add("anc");
            place(f, 0, 1);
          } else {
            f.g.classList.add("hide");
          }
        } else if (f.x >= target.x - eps && f.x + f.w <= target.x + target.w + eps) {
          place(f, (f.x - target.x) / target.w, f.w / target.w);
        } else {
          f.g.classList.add("hide");
        }
      });
      this.zoomed = target;
    };

    this.reset = function () {
      frames.forEach(function (f) {
        f.g.classList.remove("hide", "anc");
        place(f, f.x, f.w);
      });
      this.zoomed = null;
    };

    this.search = function (text) {
      var re = null;
      if (text) {
        try { re = new RegExp(text); } catch (e) {
          re = new RegExp(text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
        }
      }
      var spans = [];
      frames.forEach(function (f) {
        var hit = re !== null && re.test(f.n);
        f.g.classList.toggle("match", hit);
        if (hit) spans.push([f.x, f.x + f.w]);
      });
      if (!re) { matchOut.textContent = ""; return 0; }
      /* union of matched intervals: nested matches are not counted twice */
      spans.sort(function (a, b) { return a[0] - b[0]; });
      var sum = 0, cs = -1, ce = -1;
      spans.forEach(function (s) {
        if (s[0] > ce) { if (ce > cs) sum += ce - cs; cs = s[0]; ce = s[1]; }
        else if (s[1] > ce) { ce = s[1]; }
      });
      if (ce > cs) sum += ce - cs;
      matchOut.textContent = "matched " + (100 * sum).toFixed(1) + "% (" +
        Math.round(sum * total).toLocaleString("en-US") + " " + unit + ")";
      return sum;
    };

    svg.addEventListener("click", function (ev) {
      var g = ev.target.closest ? ev.target.closest("g.f") : null;
      if (!g) return;
      var f = frames.filter(function (x) { return x.g === g; })[0];
      if (f.d === 0) self.reset(); else self.zoom(f);
    });
    ctl.querySelector(".fg-reset").addEventListener("click", function () { self.reset(); });
    search.addEventListener("input", function () { self.search(search.value); });
    ctl.hidden = false;
  }

  function sortable(tbl) {
    var ths = tbl.querySelectorAll("thead th");
    tbl.classList.add("js-sortable");
    Array.prototype.forEach.call(ths, function (th, col) {
      th.title = "click to sort";
      th.addEventListener("click", function () {
        var desc = !th.classList.contains("sorted-desc");
        Array.prototype.forEach.call(ths, function (t) {
          t.classList.remove("sorted-asc", "sorted-desc");
        });
        th.classList.add(desc ? "sorted-desc" : "sorted-asc");
        var body = tbl.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var ca = a.cells[col], cb = b.cells[col];
          var va = ca && ca.hasAttribute("data-v") ? +ca.getAttribute("data-v") : null;
          var vb = cb && cb.hasAttribute("data-v") ? +cb.getAttribute("data-v") : null;
          var r = (va !== null && vb !== null) ? va - vb :
            String(ca ? ca.textContent : "").localeCompare(String(cb ? cb.textContent : ""));
          return desc ? -r : r;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  }

  function rectOf(el) {
    var r = el.getBoundingClientRect();
    return [Math.round(r.left + window.scrollX), Math.round(r.top + window.scrollY),
            Math.round(r.width), Math.round(r.height)];
  }

  function selftest(flames) {
    var out = { flames: flames.length, tables: document.querySelectorAll("table").length,
                regions: {} };
    Array.prototype.forEach.call(document.querySelectorAll("figure[id] svg.chart"), function (s) {
      out.regions[s.closest("figure").id] = rectOf(s);
    });
    flames.forEach(function (fl, i) {
      out.regions["flame-" + i] = rectOf(fl.svg);
    });
    if (flames.length) {
      var fl = flames[0];
      var target = fl.frames.filter(function (f) { return f.d >= 1 && f.w < 1; })[0] ||
                   fl.frames.filter(function (f) { return f.d >= 1; })[0];
      if (target) {
        fl.zoom(target);
        var w = +target.rect.getAttribute("width");
        var hidden = fl.frames.filter(function (f) { return f.g.classList.contains("hide"); });
        out.zoom = { frame: target.n, width: w, inner: fl.inner, hidden: hidden.length };
        fl.reset();
        out.search = { term: target.n, matched: fl.search(target.n.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")),
                       expected: target.w };
        fl.search("");
      }
    }
    var pre = document.getElementById("selftest-out");
    pre.textContent = JSON.stringify(out);
  }

  function init() {
    var flames = Array.prototype.map.call(document.querySelectorAll(".flame-wrap"),
                                          function (w) { return new Flame(w); });
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), sortable);
    if (location.hash === "#selftest") selftest(flames);
    root.setAttribute("data-js-ready", "1");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
