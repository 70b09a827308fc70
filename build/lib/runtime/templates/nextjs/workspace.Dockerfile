# QAI workspace image: Node LTS plus the Next.js starter with its dependencies preinstalled.
#
# Build context is THIS directory (sandbox-templates/nextjs/), not the repo root:
#
#   docker build -t qai-workspace:latest \
#     -f sandbox-templates/nextjs/workspace.Dockerfile sandbox-templates/nextjs
#
# Modal builds it with the same context, e.g.
#   modal.Image.from_dockerfile("sandbox-templates/nextjs/workspace.Dockerfile",
#                               context_dir="sandbox-templates/nextjs", add_python="3.12")
# (Modal expects `python` on PATH in images it runs; this Node image has none, hence add_python.)
# .dockerignore keeps a local node_modules/ or .next/ out of the context; the COPYs below
# name their sources explicitly anyway.

FROM node:22-bookworm-slim

# NODE_ENV stays unset: `npm ci`/`npm install` must keep devDependencies, and
# `next dev` / `next build` pick their own mode.
ENV NEXT_TELEMETRY_DISABLED=1 \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false \
    NPM_CONFIG_AUDIT=false

WORKDIR /workspace
RUN chown node:node /workspace

USER node

# Dependency layer: only invalidated when the manifest or lockfile changes.
COPY --chown=node:node package.json package-lock.json ./
# Then the service's install marker (runtime.base.INSTALL_MARKER): the sha256 of the package.json
# these dependencies were installed for, so a workspace with the starter's package.json skips
# `npm install` (any other package.json installs once, as it should).
RUN npm ci && npm cache clean --force \
 && sha256sum package.json | cut -d' ' -f1 > node_modules/.qai-installed

# The starter app itself (uploaded project files overwrite it at runtime).
COPY --chown=node:node next.config.mjs ./
COPY --chown=node:node app ./app
COPY --chown=node:node public ./public

# The dev server binds HOSTNAME and learns its port from PORT (see package.json "dev").
# Docker sets HOSTNAME to the container id by default; this ENV overrides it.
ENV HOSTNAME=0.0.0.0 \
    PORT=3000

# 3000: the app's dev server (tunnelled for previews); 3010: spare port for a second server.
EXPOSE 3000 3010

# Start nothing: the workspace service uploads files and runs `npm install` and
# `npm run dev` itself through the sandbox exec API, so the container only idles.
CMD ["sleep", "infinity"]
