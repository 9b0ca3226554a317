# The production image: the locked dependencies (uv.lock) and the project installed as a
# wheel (not editable: migrations/ and policies/ travel inside the package), no compiler,
# no test or development extras (no embedded PostgreSQL), a non-root user.

FROM python:3.12-slim AS build
ENV UV_VERSION=0.13.9 UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
# The virtual environment lives where the final image runs it (its scripts name it).
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
# Dependencies first: cached while only the code changes.
RUN uv sync --locked --no-install-project --no-editable
COPY src ./src
COPY migrations ./migrations
COPY policies ./policies
RUN uv sync --locked --no-editable

FROM python:3.12-slim
RUN useradd --system --uid 10001 --home-dir /app app
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH HOST=0.0.0.0 PORT=8000 PYTHONUNBUFFERED=1
WORKDIR /app
USER app
EXPOSE 8000
# Liveness: /health answers without the database (readiness is the orchestrator's
# business). The scheduler service overrides this (docker-compose.yml).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=2)"]
# SIGTERM: streams get a final event, sockets 1001, usage records are flushed; give it
# SHUTDOWN_TIMEOUT_SECONDS plus a few (docker-compose: stop_grace_period).
STOPSIGNAL SIGTERM
CMD ["tenant-api", "serve"]
