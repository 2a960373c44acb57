// Keeps every element with data-live="<url>" up to date: its HTML fragment is fetched again
// every few seconds and put in place, while the tab is visible. A fetch answered 401 means the
// sign-in ended: the page reloads, which leads to the sign-in form.
(function () {
  "use strict";
  var EVERY_MS = 3000;
  function refresh(element) {
    if (document.hidden || element.dataset.busy) { return; }
    element.dataset.busy = "1";
    fetch(element.dataset.live, { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {
        if (answer.status === 401) { window.location.reload(); return null; }
        return answer.ok ? answer.text() : null;
      })
      .then(function (html) {
        // The fragment is rendered by the server with every value escaped.
        if (html !== null && html !== undefined) { element.innerHTML = html; }
      })
      .catch(function () { /* the api is restarting: the next round tries again */ })
      .finally(function () { delete element.dataset.busy; });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (element) {
      window.setInterval(function () { refresh(element); }, EVERY_MS);
    });
  });
})();
