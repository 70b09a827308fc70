// Dev-server origins allowed to load /_next/* dev resources and open the HMR
// websocket. The preview gateway serves every workspace under
// <label>.preview.localhost (embedded default); WORKSPACE_PREVIEW_HOSTS adds
// more (comma-separated host patterns, e.g. "*.preview.example.com").
const extraHosts = (process.env.WORKSPACE_PREVIEW_HOSTS || '')
  .split(',')
  .map((h) => h.trim())
  .filter(Boolean);

/** @type {import('next').NextConfig} */
const nextConfig = {
  allowedDevOrigins: ['*.preview.localhost', ...extraHosts],
};

export default nextConfig;
