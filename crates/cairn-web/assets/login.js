// Trades the one-time token in the fragment for a session cookie, then opens the app.
"use strict";
(async () => {
  const message = document.getElementById("message");
  const token = location.hash.slice(1);
  // The token must not stay in the address bar or the history.
  history.replaceState(null, "", "/login");
  if (!token) {
    message.textContent = "This page needs the link that `cairn web` prints.";
    return;
  }
  try {
    const r = await fetch("/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
      credentials: "same-origin",
    });
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      message.textContent = body.error || ("login failed: HTTP " + r.status);
      return;
    }
    location.replace("/");
  } catch (e) {
    message.textContent = "login failed: " + e;
  }
})();
