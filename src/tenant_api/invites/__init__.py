"""Project invites: create, list, revoke, resend (org and project admins), accept or
decline (the invitee), and the mailer that delivers them."""
