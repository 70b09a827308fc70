# The workspace service itself (not the workspace image: that is sandbox-templates/nextjs/workspace.Dockerfile).
# Built for production on the Modal runtime: workspaces run in Modal sandboxes, this container only
# serves the API, the websockets and the preview gateway. Non-root, slim, with a health check.
#   docker build -t qai-workspace .
#   docker run -p 8000:8000 --env-file .env qai-workspace
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps -w /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    WORKSPACE_RUNTIME=modal WORKSPACE_ROOT=/var/lib/qai/workspaces
COPY --from=build /dist/*.whl /tmp/
RUN pip install "$(ls /tmp/qai_workspace-*.whl)[modal]" && rm /tmp/*.whl \
    && useradd --system --uid 10001 --home-dir /var/lib/qai --create-home qai \
    && mkdir -p /var/lib/qai/workspaces && chown -R qai /var/lib/qai
USER qai
WORKDIR /var/lib/qai
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["realtime", "serve", "--host", "0.0.0.0", "--port", "8000", "--log-format", "json"]
