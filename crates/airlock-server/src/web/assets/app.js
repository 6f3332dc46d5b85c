// Airlock console: live updates, ticking times, keyboard triage. The server
// sends a bare "changed" event (no data) when any request changes; each live
// region re-fetches its own fragment, which the server renders and escapes.
// Regions never contain a form, so a reason being typed and the keyboard
// focus survive every update.
(function () {
  "use strict";
  var me = (document.querySelector(".who") || {}).textContent || "";

  // Times: the browser's local time, and countdowns that tick.
  function pad(n) { return n < 10 ? "0" + n : "" + n; }
  function localTimes(root) {
    root.querySelectorAll("time[data-local]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) return;
      t.title = t.getAttribute("datetime");
      t.textContent = d.toLocaleString();
    });
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("time[data-countdown]").forEach(function (t) {
      var left = Math.floor((new Date(t.getAttribute("datetime")) - now) / 1000);
      if (isNaN(left)) return;
      if (left <= 0) { t.textContent = "expired"; return; }
      var h = Math.floor(left / 3600), m = Math.floor(left / 60) % 60, s = left % 60;
      t.textContent = h > 0 ? h + "h" + pad(m) + "m left" : m + "m" + pad(s) + "s left";
    });
  }
  localTimes(document);
  tick();
  setInterval(tick, 1000);

  // The inbox's count in the tab title.
  function title() {
    var rows = document.querySelector(".rows[data-count]");
    if (!rows) return;
    var n = +rows.getAttribute("data-count");
    document.title = document.title.replace(/^\(\d+\) /, "");
    if (n > 0) document.title = "(" + n + ") " + document.title;
  }

  // A request page: when the request is decided, or the viewer reviewed it
  // elsewhere, the form stops offering buttons (its text is kept).
  function formState() {
    var state = document.querySelector("#state .state");
    var form = document.getElementById("review-form");
    if (!state || !form) return;
    var decided = state.getAttribute("data-status") !== "pending";
    var reviewed = (" " + state.getAttribute("data-reviewers") + " ").indexOf(" " + me + " ") >= 0;
    if (decided || reviewed) {
      form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
      var note = form.querySelector(".decided-note");
      if (note) note.hidden = false;
    }
  }

  var regions = document.querySelectorAll("[data-live]");
  var pending = null;
  function refresh() {
    pending = null;
    regions.forEach(function (el) {
      fetch(el.getAttribute("data-live"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          var selected = document.activeElement && el.contains(document.activeElement)
            ? document.activeElement.getAttribute("href") : null;
          el.innerHTML = html;
          localTimes(el);
          tick();
          title();
          formState();
          if (selected) {
            var again = el.querySelector('a[href="' + selected + '"]');
            if (again) again.focus();
          }
        })
        .catch(function () {});
    });
  }
  if (regions.length && window.EventSource) {
    var events = new EventSource("/events");
    events.addEventListener("changed", function () {
      // Bursts of changes refresh once.
      if (!pending) pending = setTimeout(refresh, 100);
    });
  }
  title();
  formState();

  // Deny needs a reason: caught here, before the server refuses it.
  var form = document.getElementById("review-form");
  var reason = document.getElementById("reason");
  function needReason() {
    var warn = document.getElementById("reason-needed");
    if (warn) warn.hidden = false;
    if (reason) { reason.setAttribute("aria-invalid", "true"); reason.focus(); }
  }
  if (form) {
    form.addEventListener("submit", function (e) {
      var b = e.submitter;
      if (b && b.value === "deny" && reason && !reason.value.trim()) {
        e.preventDefault();
        needReason();
      }
      var code = document.getElementById("totp");
      if (b && b.value === "approve" && code && !code.value.trim()) {
        e.preventDefault();
        document.getElementById("totp-needed").hidden = false;
        code.focus();
      }
    });
  }

  // WebAuthn: the browser's ceremonies, with the server's options and a
  // sealed state it checks the answer against.
  function ceremony(url, csrf) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: "csrf=" + encodeURIComponent(csrf)
    }).then(function (r) {
      if (!r.ok) return r.text().then(function (t) {
        var d = document.createElement("div"); d.innerHTML = t;
        var e = d.querySelector(".error"); throw new Error(e ? e.textContent : "HTTP " + r.status);
      });
      return r.json();
    });
  }
  function showError(form, e) {
    var p = form.querySelector(".webauthn-error");
    if (p) { p.hidden = false; p.textContent = e.message || String(e); }
  }
  var register = document.getElementById("webauthn-register");
  if (register) {
    register.addEventListener("submit", function (e) {
      if (register.elements.credential.value) return;
      e.preventDefault();
      ceremony("/account/webauthn/start", register.elements.csrf.value).then(function (c) {
        var opts = PublicKeyCredential.parseCreationOptionsFromJSON(c.options.publicKey);
        return navigator.credentials.create({ publicKey: opts }).then(function (cred) {
          register.elements.credential.value = JSON.stringify(cred.toJSON());
          register.elements.state.value = c.state;
          register.submit();
        });
      }).catch(function (err) { showError(register, err); });
    });
  }
  if (form && form.hasAttribute("data-webauthn")) {
    form.addEventListener("submit", function (e) {
      var b = e.submitter;
      if (!b || b.value !== "approve" || form.elements.webauthn.value) return;
      e.preventDefault();
      ceremony(form.getAttribute("data-webauthn"), form.elements.csrf.value).then(function (c) {
        var opts = PublicKeyCredential.parseRequestOptionsFromJSON(c.options.publicKey);
        return navigator.credentials.get({ publicKey: opts }).then(function (cred) {
          form.elements.webauthn.value = JSON.stringify(cred.toJSON());
          form.elements.webauthn_state.value = c.state;
          form.requestSubmit(b);
        });
      }).catch(function (err) { showError(form, err); });
    });
  }

  // Keys: j/k move through the inbox, a/d approve or deny (after asking).
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
    if (e.key === "j" || e.key === "k") {
      var links = Array.prototype.slice.call(document.querySelectorAll("li.request a.title"));
      if (!links.length) return;
      var at = links.indexOf(document.activeElement);
      var next = e.key === "j" ? Math.min(at + 1, links.length - 1) : Math.max(at - 1, 0);
      links[next].focus();
      e.preventDefault();
    } else if ((e.key === "a" || e.key === "d") && form) {
      var approve = e.key === "a";
      var button = form.querySelector(approve ? "button.approve" : "button.deny");
      if (!button || button.disabled) return;
      e.preventDefault();
      if (!approve && reason && !reason.value.trim()) { needReason(); return; }
      var totp = document.getElementById("totp");
      if (approve && totp && !totp.value.trim()) {
        document.getElementById("totp-needed").hidden = false;
        totp.focus();
        return;
      }
      var said = (document.getElementById("consequence") || {}).textContent || "";
      if (window.confirm(approve ? said + "\n\nApprove?" : "Deny this request?")) button.click();
    }
  });
  document.documentElement.setAttribute("data-live-ready", "1");
})();
