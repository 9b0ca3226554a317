// The verification page: the secret arrives in the URL fragment (never sent to a
// server) and is posted to the API in the request body.
"use strict";

window.addEventListener("hashchange", () => location.reload());
(function () {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  history.replaceState(null, "", location.pathname);
  const box = document.getElementById("message");
  function say(text, kind) {
    document.getElementById("loading").hidden = true;
    box.textContent = text;
    box.className = "message " + kind;
    box.hidden = false;
  }
  if (!token) {
    say("This page needs the link from your verification mail (the part after # is missing).", "error");
    return;
  }
  fetch("/v1/auth/verify", {
    method: "POST", credentials: "omit", cache: "no-store",
    headers: { "Content-Type": "application/json", "Accept": "application/json" },
    body: JSON.stringify({ token }),
  }).then(async (response) => {
    if (response.ok) {
      say("Your email address is verified. You can close this page and sign in.", "ok");
    } else if (response.status === 404 || response.status === 422) {
      say("This link no longer works: it was used already, or a newer mail replaced it.", "error");
    } else {
      say("Could not verify the address (HTTP " + response.status + "). Try again later.", "error");
    }
  }, () => say("Could not reach the server. Try again later.", "error"));
})();
