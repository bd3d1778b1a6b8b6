// Vigil review console: keyboard shortcuts and the logged reveal of blurred text.
// Served from the binary; the page's Content-Security-Policy allows no other script.
(function () {
  "use strict";
  var csrf = (document.querySelector('meta[name="csrf"]') || {}).content || "";
  var help = document.getElementById("help");
  function toggleHelp(show) {
    if (!help) return;
    help.hidden = show === undefined ? !help.hidden : !show;
  }
  var open = document.getElementById("help-open");
  if (open) open.addEventListener("click", function () { toggleHelp(true); });
  var close = document.getElementById("help-close");
  if (close) close.addEventListener("click", function () { toggleHelp(false); });

  // Queue rows: j/k select, Enter or a click opens.
  var rows = Array.prototype.slice.call(document.querySelectorAll("#queue tbody tr"));
  var at = -1;
  function select(i) {
    if (!rows.length) return;
    if (at >= 0) rows[at].classList.remove("sel");
    at = Math.max(0, Math.min(rows.length - 1, i));
    rows[at].classList.add("sel");
    rows[at].scrollIntoView({ block: "nearest" });
  }
  rows.forEach(function (r, i) {
    r.addEventListener("click", function (e) {
      if (e.target.tagName !== "A") { window.location.href = r.dataset.href; }
    });
    r.addEventListener("mouseenter", function () { select(i); });
  });

  // Case page: the decision form and the reveal button.
  var decide = document.getElementById("decide");
  var reveal = document.getElementById("reveal");
  function doReveal() {
    if (!reveal) return;
    var body = new URLSearchParams();
    body.set("csrf", csrf);
    fetch(reveal.dataset.url, {
      method: "POST",
      headers: { "X-CSRF-Token": csrf },
      body: body,
      credentials: "same-origin",
    }).then(function (r) {
      if (r.status === 204) {
        document.querySelectorAll(".blur").forEach(function (el) { el.classList.remove("blur"); });
        reveal.remove();
        reveal = null;
      } else {
        reveal.textContent = "Reveal failed (" + r.status + ")";
      }
    });
  }
  if (reveal) reveal.addEventListener("click", doReveal);
  document.querySelectorAll(".blur").forEach(function (el) {
    el.addEventListener("click", doReveal);
  });

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target.tagName;
    var typing = t === "INPUT" || t === "TEXTAREA" || t === "SELECT";
    if (e.key === "Escape") { toggleHelp(false); if (typing) e.target.blur(); return; }
    if (typing) return;
    var next = document.getElementById("next-form");
    switch (e.key) {
      case "?": toggleHelp(); break;
      case "j": select(at + 1); break;
      case "k": select(at - 1); break;
      case "n": if (next) next.requestSubmit(); break;
      case "u": window.location.href = "/"; break;
      case "r": doReveal(); break;
      case "Enter":
        if (rows.length && at >= 0) { window.location.href = rows[at].dataset.href; }
        else if (decide && decide.querySelector('input[name="decision"]:checked')) { decide.requestSubmit(); }
        else return;
        break;
      default:
        if (decide && e.key >= "1" && e.key <= "5") {
          var radios = decide.querySelectorAll('input[name="decision"]');
          var r = radios[Number(e.key) - 1];
          if (r) { r.checked = true; r.focus(); r.blur(); }
        } else {
          return;
        }
    }
    e.preventDefault();
  });
})();
