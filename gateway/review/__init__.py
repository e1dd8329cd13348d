"""The review station: a web page where a privacy officer sees and decides on quarantined studies.

- `users` — the users file (argon2 hashes, roles reviewer/viewer), `deid-gateway review add-user`;
- `identity` — who is asking: signed, expiring session cookies, CSRF tokens, a trusted proxy's
  headers, the login throttle;
- `audit` — every view of an original and every decision, in the journal, exportable as CSV;
- `decisions` — what release, re-run and purge mean for each quarantine reason;
- `status` and `charts` — throughput, backlog and rejections read from the journal, drawn as SVG;
- `app` — the FastAPI application (Jinja2 templates, no JavaScript build);
- `station` — the running station: uvicorn in a thread of the gateway, on its own address.

Privacy: pages show pseudonymous ids only (random entry ids, keyed study hashes), never a value
read from a data set; original images go to reviewers only, each view audited, never cached.
"""
