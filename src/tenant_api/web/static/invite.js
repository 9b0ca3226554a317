// The invite page. The secret arrives in the URL fragment (never sent to a server) and
// is posted to the API in request bodies only. Everything shown is set with
// textContent: names come from other people.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const KEY = "tenant-api-invite";
  let secret = new URLSearchParams(location.hash.slice(1)).get("invite_token");
  if (secret) {
    // Out of the address bar and the history; kept for this tab only, so a reload works.
    sessionStorage.setItem(KEY, secret);
    history.replaceState(null, "", location.pathname);
  } else {
    secret = sessionStorage.getItem(KEY);
  }
  let invite = null;
  let session = null;

  function show(id, visible) { $(id).hidden = !visible; }
  function say(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = "message " + (kind || "error");
    box.hidden = !text;
  }
  function busy(button, on) { button.disabled = on; }

  async function api(path, body, token) {
    const headers = { "Content-Type": "application/json", "Accept": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body),
                                         credentials: "omit", cache: "no-store" });
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
    if (!response.ok) {
      const detail = (data && (data.detail || data.title)) || ("HTTP " + response.status);
      const error = new Error(detail);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function where() {
    return invite.kind === "project"
      ? "the project " + invite.project_name + " of " + invite.organization_name
      : "the organization " + invite.organization_name;
  }

  function render() {
    $("title").textContent = "Invitation to " + (invite.project_name || invite.organization_name);
    $("summary").textContent = (invite.invited_by || "Someone") + " invited " + invite.email + " to " + where() +
      " as " + invite.role + ".";
    $("organization").textContent = invite.organization_name;
    $("project").textContent = invite.project_name || "";
    show("project-label", invite.kind === "project");
    show("project", invite.kind === "project");
    $("role").textContent = invite.role;
    $("inviter").textContent = invite.invited_by || "—";
    $("email").textContent = invite.email;
    $("expires").textContent = new Date(invite.expires_at).toLocaleString();
    $("status").textContent = invite.status;
    $("signin-email").value = invite.email;
    $("signup-email").value = invite.email;
    show("loading", false);
    show("invite", true);
    if (invite.status !== "pending") {
      say("This invitation is " + invite.status + ": there is nothing to answer. Ask for a new one if you need it.");
      return;
    }
    if (invite.account === "none" && invite.from_mail) {
      show("signup", true);
    } else {
      show("signin", true);
      show("to-signup-hint", invite.account === "none");
      if (invite.account === "none") {
        say("There is no account for " + invite.email + " yet. Open the link of the invitation mail to create " +
            "one here, or sign up first and verify your address.", "error");
      }
    }
  }

  async function load() {
    if (!secret) {
      show("loading", false);
      say("This page needs the link from your invitation mail (the part after # is missing).");
      return;
    }
    try {
      invite = await api("/v1/invites/preview", { invite_token: secret });
      render();
    } catch (error) {
      show("loading", false);
      say(error.status === 404 || error.status === 422
        ? "This invitation link is not valid (it may have been replaced by a newer mail)."
        : "Could not load the invitation: " + error.message);
    }
  }

  async function finish(membership, sessionInOrg) {
    sessionStorage.removeItem(KEY);
    show("signin", false);
    show("signup", false);
    show("answer", false);
    say("", "ok");
    $("status").textContent = "accepted";
    $("done-text").textContent = "You joined " + where() + " as " + membership.role + ".";
    $("done-hint").textContent = sessionInOrg
      ? "You are signed in there. Use the API with POST /v1/auth/login and organization_id " +
        membership.organization_id + " (see /docs)."
      : "Sign in with organization_id " + membership.organization_id + " to work there.";
    show("done", true);
  }

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("signin-button");
    busy(button, true);
    say("");
    try {
      const login = await api("/v1/auth/login", { email: invite.email, password: $("signin-password").value });
      session = login.access_token;
      show("signin", false);
      $("signed-in-as").textContent = "Signed in as " + invite.email + ". Accept the invitation to " + where() + "?";
      show("answer", true);
    } catch (error) {
      say(error.status === 401 ? "Wrong password for " + invite.email + "." : error.message);
    } finally {
      busy(button, false);
    }
  });

  $("to-signup").addEventListener("click", () => {
    show("signin", false);
    show("signup", true);
    say("");
  });

  $("signup-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("signup-button");
    const password = $("signup-password").value;
    const name = $("signup-name").value.trim();
    if (!name) { say("Please enter your name."); return; }
    if (password.length < 10) { say("The password needs at least 10 characters."); return; }
    busy(button, true);
    say("");
    try {
      const result = await api("/v1/invites/signup", { invite_token: secret, password, display_name: name });
      session = result.session.access_token;
      await finish(result.membership, true);
    } catch (error) {
      if (error.status === 409) {
        show("signup", false);
        show("signin", true);
      }
      say(error.message);
    } finally {
      busy(button, false);
    }
  });

  $("accept").addEventListener("click", async () => {
    const button = $("accept");
    busy(button, true);
    say("");
    try {
      const membership = await api("/v1/invites/accept", { invite_token: secret }, session);
      let inOrg = false;
      try {
        await api("/v1/auth/login", { email: invite.email, password: $("signin-password").value,
                                      organization_id: membership.organization_id });
        inOrg = true;
      } catch (error) { inOrg = false; }
      await finish(membership, inOrg);
    } catch (error) {
      say(error.message);
    } finally {
      busy(button, false);
    }
  });

  $("decline").addEventListener("click", async () => {
    const button = $("decline");
    busy(button, true);
    say("");
    try {
      await api("/v1/invites/decline", { invite_token: secret }, session);
      sessionStorage.removeItem(KEY);
      show("answer", false);
      $("status").textContent = "declined";
      say("You declined the invitation to " + where() + ".", "ok");
    } catch (error) {
      say(error.message);
    } finally {
      busy(button, false);
    }
  });

  // Another invitation's link opened in this tab changes only the fragment: start over.
  window.addEventListener("hashchange", () => location.reload());
  load();
})();
