// Interactive docs for /openapi.json. Kept in a file of its own: the page's CSP allows no inline script.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  // The default validator badge calls an outside host; this page talks to this server only.
  validatorUrl: null,
  // A key saved on the dashboard is sent with "Try it out" requests too.
  requestInterceptor: (request) => {
    const key = localStorage.getItem("textclf.apiKey");
    if (key && !request.headers.Authorization) request.headers.Authorization = `Bearer ${key}`;
    return request;
  },
});
