"""The pages the API serves to browsers: the invite page and the email verification
page. Plain HTML, CSS and a little JavaScript shipped in the package (static/), no build
step, nothing from elsewhere, under a strict Content-Security-Policy."""
