// gpuslo status page: refresh the live part of the page in place.
// Without this script every page still works (reload by hand); with it the part
// marked id="live" is fetched again every data-refresh seconds, unless the page
// is hidden, paused, or a form field in it has the keyboard focus.
"use strict";
(function () {
  const every = Number(document.body.dataset.refresh || 0) * 1000;
  const live = document.getElementById("live");
  const stamp = document.getElementById("updated");
  const pause = document.getElementById("pause");
  if (!every || !live) return;
  let paused = false;
  if (pause) {
    pause.addEventListener("click", function () {
      paused = !paused;
      pause.setAttribute("aria-pressed", String(paused));
      pause.textContent = paused ? "Resume updates" : "Pause updates";
    });
  }
  function busy() {
    const el = document.activeElement;
    return el && live.contains(el) && el.matches("input, select, textarea");
  }
  async function refresh() {
    if (paused || document.hidden || busy()) return;
    try {
      const resp = await fetch(location.href, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const next = doc.getElementById("live");
      if (next) {
        const open = new Set(Array.from(live.querySelectorAll("details[open][id]"), (d) => d.id));
        live.replaceChildren(...Array.from(next.childNodes, (n) => document.importNode(n, true)));
        open.forEach((id) => { const d = document.getElementById(id); if (d) d.open = true; });
      }
      const when = doc.getElementById("updated");
      if (stamp && when) stamp.textContent = when.textContent;
    } catch (err) {
      // The process may be restarting: say so on the page and try again next time.
      if (stamp) stamp.textContent = "update failed (" + err.message + "); retrying";
    }
  }
  setInterval(refresh, every);
})();
