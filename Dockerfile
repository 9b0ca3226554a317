FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY src ./src
COPY migrations ./migrations
COPY policies ./policies
RUN pip install --no-cache-dir -e . && useradd --system app
ENV TENANT_API_ROOT=/app HOST=0.0.0.0 PORT=8000
USER app
CMD ["tenant-api", "serve"]
