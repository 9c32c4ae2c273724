// Musketeer dashboard: the task page's progress section refreshes itself while the task runs.
// Plain JavaScript, no library: fetch the server-rendered fragment, swap it in, stop when done.
(function () {
  "use strict";
  var section = document.getElementById("progress");
  if (!section || section.getAttribute("data-live") !== "true") {
    return;
  }
  var url = section.getAttribute("data-live-url");
  var ended = ["COMPLETED", "FAILED", "DELETED"];
  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        var holder = document.createElement("div");
        holder.innerHTML = html;
        var live = holder.querySelector("[data-status]");
        var status = live ? live.getAttribute("data-status") : "";
        var members = live ? live.getAttribute("data-members") : "";
        // A new status or a new member changes the whole page (buttons, participants,
        // history): load it again. Rounds only change this section: swap it in place.
        if (status !== section.getAttribute("data-status") ||
            members !== section.getAttribute("data-members")) {
          window.location.replace(window.location.pathname);
          return;
        }
        section.innerHTML = html;
        if (ended.indexOf(status) === -1) { window.setTimeout(refresh, 2000); }
      })
      .catch(function () { window.setTimeout(refresh, 5000); });  // API restarting: try again
  }
  window.setTimeout(refresh, 2000);
})();
