// Airlock console: live updates. The server sends a bare "changed" event
// (no data) when any request changes; each live region re-fetches its own
// fragment, which the server renders and escapes. Nothing else runs here.
(function () {
  "use strict";
  var regions = document.querySelectorAll("[data-live]");
  if (!regions.length || !window.EventSource) return;
  var pending = null;
  function refresh() {
    pending = null;
    regions.forEach(function (el) {
      fetch(el.getAttribute("data-live"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          if (el.hasAttribute("data-reload")) {
            if (html.trim() !== el.textContent.trim()) window.location.reload();
          } else {
            el.innerHTML = html;
          }
        })
        .catch(function () {});
    });
  }
  var events = new EventSource("/events");
  events.addEventListener("changed", function () {
    // Bursts of changes refresh once.
    if (!pending) pending = setTimeout(refresh, 100);
  });
  document.documentElement.setAttribute("data-live-ready", "1");
})();
