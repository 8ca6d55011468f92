// Starts Swagger UI on the document this server publishes (relative, so a path prefix added
// by a reverse proxy keeps working).
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.yaml",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    tryItOutEnabled: false,
  });
});
