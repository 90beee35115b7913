// Live updates for the fleet overview: poll a small JSON endpoint and, only
// when its stamp changes, fetch the table again and swap it in. No reload,
// no framework, nothing from outside this hub.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.live) return;
  var status = document.getElementById("livestatus");
  var stamp = live.dataset.stamp;
  var interval = parseInt(live.dataset.interval, 10) || 5000;
  var busy = false;
  function say(text) { if (status) status.textContent = text; }
  function clock() { return new Date().toLocaleTimeString(); }
  function tick() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(live.dataset.live, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (j) {
        if (j.stamp === stamp) { say("live · checked " + clock()); return; }
        var u = new URL(window.location.href);
        u.searchParams.set("partial", "1");
        return fetch(u.toString(), { credentials: "same-origin" }).then(function (r) {
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.text();
        }).then(function (html) {
          live.innerHTML = html; // rendered and escaped by the server's templates
          stamp = j.stamp;
          live.dataset.stamp = j.stamp;
          say("live · updated " + clock());
        });
      })
      .catch(function (e) { say("live updates paused: " + e.message); })
      .then(function () { busy = false; });
  }
  say("live");
  window.setInterval(tick, interval);
  document.addEventListener("visibilitychange", tick);
})();
