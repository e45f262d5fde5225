// The review page's keys (docs/review.md#keys): j/k next/previous, y approve, n reject, e edit.
// Our own file, served from 'self' under the Content-Security-Policy: no inline script anywhere.
// Text from the server is only ever put into the page as text (textContent), never as HTML.
(function () {
  "use strict";
  var rows = [];
  var at = 0;
  var csrf = "";

  function show(index) {
    if (!rows.length) return;
    at = Math.max(0, Math.min(rows.length - 1, index));
    rows.forEach(function (row) { row.classList.remove("current"); });
    rows[at].classList.add("current");
    rows[at].scrollIntoView({ block: "nearest" });
  }

  function decide(decision) {
    var row = rows[at];
    if (!row) return;
    var badge = row.querySelector(".review");
    if (badge) badge.textContent = "saving…";
    show(at + 1);  // on at once: the next key is for the next item, whatever the network does
    fetch("/items/" + encodeURIComponent(row.dataset.item) + "/decide", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf, "Content-Type": "application/x-www-form-urlencoded" },
      body: "decision=" + encodeURIComponent(decision)
    }).then(function (response) {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.json();
    }).then(function (saved) {
      if (badge) { badge.textContent = saved.decision; badge.dataset.decision = saved.decision; }
    }).catch(function (error) {
      if (badge) { badge.textContent = "not saved (" + error.message + ")"; badge.dataset.decision = "error"; }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var meta = document.querySelector("meta[name=csrf]");
    csrf = meta ? meta.content : "";
    rows = Array.prototype.slice.call(document.querySelectorAll("[data-item]"));
    if (rows.length) show(0);
  });

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || !rows.length) return;
    var target = event.target;
    if (target && target.closest && target.closest("input, textarea, select, button")) return;
    switch (event.key) {
      case "j": show(at + 1); break;
      case "k": show(at - 1); break;
      case "y": decide("approved"); break;
      case "n": decide("rejected"); break;
      case "e": window.location.assign(rows[at].dataset.edit); break;
      default: return;
    }
    event.preventDefault();
  });
})();
