// Swagger UI over this service's own /openapi.json (a separate file: the page's CSP allows no inline script).
window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
