"""The review web page (``llava-batch serve``, docs/review.md): jobs, one job's items beside
their pictures, review by keyboard, the fleet. Server-rendered (Starlette, Jinja2 templates with
autoescape), over the same database and store as the CLI; its only script is our own small
static file. Imported by the ``serve`` command's body only: the CLI starts without it."""
