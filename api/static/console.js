// orderflow ops console: confirm before actions, refresh the live pipeline, copy ids. No dependencies.
"use strict";
// A [data-copy] button puts its value on the clipboard (or, where the page is not https or
// localhost and the clipboard is off limits, selects the id beside it for Ctrl+C).
document.addEventListener("click", function (event) {
  var button = event.target.closest && event.target.closest("[data-copy]");
  if (!button) return;
  var value = button.getAttribute("data-copy");
  function done(text) {
    button.textContent = text;
    window.setTimeout(function () { button.textContent = "copy"; }, 1500);
  }
  function select() {
    var code = button.parentNode.querySelector("code");
    if (!code) return;
    var range = document.createRange();
    range.selectNodeContents(code);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    done("selected");
  }
  if (navigator.clipboard && window.isSecureContext) {
    navigator.clipboard.writeText(value).then(function () { done("copied"); }, select);
  } else {
    select();
  }
});
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
