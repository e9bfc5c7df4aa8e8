// orderflow ops console: confirm before actions, refresh the live pipeline. No dependencies.
"use strict";
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

document.addEventListener("DOMContentLoaded", function () {
  var live = document.querySelector("[data-refresh]");
  if (!live) return;
  var every = parseInt(live.getAttribute("data-every"), 10) || 5000;
  function refresh() {
    if (document.hidden) return;
    fetch(live.getAttribute("data-refresh"), { credentials: "same-origin" })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) { if (html !== null) live.innerHTML = html; })
      .catch(function () { /* keep the last figures; try again next tick */ });
  }
  window.setInterval(refresh, every);
});
